"""VOD callback events as pydantic models, and the envelope subscribers receive.

Pure functions only: `parse_callback` turns the raw body into an `Envelope` or raises PayloadError.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import pydantic_core
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from webhook.errors import PayloadError, explain

DYNAMIC_IMAGE_COMPLETE = "DynamicImageComplete"
# Every event type VOD documents sending to a callback URL (its documentation lists these).
KNOWN_EVENT_TYPES = frozenset(
    {
        "FileUploadComplete", "ImageUploadComplete", "StreamTranscodeComplete",
        "TranscodeComplete", "SnapshotComplete", DYNAMIC_IMAGE_COMPLETE,
        "AddLiveRecordVideoComplete", "LiveRecordVideoComposeStart", "UploadByURLComplete",
        "CreateAuditComplete", "VideoAnalysisComplete", "AttachedMediaUploadComplete",
        "ProduceMediaComplete", "DeleteMediaComplete", "MediaBaseChangeComplete",
        "AIMediaAuditComplete", "AIMediaDNAComplete", "AIVideoTagComplete",
    }
)  # fmt: skip

# VOD writes `2017-03-20T07:49:17Z`, sometimes with milliseconds after a colon
# (`…:17:123Z`); a dot is accepted too.
_EVENT_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:[:.](\d{1,6}))?Z")


def parse_event_time(value: object) -> datetime:
    if isinstance(value, datetime):
        return value
    match = _EVENT_TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None or not isinstance(value, str):
        raise ValueError("expected UTC time as yyyy-MM-ddTHH:mm:ssZ (optionally :SSS before Z)")
    if match.group(7) is None:
        return datetime.fromisoformat(value)  # the usual form, read in C ("Z" is UTC)
    year, month, day, hour, minute, second = map(int, match.groups()[:6])
    micros = int(match.group(7).ljust(6, "0"))
    return datetime(year, month, day, hour, minute, second, micros, tzinfo=UTC)


def utc_text(moment: datetime | None) -> str | None:
    """A time as envelopes and submissions write it: ISO 8601 ending in Z."""
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def _blank_to_none(value: object) -> object:
    return None if value == "" else value


def _count(value: object) -> object:
    """A size in pixels or bytes: VOD sends digits, in a string or not; blank means unknown."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return _blank_to_none(value)


def _finite(value: int | float | None) -> int | float | None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


# Unicode's control characters (category Cc), as a regex: a search is ~50x faster than a loop.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _has_no_control_characters(value: str) -> str:
    if _CONTROL_CHARACTER.search(value):
        raise ValueError("must not contain control characters")
    return value


def _identifier(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return _has_no_control_characters(value)


def _file_url(value: str | None) -> str | None:
    if value is None:
        return None
    _has_no_control_characters(value)
    parts = urlsplit(value)
    if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an http(s) URL")
    return value


EventTime = Annotated[datetime, BeforeValidator(parse_event_time)]
# VOD's ids are 32 hex digits; the bound keeps a hostile one from bloating keys and logs.
Identifier = Annotated[str, Field(max_length=128), AfterValidator(_identifier)]
Count = Annotated[int | None, Field(ge=0), BeforeValidator(_count)]
Rate = Annotated[int | float | None, AfterValidator(_finite), BeforeValidator(_count)]
FileURL = Annotated[str | None, AfterValidator(_file_url), BeforeValidator(_blank_to_none)]


def decode_job_info(value: object) -> object:
    """DynamicImageJobInfo arrives as an object, a list of one, or a JSON string of either."""
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            # pydantic's parser bounds nesting and refuses lone surrogates and NaN, as for
            # the body itself.
            value = pydantic_core.from_json(value, allow_inf_nan=False)
        except ValueError as exc:
            raise ValueError(f"is a string but not JSON ({exc})") from None
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"must hold exactly one job, not {len(value)}")
        value = value[0]
    return value


class DynamicImageJobInfo(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    job_id: Identifier | None = Field(None, alias="JobId")
    status: str | None = Field(None, alias="Status")
    file_url: FileURL = Field(None, alias="FileURL")
    file_size: Count = Field(None, alias="FileSize")
    fps: Rate = Field(None, alias="Fps")
    height: Count = Field(None, alias="Height")
    width: Count = Field(None, alias="Width")

    @field_validator("fps")
    @classmethod
    def _fps_is_a_rate(cls, value: int | float | None) -> int | float | None:
        if value is not None and value < 0:
            raise ValueError("must not be negative")
        return value

    def to_result(self) -> JobResult | None:
        if not self.file_url:
            return None
        return JobResult(
            file_url=self.file_url,
            file_size=self.file_size,
            fps=self.fps,
            width=self.width,
            height=self.height,
        )


class DynamicImageComplete(BaseModel):
    """The callback VOD sends when a SubmitDynamicImageJob job ends."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    event_time: EventTime = Field(alias="EventTime")
    event_type: Literal["DynamicImageComplete"] = Field(alias="EventType")
    video_id: Identifier = Field(alias="VideoId")
    status: Literal["success", "fail"] = Field(alias="Status")
    job_id: Identifier = Field(alias="JobId")
    error_code: str | None = Field(None, alias="ErrorCode")
    error_message: str | None = Field(None, alias="ErrorMessage")
    job_info: DynamicImageJobInfo | None = Field(None, alias="DynamicImageJobInfo")

    @field_validator("job_info", mode="before")
    @classmethod
    def _decode_job_info(cls, value: object) -> object:
        return decode_job_info(value)

    @model_validator(mode="after")
    def _job_info_agrees(self) -> DynamicImageComplete:
        info = self.job_info
        if self.status == "success" and (info is None or not info.file_url):
            raise ValueError("a successful job needs DynamicImageJobInfo with its FileURL")
        if info is not None and info.job_id is not None and info.job_id != self.job_id:
            raise ValueError(
                f"DynamicImageJobInfo.JobId: {info.job_id} contradicts JobId {self.job_id}"
            )
        if info is not None and info.status and info.status.lower() != self.status:
            raise ValueError(
                f"DynamicImageJobInfo.Status: {info.status} contradicts Status {self.status}"
            )
        return self


class JobResult(BaseModel):
    file_url: str
    file_size: int | None = None
    fps: int | float | None = None
    width: int | None = None
    height: int | None = None


class JobError(BaseModel):
    code: str | None = None
    message: str | None = None


class Envelope(BaseModel):
    """What every published message and stream entry carries, whatever the event type."""

    id: str = Field("", description="The envelope's stream entry id, set when it is recorded.")
    event_type: str
    status: str | None = None
    job_id: str | None = None
    video_id: str | None = None
    event_time: datetime | None = None
    received_at: datetime
    source: Literal["callback", "mns", "reconcile"] = "callback"
    verified: bool | None = Field(
        None,
        description="True: ListDynamicImage confirmed this outcome (VERIFY_OUTCOMES, or found by "
        "reconciliation); False: it could not be confirmed (a fail, or VOD out of reach); "
        "None: not checked (verification off, or not a job outcome).",
    )
    submission: dict[str, Any] | None = None
    result: JobResult | None = None
    error: JobError | None = None
    payload: dict[str, Any]

    @property
    def is_job_outcome(self) -> bool:
        return self.event_type == DYNAMIC_IMAGE_COMPLETE

    def fingerprint(self) -> str:
        """Identity of a non-job event: the same delivery re-sent has the same payload."""
        canonical = json.dumps(self.payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(f"{self.event_type}\n{canonical}".encode()).hexdigest()


def _infinite_number(value: object, where: str = "") -> str | None:
    """Where in `value` a number too large for a float is (`Size.1.Bytes`), if anywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "body"
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        found = _infinite_number(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def parse_callback(body: bytes, received_at: datetime) -> Envelope:
    """Validate a callback body. Unfamiliar event types are accepted as they are."""
    try:
        data = pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        raise PayloadError(f"body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(data, dict):
        raise PayloadError("body must be a JSON object")
    where = _infinite_number(data)
    if where is not None:
        # 1e400 parses as infinity, which the envelope could only carry as null.
        raise PayloadError(f"{where}: must be a finite number")
    event_type = data.get("EventType")
    if not isinstance(event_type, str) or not event_type:
        raise PayloadError("EventType: a non-empty string is required")
    if event_type == DYNAMIC_IMAGE_COMPLETE:
        return _dynamic_image_envelope(data, received_at)
    return _generic_envelope(event_type, data, received_at)


def _dynamic_image_envelope(data: dict[str, Any], received_at: datetime) -> Envelope:
    try:
        event = DynamicImageComplete.model_validate(data)
    except ValidationError as exc:
        raise PayloadError(f"{DYNAMIC_IMAGE_COMPLETE}: {explain(exc)}") from None
    info = event.job_info
    payload = dict(data)
    if "DynamicImageJobInfo" in payload:
        payload["DynamicImageJobInfo"] = decode_job_info(payload["DynamicImageJobInfo"])
    return Envelope(
        event_type=event.event_type,
        status=event.status,
        job_id=event.job_id,
        video_id=event.video_id,
        event_time=event.event_time,
        received_at=received_at,
        result=info.to_result() if info is not None and event.status == "success" else None,
        error=JobError(code=event.error_code, message=event.error_message)
        if event.status == "fail"
        else None,
        payload=payload,
    )


def _generic_envelope(event_type: str, data: dict[str, Any], received_at: datetime) -> Envelope:
    def text(*names: str) -> str | None:
        for name in names:
            value = data.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool) and value != "":
                return str(value)
        return None

    try:
        event_time: datetime | None = parse_event_time(data.get("EventTime"))
    except ValueError:
        event_time = None  # kept verbatim in the payload; never a reason to make VOD retry
    status = text("Status")
    failed = status is not None and status.lower() not in {"success", "normal"}
    error_code = text("ErrorCode", "Code")
    error_message = text("ErrorMessage", "Message")
    return Envelope(
        event_type=event_type,
        status=status,
        job_id=text("JobId"),
        video_id=text("VideoId", "MediaId"),
        event_time=event_time,
        received_at=received_at,
        error=JobError(code=error_code, message=error_message)
        if failed and (error_code or error_message)
        else None,
        payload=data,
    )
