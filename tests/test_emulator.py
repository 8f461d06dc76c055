"""The VOD emulator, driven by the official SDK over loopback HTTP, calling back a real receiver."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest

# The SDK ships without type hints or a py.typed marker.
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_openapi.exceptions import (
    ClientException,
    ServerException,
)
from alibabacloud_tea_openapi.utils import Utils
from alibabacloud_vod20170321 import models
from alibabacloud_vod20170321.client import Client
from darabonba.request import DaraRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import ServeApp, eventually
from webhook.emulator import EmulatorOptions, create_emulator_app
from webhook.errors import VerificationError
from webhook.signature import verify_signature

KEY_ID = "LTAI5tEmulatorTest"
SECRET = "EmulatorTestSecret0123456789abcd"
AUTH_KEY = "Emul4torAuthKey2026"
EVENT_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK's async client sends through $HTTP_PROXY when set; loopback must stay direct.
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class Call:
    at: float
    headers: dict[str, str]
    event: dict[str, Any]
    signature_error: str | None


@dataclass
class Recorder:
    """A callback receiver that records what arrives and checks X-VOD-SIGNATURE on each."""

    auth_key: str | None = AUTH_KEY
    status_code: int = 200
    url: str = ""
    calls: list[Call] = field(default_factory=list)

    async def receive(self, request: Request) -> Response:
        error = None
        if self.auth_key is not None:
            try:
                verify_signature(
                    timestamp=request.headers.get("x-vod-timestamp"),
                    signature=request.headers.get("x-vod-signature"),
                    callback_url=self.url,
                    auth_keys=[self.auth_key],
                    now=time.time(),
                    max_skew_seconds=60,
                )
            except VerificationError as exc:
                error = exc.code
        self.calls.append(
            Call(time.monotonic(), dict(request.headers), json.loads(await request.body()), error)
        )
        return JSONResponse({"ok": self.status_code == 200}, status_code=self.status_code)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/callbacks/vod", self.receive, methods=["POST"])])

    async def serve(self, serve_app: ServeApp) -> None:
        """Serve the recorder; it then knows the URL it is called back at."""
        self.url = await serve_app(lambda _: self.app()) + "/callbacks/vod"


@dataclass
class RunningEmulator:
    """A served emulator, the recorder it calls back, and ways to reach both."""

    base_url: str
    port: int
    recorder: Recorder

    def client(self, key_id: str = KEY_ID, secret: str = SECRET) -> Any:
        config = open_api_models.Config(
            access_key_id=key_id,
            access_key_secret=secret,
            endpoint=f"127.0.0.1:{self.port}",
            protocol="http",
            region_id="cn-shanghai",
        )
        return Client(config)

    async def state(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(trust_env=False) as http:
            response = await http.get(f"{self.base_url}/_emulator/state")
        jobs: list[dict[str, Any]] = response.json()["jobs"]
        return jobs

    async def job(self, job_id: str) -> dict[str, Any]:
        return next(job for job in await self.state() if job["job_id"] == job_id)


StartEmulator = Callable[..., Awaitable[RunningEmulator]]


@pytest.fixture
def start_emulator(serve_app: ServeApp) -> StartEmulator:
    """Start a callback recorder, then the emulator calling it back; both stop afterwards."""

    async def start(recorder: Recorder | None = None, **overrides: Any) -> RunningEmulator:
        recorder = recorder or Recorder()
        await recorder.serve(serve_app)
        options: dict[str, Any] = {
            "access_keys": {KEY_ID: SECRET},
            "callback_url": recorder.url,
            "auth_key": recorder.auth_key,
            "delay": 0.2,
            **overrides,
        }
        app = create_emulator_app(EmulatorOptions(**options))
        base_url = await serve_app(lambda _: app)
        port = urlsplit(base_url).port
        assert port is not None
        return RunningEmulator(base_url, port, recorder)

    return start


async def settled(emulator: RunningEmulator, job_id: str, within: float = 6) -> dict[str, Any]:
    """The job's state once its callback outcome is final."""

    async def done() -> bool:
        return bool((await emulator.job(job_id))["callback"] != "pending")

    await eventually(done, within, f"job {job_id} to settle")
    return await emulator.job(job_id)


async def submit(client: Any, video_id: str = "video-1", **fields: Any) -> str:
    request = models.SubmitDynamicImageJobRequest(
        video_id=video_id, dynamic_image_template_id="template-1", **fields
    )
    response = await client.submit_dynamic_image_job_async(request)
    job_id: str = response.body.dynamic_image_job.job_id
    return job_id


async def listed(client: Any, video_id: str = "video-1") -> list[Any]:
    response = await client.list_dynamic_image_async(
        models.ListDynamicImageRequest(video_id=video_id)
    )
    images: list[Any] = response.body.dynamic_image_list
    return images


def signed(
    port: int,
    action: str,
    query: dict[str, str],
    *,
    secret: str = SECRET,
    date: str | None = None,
    nonce: str | None = None,
) -> tuple[str, dict[str, str]]:
    """A raw request signed with the SDK's own ACS3-HMAC-SHA256 code: its URL and headers."""
    request = DaraRequest()
    request.method = "POST"
    request.pathname = "/"
    request.query = query
    payload_hash = hashlib.sha256(b"").hexdigest()
    request.headers = {
        "host": f"127.0.0.1:{port}",
        "x-acs-version": "2017-03-21",
        "x-acs-action": action,
        "x-acs-date": date or Utils.get_timestamp(),
        "x-acs-signature-nonce": nonce or uuid.uuid4().hex,
        "accept": "application/json",
        "x-acs-content-sha256": payload_hash,
    }
    request.headers["Authorization"] = Utils.get_authorization(
        request, "ACS3-HMAC-SHA256", payload_hash, KEY_ID, secret
    )
    return f"http://127.0.0.1:{port}/?{urlencode(query)}", dict(request.headers)


async def post_raw(url: str, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False) as http:
        return await http.post(url, headers=headers)


def assert_pop_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["Code"] == code
    assert body["RequestId"]
    assert body["HostId"] == "vod.cn-shanghai.aliyuncs.com"
    assert body["Message"]
    assert body["Recommend"]


async def test_submitted_job_calls_back_signed_and_is_listed(
    start_emulator: StartEmulator,
) -> None:
    emulator = await start_emulator(delay=0.2)
    client = emulator.client()
    overrides = {"Video": {"Width": 480, "Height": 270, "Fps": 12}, "Container": {"Format": "webp"}}
    submitted_at = time.monotonic()
    response = await client.submit_dynamic_image_job_async(
        models.SubmitDynamicImageJobRequest(
            video_id="video-1",
            dynamic_image_template_id="template-1",
            override_params=json.dumps(overrides),
        )
    )
    job_id = response.body.dynamic_image_job.job_id
    assert HEX32.fullmatch(job_id)
    assert response.body.request_id
    assert await listed(client) == []  # still running

    async def called_back() -> bool:
        return len(emulator.recorder.calls) == 1

    await eventually(called_back, what="the callback")
    call = emulator.recorder.calls[0]
    assert call.at - submitted_at >= 0.2
    assert call.signature_error is None
    assert call.headers["content-type"] == "application/json"
    event = call.event
    assert set(event) == {
        "EventTime",
        "EventType",
        "VideoId",
        "Status",
        "JobId",
        "DynamicImageJobInfo",
    }
    assert EVENT_TIME.fullmatch(event["EventTime"])
    assert event["EventType"] == "DynamicImageComplete"
    assert (event["VideoId"], event["Status"], event["JobId"]) == ("video-1", "success", job_id)
    assert isinstance(event["DynamicImageJobInfo"], str)  # JSON inside the JSON, as VOD sends it
    info = json.loads(event["DynamicImageJobInfo"])
    assert set(info) == {"JobId", "Status", "FileURL", "FileSize", "Fps", "Height", "Width"}
    assert all(isinstance(value, str) for value in info.values())
    assert (info["JobId"], info["Status"], info["Fps"], info["Width"], info["Height"]) == (
        job_id, "success", "12", "480", "270",
    )  # fmt: skip
    assert info["FileURL"].startswith("https://")
    assert job_id not in info["FileURL"].rsplit("/", 1)[-1]
    assert int(info["FileSize"]) > 0

    [image] = await listed(client)
    assert image.job_id == job_id
    assert image.video_id == "video-1"
    assert HEX32.fullmatch(image.dynamic_image_id)
    assert image.file_url == info["FileURL"]
    assert (image.format, image.fps, image.width, image.height) == ("webp", "12", "480", "270")
    assert image.file_size == info["FileSize"]
    assert float(image.duration) > 0
    assert EVENT_TIME.fullmatch(image.creation_time)
    assert await listed(client, "video-2") == []

    job = await emulator.job(job_id)
    assert job["status"] == "success"
    assert (job["callback"], job["attempts"], job["deliveries"]) == ("delivered", 1, 1)


async def test_unknown_access_key_is_404(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator()
    with pytest.raises(ClientException) as caught:
        await submit(emulator.client(key_id="LTAI5tNobody"))
    error = caught.value
    assert (error.status_code, error.code) == (404, "InvalidAccessKeyId.NotFound")
    assert error.request_id
    assert error.request_id == error.data["RequestId"]
    assert error.data["HostId"] == "vod.cn-shanghai.aliyuncs.com"
    assert "Specified access key is not found." in error.message
    assert await emulator.state() == []


async def test_wrong_secret_is_signature_mismatch(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator()
    with pytest.raises(ClientException) as caught:
        await listed(emulator.client(secret="NotTheSecret"))
    assert (caught.value.status_code, caught.value.code) == (400, "SignatureDoesNotMatch")


async def test_tampered_parameters_are_signature_mismatch(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator()
    url, headers = signed(emulator.port, "ListDynamicImage", {"VideoId": "video-1"})
    assert (await post_raw(url, headers)).status_code == 200
    url, headers = signed(emulator.port, "ListDynamicImage", {"VideoId": "video-1"})
    assert_pop_error(
        await post_raw(url.replace("video-1", "video-2"), headers), 400, "SignatureDoesNotMatch"
    )


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "MissingParameter"),
        ("garbage", "IncompleteSignature"),
        (
            "ACS3-HMAC-SM3 Credential=x,SignedHeaders=host,Signature=" + "0" * 64,
            "IncompleteSignature",
        ),
    ],
)
async def test_missing_or_garbled_authorization(
    start_emulator: StartEmulator, authorization: str | None, code: str
) -> None:
    emulator = await start_emulator()
    url, headers = signed(emulator.port, "ListDynamicImage", {"VideoId": "video-1"})
    del headers["Authorization"]
    if authorization is not None:
        headers["Authorization"] = authorization
    assert_pop_error(await post_raw(url, headers), 400, code)


async def test_stale_date_is_expired(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator()
    stale = (datetime.now(UTC) - timedelta(minutes=16)).strftime("%Y-%m-%dT%H:%M:%SZ")
    url, headers = signed(emulator.port, "ListDynamicImage", {"VideoId": "video-1"}, date=stale)
    assert_pop_error(await post_raw(url, headers), 400, "InvalidTimeStamp.Expired")


async def test_reused_nonce_is_refused(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator()
    url, headers = signed(emulator.port, "ListDynamicImage", {"VideoId": "video-1"})
    assert (await post_raw(url, headers)).status_code == 200
    assert_pop_error(await post_raw(url, headers), 400, "SignatureNonceUsed")


async def test_unknown_action(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator()
    url, headers = signed(emulator.port, "GetDynamicImageJob", {"JobId": "x"})
    assert_pop_error(await post_raw(url, headers), 404, "InvalidAction.NotFound")


@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        ({"dynamic_image_template_id": "template-1"}, "VideoId"),
        ({"video_id": "video-1"}, "DynamicImageTemplateId"),
        ({"video_id": "", "dynamic_image_template_id": "template-1"}, "VideoId"),
    ],
)
async def test_missing_parameter(
    start_emulator: StartEmulator, fields: dict[str, str], missing: str
) -> None:
    emulator = await start_emulator()
    request = models.SubmitDynamicImageJobRequest(**fields)
    with pytest.raises(ClientException) as caught:
        await emulator.client().submit_dynamic_image_job_async(request)
    assert (caught.value.status_code, caught.value.code) == (400, "MissingParameter")
    assert f'"{missing}"' in caught.value.message


@pytest.mark.parametrize(
    "override_params",
    [
        "not json",
        '["a", "list"]',
        '"a string"',
        '{"Container": {"Format": "bmp"}}',
        '{"Video": {"Width": 64}}',
        '{"Video": {"Fps": 61}}',
    ],
)
async def test_bad_override_params(start_emulator: StartEmulator, override_params: str) -> None:
    emulator = await start_emulator()
    with pytest.raises(ClientException) as caught:
        await submit(emulator.client(), override_params=override_params)
    assert (caught.value.status_code, caught.value.code) == (400, "InvalidParameter")
    assert "OverrideParams" in caught.value.message


@pytest.mark.parametrize(
    ("video_id", "exception", "status", "code"),
    [
        ("notfound-1", ClientException, 404, "InvalidVideo.NotFound"),
        ("illegal-1", ClientException, 400, "Forbidden.IllegalStatus"),
        ("internalerror-1", ServerException, 500, "InternalError"),
    ],
)
async def test_video_conventions(
    start_emulator: StartEmulator, video_id: str, exception: Any, status: int, code: str
) -> None:
    emulator = await start_emulator()
    with pytest.raises(exception) as caught:
        await submit(emulator.client(), video_id)
    assert (caught.value.status_code, caught.value.code) == (status, code)
    assert caught.value.request_id


async def test_throttling_per_access_key_and_per_api(start_emulator: StartEmulator) -> None:
    other_id, other_secret = "LTAI5tOtherKey", "OtherSecret"
    emulator = await start_emulator(
        qps=3, list_qps=2, access_keys={KEY_ID: SECRET, other_id: other_secret}
    )
    client = emulator.client()
    started = time.monotonic()
    results = await asyncio.gather(*(submit(client) for _ in range(5)), return_exceptions=True)
    job_ids = [result for result in results if isinstance(result, str)]
    refused: list[Any] = [result for result in results if not isinstance(result, str)]
    assert len(job_ids) == 3
    assert len(refused) == 2
    for error in refused:
        # A plain ClientException: the SDK does not retry it (no x-acs-retry-after is sent).
        assert type(error) is ClientException
        assert (error.status_code, error.code) == (400, "Throttling.User")
        assert "flow control" in error.message
    # The limit is per AccessKeyId.
    assert await submit(emulator.client(other_id, other_secret))
    # And per API, as at VOD: lookups have a quota of their own, which submissions left intact.
    looked_up = await asyncio.gather(*(listed(client) for _ in range(3)), return_exceptions=True)
    assert sum(isinstance(result, list) for result in looked_up) == 2
    [throttled] = [result for result in looked_up if not isinstance(result, list)]
    assert isinstance(throttled, ClientException)
    assert throttled.code == "Throttling.User"

    async def admitted_again() -> bool:
        try:
            await submit(client)
        except ClientException as error:
            if error.code != "Throttling.User":
                raise
            return False
        return True

    await eventually(admitted_again, within=3, what="the window to pass")
    assert time.monotonic() - started >= 1.0


async def test_set_then_get_message_callback_redirects_callbacks(
    start_emulator: StartEmulator, serve_app: ServeApp
) -> None:
    emulator = await start_emulator()
    client = emulator.client()
    initial = (await client.get_message_callback_async(models.GetMessageCallbackRequest())).body
    assert initial.request_id
    callback = initial.message_callback
    assert (callback.callback_type, callback.callback_url) == ("HTTP", emulator.recorder.url)
    assert (callback.auth_switch, callback.auth_key, callback.event_type_list) == (
        "on", AUTH_KEY, "ALL",
    )  # fmt: skip

    second = Recorder(auth_key="N3wAuthKey2026abc")
    await second.serve(serve_app)
    await client.set_message_callback_async(
        models.SetMessageCallbackRequest(
            callback_type="HTTP",
            callback_url=second.url,
            event_type_list="FileUploadComplete,DynamicImageComplete",
            auth_switch="on",
            auth_key="N3wAuthKey2026abc",
        )
    )
    got = (await client.get_message_callback_async(models.GetMessageCallbackRequest())).body
    callback = got.message_callback
    assert (callback.callback_type, callback.callback_url, callback.auth_key) == (
        "HTTP", second.url, "N3wAuthKey2026abc",
    )  # fmt: skip
    assert (callback.auth_switch, callback.event_type_list) == (
        "on", "FileUploadComplete,DynamicImageComplete",
    )  # fmt: skip

    job_id = await submit(client)
    assert (await settled(emulator, job_id))["callback"] == "delivered"
    [call] = second.calls
    assert call.signature_error is None  # signed with the new key for the new URL
    assert call.event["JobId"] == job_id
    assert emulator.recorder.calls == []


async def test_callbacks_follow_event_type_list_and_auth_switch(
    start_emulator: StartEmulator,
) -> None:
    emulator = await start_emulator()
    client = emulator.client()
    await client.set_message_callback_async(
        models.SetMessageCallbackRequest(event_type_list="FileUploadComplete")
    )
    job_id = await submit(client)
    assert (await settled(emulator, job_id))["callback"] == "not_subscribed"
    assert emulator.recorder.calls == []
    assert [image.job_id for image in await listed(client)] == [job_id]

    await client.set_message_callback_async(
        models.SetMessageCallbackRequest(event_type_list="ALL", auth_switch="off")
    )
    job_id = await submit(client)
    assert (await settled(emulator, job_id))["callback"] == "delivered"
    [call] = emulator.recorder.calls
    assert "x-vod-signature" not in call.headers
    assert "x-vod-timestamp" not in call.headers


@pytest.mark.parametrize(
    ("fields", "parameter"),
    [
        ({"auth_key": "alllowercase123"}, "AuthKey"),
        ({"auth_key": "ALLUPPERCASE123"}, "AuthKey"),
        ({"auth_key": "NoDigitsAtAll"}, "AuthKey"),
        ({"auth_key": "Aa1" * 11}, "AuthKey"),  # 33 characters
        ({"callback_url": "ftp://hooks.example.com/vod"}, "CallbackURL"),
        ({"callback_url": "not a url"}, "CallbackURL"),
        ({"callback_url": "https://hooks.example.com/" + "a" * 231}, "CallbackURL"),  # 257 bytes
        ({"auth_switch": "yes"}, "AuthSwitch"),
    ],
)
async def test_set_message_callback_validation(
    start_emulator: StartEmulator, fields: dict[str, str], parameter: str
) -> None:
    emulator = await start_emulator()
    client = emulator.client()
    with pytest.raises(ClientException) as caught:
        await client.set_message_callback_async(models.SetMessageCallbackRequest(**fields))
    assert (caught.value.status_code, caught.value.code) == (400, "InvalidParameter")
    assert f'"{parameter}"' in caught.value.message
    # Nothing changed.
    got = (await client.get_message_callback_async(models.GetMessageCallbackRequest())).body
    assert got.message_callback.auth_key == AUTH_KEY
    assert got.message_callback.callback_url == emulator.recorder.url


async def test_longest_valid_auth_key_and_url_are_accepted(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator()
    client = emulator.client()
    url = "https://hooks.example.com/" + "a" * 230  # 256 bytes
    await client.set_message_callback_async(
        models.SetMessageCallbackRequest(auth_key="Aa1" * 10 + "Bb", callback_url=url)
    )
    got = (await client.get_message_callback_async(models.GetMessageCallbackRequest())).body
    assert (got.message_callback.auth_key, got.message_callback.callback_url) == (
        "Aa1" * 10 + "Bb", url,
    )  # fmt: skip


@pytest.mark.parametrize("status_code", [500, 302])  # a redirect is not followed: a failure
async def test_failing_receiver_gets_three_attempts_a_second_apart(
    start_emulator: StartEmulator, status_code: int
) -> None:
    emulator = await start_emulator(Recorder(status_code=status_code))
    job_id = await submit(emulator.client())
    job = await settled(emulator, job_id)
    assert (job["callback"], job["attempts"], job["deliveries"]) == ("failed_after_retries", 3, 0)
    calls = emulator.recorder.calls
    assert len(calls) == 3
    assert all(call.signature_error is None for call in calls)
    assert all(call.event == calls[0].event for call in calls)
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(calls)]
    assert all(0.9 <= gap <= 2.0 for gap in gaps), gaps


async def test_drop_rate_sends_nothing_but_the_job_completes(
    start_emulator: StartEmulator,
) -> None:
    emulator = await start_emulator(drop_rate=1.0)
    client = emulator.client()
    job_id = await submit(client)
    job = await settled(emulator, job_id)
    assert (job["status"], job["callback"], job["attempts"]) == ("success", "dropped_by_fault", 0)
    assert emulator.recorder.calls == []
    assert [image.job_id for image in await listed(client)] == [job_id]


async def test_duplicate_rate_delivers_twice(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(duplicate_rate=1.0)
    job_id = await submit(emulator.client())

    async def both_delivered() -> bool:
        return bool((await emulator.job(job_id))["deliveries"] == 2)

    await eventually(both_delivered, what="the second delivery")
    job = await emulator.job(job_id)
    assert (job["callback"], job["attempts"]) == ("delivered", 2)
    first, second = emulator.recorder.calls
    assert first.event == second.event
    assert first.signature_error is None
    assert second.signature_error is None


async def test_fail_rate_reports_failure_and_lists_nothing(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(fail_rate=1.0)
    client = emulator.client()
    job_id = await submit(client)
    job = await settled(emulator, job_id)
    assert (job["status"], job["callback"]) == ("fail", "delivered")
    [call] = emulator.recorder.calls
    assert call.signature_error is None
    event = call.event
    assert set(event) == {
        "EventTime", "EventType", "VideoId", "Status", "JobId", "ErrorCode", "ErrorMessage",
    }  # fmt: skip
    assert (event["Status"], event["JobId"], event["EventType"]) == (
        "fail", job_id, "DynamicImageComplete",
    )  # fmt: skip
    assert event["ErrorCode"]
    assert event["ErrorMessage"]
    assert await listed(client) == []


async def test_seed_makes_faults_reproducible(start_emulator: StartEmulator) -> None:
    outcomes = []
    for _ in range(2):
        emulator = await start_emulator(delay=0, fail_rate=0.5, seed=7, callback_url=None)
        client = emulator.client()
        job_ids = [await submit(client) for _ in range(8)]
        for job_id in job_ids:
            await settled(emulator, job_id)
        outcomes.append([(await emulator.job(job_id))["status"] for job_id in job_ids])
    assert outcomes[0] == outcomes[1]
    assert {"success", "fail"} == set(outcomes[0])


async def test_shutdown_cancels_running_jobs() -> None:
    # The app's lifespan is run here, not by a server: serve_app stops servers after the test
    # only, and it is this shutdown that is timed. Requests go in through ASGITransport.
    app = create_emulator_app(EmulatorOptions(access_keys={KEY_ID: SECRET}, delay=60))
    base_url = "http://127.0.0.1:9000"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=base_url) as http:
        async with app.router.lifespan_context(app):
            query = {"VideoId": "video-1", "DynamicImageTemplateId": "template-1"}
            url, headers = signed(9000, "SubmitDynamicImageJob", query)
            response = await http.post(url, headers=headers)
            assert response.status_code == 200, response.text
            job_id = response.json()["DynamicImageJob"]["JobId"]
            [job] = (await http.get("/_emulator/state")).json()["jobs"]
            assert (job["job_id"], job["status"], job["callback"], job["attempts"]) == (
                job_id, "running", "pending", 0,
            )  # fmt: skip
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 2


@pytest.mark.parametrize(
    "overrides",
    [
        {"fail_rate": 1.5},
        {"drop_rate": -0.1},
        {"delay": -1},
        {"qps": 0},
        {"auth_key": "lowercaseonly1"},
        {"callback_url": "ftp://example.com/"},
    ],
)
def test_options_are_validated(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(overrides))):
        EmulatorOptions(access_keys={KEY_ID: SECRET}, **overrides)
