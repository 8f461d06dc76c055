import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import sample_path
from webhook.errors import PayloadError
from webhook.events import parse_callback, parse_event_time

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
INFO = {
    "JobId": "job-1",
    "Status": "success",
    "FileURL": "https://cdn.example.com/a.webp",
    "FileSize": "2048",
    "Fps": "12.5",
    "Height": "180",
    "Width": "320",
}


def event(**fields: Any) -> bytes:
    body: dict[str, Any] = {
        "EventTime": "2026-11-24T11:59:58Z",
        "EventType": "DynamicImageComplete",
        "VideoId": "video-1",
        "Status": "success",
        "JobId": "job-1",
        "DynamicImageJobInfo": INFO,
    }
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def rejected(body: bytes) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        parse_callback(body, NOW)
    return caught.value


def test_documented_success_sample_is_fully_typed() -> None:
    envelope = parse_callback(sample_path("dynamic_image_success.json").read_bytes(), NOW)
    assert envelope.event_type == "DynamicImageComplete"
    assert envelope.status == "success"
    assert envelope.job_id == "b1e7a3c59e2f4d6f8a0b1c2d3e4f5a6b"
    assert envelope.video_id == "3d97d4aa1e5c4fb8a2f1c0b9e4d213dd"
    assert envelope.event_time == datetime(2017, 3, 20, 7, 49, 17, tzinfo=UTC)
    assert envelope.received_at == NOW
    assert envelope.source == "callback"
    assert envelope.submission is None
    assert envelope.error is None
    assert envelope.result is not None
    assert envelope.result.model_dump() == {
        "file_url": "http://vod.example.com/dynamic/e6b8a1c2.gif",
        "file_size": 1048576,
        "fps": 15,
        "width": 640,
        "height": 360,
    }
    # The payload is the original event with its job info decoded from the JSON string.
    assert (
        envelope.payload["DynamicImageJobInfo"]["FileURL"]
        == "http://vod.example.com/dynamic/e6b8a1c2.gif"
    )
    assert envelope.payload["VideoId"] == "3d97d4aa1e5c4fb8a2f1c0b9e4d213dd"


@pytest.mark.parametrize(
    "job_info",
    [INFO, [INFO], json.dumps(INFO), json.dumps([INFO])],
    ids=["object", "list of one", "string of object", "string of list"],
)
def test_job_info_in_every_documented_shape(job_info: object) -> None:
    envelope = parse_callback(event(DynamicImageJobInfo=job_info), NOW)
    assert envelope.result is not None
    assert envelope.result.file_url == "https://cdn.example.com/a.webp"
    assert envelope.result.file_size == 2048
    assert envelope.result.fps == 12.5
    assert (envelope.result.width, envelope.result.height) == (320, 180)
    assert envelope.payload["DynamicImageJobInfo"] == INFO


def test_fail_event_carries_its_error_and_no_result() -> None:
    envelope = parse_callback(sample_path("dynamic_image_fail.json").read_bytes(), NOW)
    assert envelope.status == "fail"
    assert envelope.result is None
    assert envelope.error is not None
    assert envelope.error.code == "InvalidParameter.Seek"
    assert envelope.error.message == "Clip seek time exceeds the video duration"


def test_event_time_with_milliseconds_after_a_colon() -> None:
    assert parse_event_time("2017-03-20T07:49:17:123Z") == datetime(
        2017, 3, 20, 7, 49, 17, 123000, tzinfo=UTC
    )
    assert parse_event_time("2017-03-20T07:49:17.5Z") == datetime(
        2017, 3, 20, 7, 49, 17, 500000, tzinfo=UTC
    )
    envelope = parse_callback(event(EventTime="2026-11-24T11:59:58:250Z"), NOW)
    assert envelope.event_time == datetime(2026, 11, 24, 11, 59, 58, 250000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "code", "mentions"),
    [
        (b"{not json", "invalid_json", "not valid JSON"),
        (b"", "invalid_json", "not valid JSON"),
        (b"[1, 2]", "invalid_event", "JSON object"),
        (b'{"VideoId": "v"}', "invalid_event", "EventType"),
        (b'{"EventType": 7}', "invalid_event", "EventType"),
        (event(JobId=None), "invalid_event", "JobId: Field required"),
        (event(VideoId=""), "invalid_event", "VideoId"),
        (event(EventTime=None), "invalid_event", "EventTime: Field required"),
        (event(EventTime="yesterday"), "invalid_event", "EventTime"),
        (event(Status="done"), "invalid_event", "Status"),
        (event(DynamicImageJobInfo=None), "invalid_event", "FileURL"),
        (event(DynamicImageJobInfo="{broken"), "invalid_event", "DynamicImageJobInfo"),
        (event(DynamicImageJobInfo=[INFO, INFO]), "invalid_event", "exactly one job"),
        (event(DynamicImageJobInfo={**INFO, "FileSize": "big"}), "invalid_event", "FileSize"),
    ],
)
def test_malformed_bodies_get_precise_errors(body: bytes, code: str, mentions: str) -> None:
    error = rejected(body)
    assert error.code == code
    assert mentions in error.detail


def test_failed_job_may_omit_or_garble_job_info() -> None:
    envelope = parse_callback(event(Status="fail", DynamicImageJobInfo=None, ErrorCode="X"), NOW)
    assert envelope.error is not None
    assert envelope.error.code == "X"
    assert envelope.result is None


def test_unfamiliar_event_types_are_accepted_as_they_are() -> None:
    body = {
        "EventTime": "2026-11-24T11:00:00Z",
        "EventType": "SomethingVodAddsNextYear",
        "Status": "success",
        "Nested": {"a": [1, 2]},
    }
    envelope = parse_callback(json.dumps(body).encode(), NOW)
    assert envelope.event_type == "SomethingVodAddsNextYear"
    assert envelope.video_id is None
    assert envelope.job_id is None
    assert envelope.payload == body


def test_ai_events_use_media_id_and_millisecond_time() -> None:
    envelope = parse_callback(sample_path("ai_media_audit.json").read_bytes(), NOW)
    assert envelope.event_type == "AIMediaAuditComplete"
    assert envelope.video_id == "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"
    assert envelope.event_time == datetime(2017, 3, 20, 7, 49, 17, 123000, tzinfo=UTC)
    assert envelope.error is None


def test_other_event_failure_and_odd_time_are_kept_not_rejected() -> None:
    body = {
        "EventType": "TranscodeComplete",
        "VideoId": "v",
        "Status": "fail",
        "ErrorCode": "TranscodeFailed",
        "ErrorMessage": "bad input",
        "EventTime": "not a time",
    }
    envelope = parse_callback(json.dumps(body).encode(), NOW)
    assert envelope.event_time is None
    assert envelope.payload["EventTime"] == "not a time"
    assert envelope.error is not None
    assert envelope.error.code == "TranscodeFailed"


def test_fingerprint_identifies_a_delivery_not_its_key_order() -> None:
    a = parse_callback(b'{"EventType": "FileUploadComplete", "VideoId": "v", "Size": 1}', NOW)
    b = parse_callback(b'{"VideoId": "v", "Size": 1, "EventType": "FileUploadComplete"}', NOW)
    c = parse_callback(b'{"EventType": "FileUploadComplete", "VideoId": "w", "Size": 1}', NOW)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()


def test_envelope_json_starts_with_its_id() -> None:
    envelope = parse_callback(event(), NOW)
    assert envelope.model_dump_json().startswith('{"id":"",')


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (event(DynamicImageJobInfo={**INFO, "FileURL": ""}), "FileURL"),
        (
            event(DynamicImageJobInfo={**INFO, "FileURL": "ftp://cdn.example.com/a.gif"}),
            "FileURL: must be an http(s) URL",
        ),
        (
            event(DynamicImageJobInfo={**INFO, "FileURL": "a.gif"}),
            "FileURL: must be an http(s) URL",
        ),
        (
            event(DynamicImageJobInfo={**INFO, "FileURL": "http:///a.gif"}),
            "FileURL: must be an http(s) URL",
        ),
        (
            event(DynamicImageJobInfo={**INFO, "FileURL": "http://cdn/a\r\nX-Evil: 1"}),
            "FileURL: must not contain control characters",
        ),
        (event(DynamicImageJobInfo={**INFO, "Width": "-320"}), "Width"),
        (event(DynamicImageJobInfo={**INFO, "Height": -1}), "Height"),
        (event(DynamicImageJobInfo={**INFO, "FileSize": "-5"}), "FileSize"),
        (
            event(DynamicImageJobInfo={**INFO, "Width": True}),
            "Width: must be a number, not true or false",
        ),
        (
            event(DynamicImageJobInfo={**INFO, "FileSize": False}),
            "FileSize: must be a number, not true or false",
        ),
        (event(DynamicImageJobInfo={**INFO, "Fps": "NaN"}), "Fps: must be a finite number"),
        (event(DynamicImageJobInfo={**INFO, "Fps": "Infinity"}), "Fps: must be a finite number"),
        (event(DynamicImageJobInfo={**INFO, "Fps": "-inf"}), "Fps: must be a finite number"),
        (
            event(DynamicImageJobInfo={**INFO, "Fps": 1.5}).replace(b"1.5", b"1e400"),
            "Fps: must be a finite number",
        ),
        (event(DynamicImageJobInfo={**INFO, "Fps": "-12"}), "Fps"),
        (
            event(DynamicImageJobInfo={**INFO, "JobId": "job-2"}),
            "DynamicImageJobInfo.JobId: job-2 contradicts JobId job-1",
        ),
        (
            event(DynamicImageJobInfo={**INFO, "Status": "fail"}),
            "DynamicImageJobInfo.Status: fail contradicts Status success",
        ),
        (event(JobId=" "), "JobId: must not be blank"),
        (event(VideoId="\t"), "VideoId: must not be blank"),
        (event(JobId="job\x00-1"), "JobId: must not contain control characters"),
        (event(VideoId="video\n1"), "VideoId: must not contain control characters"),
        (event(JobId="j" * 300), "JobId"),
    ],
)
def test_impossible_events_are_rejected_naming_the_field(body: bytes, mentions: str) -> None:
    error = rejected(body)
    assert error.code == "invalid_event"
    assert mentions in error.detail


@pytest.mark.parametrize(
    ("job_info", "mentions"),
    [
        ("[" * 20000 + "]" * 20000, "DynamicImageJobInfo"),
        (json.dumps(INFO).replace("a.webp", "\\ud800.webp"), "DynamicImageJobInfo"),
    ],
    ids=["deeply nested", "lone surrogate"],
)
def test_hostile_job_info_strings_are_rejected_not_crashed_on(job_info: str, mentions: str) -> None:
    error = rejected(event(DynamicImageJobInfo=job_info))
    assert error.code == "invalid_event"
    assert mentions in error.detail


@pytest.mark.parametrize(
    "body",
    [
        b'{"EventType": "FileUploadComplete", "Size": NaN}',
        b'{"EventType": "FileUploadComplete", "Name": "\\udc00"}',
        b'{"EventType": "FileUploadComplete", "Nested": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
    ids=["NaN", "lone surrogate", "deeply nested"],
)
def test_hostile_bodies_are_not_json_we_accept(body: bytes) -> None:
    assert rejected(body).code == "invalid_json"


def test_what_vod_sends_stays_accepted() -> None:
    # Numbers as strings or numbers, a fractional Fps, an inner Status in another case, an
    # https URL, and a failure that carries no job info: all legitimate.
    info = {**INFO, "Status": "Success", "Fps": 12.5, "Width": 320, "FileSize": "0"}
    assert parse_callback(event(DynamicImageJobInfo=info), NOW).result is not None
    failed = parse_callback(event(Status="fail", DynamicImageJobInfo=None), NOW)
    assert failed.error is not None


def test_a_number_too_large_for_a_float_is_named_not_stored_as_null() -> None:
    body = b'{"EventType": "FileUploadComplete", "Size": [1, {"Bytes": -1e400}]}'
    error = rejected(body)
    assert error.code == "invalid_event"
    assert error.detail == "Size.1.Bytes: must be a finite number"
