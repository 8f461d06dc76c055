"""A local stand-in for ApsaraVideo VOD's dynamic-image API; the official SDK talks to it unchanged.

Point the SDK at it with
``Client(Config(access_key_id=..., access_key_secret=..., endpoint="127.0.0.1:PORT",
protocol="http", region_id="cn-shanghai"))`` (``Config`` from ``alibabacloud_tea_openapi.models``).

What it reproduces:

- POP's RPC protocol as the SDK speaks it: ``POST /`` with the action in ``x-acs-action``, the
  version in ``x-acs-version`` and the parameters in the query string (or a form body), signed
  with ``ACS3-HMAC-SHA256``. The signature is verified the way the SDK computes it, and the
  usual POP errors come back in Alibaba Cloud's JSON shape (``RequestId``, ``HostId``,
  ``Code``, ``Message``, ``Recommend``), so the SDK raises ``ClientException`` /
  ``ServerException`` with ``code``, ``status_code`` and ``request_id`` set.
- ``SubmitDynamicImageJob``, ``ListDynamicImage``, ``SetMessageCallback`` and
  ``GetMessageCallback``; every other action is ``InvalidAction.NotFound``.
- VOD's quotas, per AccessKeyId and per API as at VOD, in any one-second window
  (``Throttling.User``): ``qps`` for SubmitDynamicImageJob (30), ``list_qps`` for
  ListDynamicImage (100), ``callback_qps`` for Set/GetMessageCallback (15; VOD documents it for
  SetMessageCallback).
- VOD's callback: ``delay`` seconds after submission the job ends and a ``DynamicImageComplete``
  event is POSTed to the configured URL, signed with ``X-VOD-TIMESTAMP`` / ``X-VOD-SIGNATURE``
  when authentication is on. Only HTTP 200 within 5 s counts; otherwise it is retried at 1 s
  intervals, 3 attempts in all, then dropped for good. Redirects are not followed.
- Fault injection: ``drop_rate`` (callback never sent), ``duplicate_rate`` (delivered twice),
  ``fail_rate`` (job fails), reproducible with ``seed``.

There are no videos here: every VideoId exists and is in a state that allows the job, except

- a VideoId starting with ``notfound-``: 404 ``InvalidVideo.NotFound``;
- a VideoId starting with ``illegal-``: 400 ``Forbidden.IllegalStatus``;
- a VideoId starting with ``internalerror-``: 500 ``InternalError`` (the SDK raises
  ``ServerException``).

``GET /_emulator/state`` (no authentication) shows every job: its status
(``running|success|fail``), its callback outcome (``pending``, ``delivered``,
``dropped_by_fault``, ``failed_after_retries``, or ``not_subscribed`` when no HTTP callback
for ``DynamicImageComplete`` was configured as it ended), the delivery attempts made and the
deliveries answered with 200.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import re
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, quote

import httpx
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from webhook.signature import auth_key_problem, callback_url_problem, sign

logger = structlog.get_logger("webhook.emulator")

API_VERSION = "2017-03-21"
HOST_ID = "vod.cn-shanghai.aliyuncs.com"
SIGNATURE_ALGORITHM = "ACS3-HMAC-SHA256"
EVENT_TYPE = "DynamicImageComplete"
# POP refuses a request whose x-acs-date is further than this from its clock, either way.
MAX_CLOCK_SKEW_SECONDS = 15 * 60
CALLBACK_TIMEOUT_SECONDS = 5.0
CALLBACK_ATTEMPTS = 3
CALLBACK_RETRY_INTERVAL_SECONDS = 1.0
DEFAULT_APP_ID = "app-1000000"
# The headers a request must carry and sign; the SDK signs every header it sets.
_SIGNED_HEADERS_REQUIRED = (
    "host",
    "x-acs-action",
    "x-acs-version",
    "x-acs-date",
    "x-acs-signature-nonce",
    "x-acs-content-sha256",
)
_AUTHORIZATION = re.compile(
    r"(?P<algorithm>\S+) Credential=(?P<key>[^,\s]+),\s*"
    r"SignedHeaders=(?P<headers>[^,\s]+),\s*Signature=(?P<signature>[0-9a-fA-F]{64})"
)

JobStatus = Literal["running", "success", "fail"]
CallbackOutcome = Literal[
    "pending", "delivered", "dropped_by_fault", "failed_after_retries", "not_subscribed"
]


@dataclass(frozen=True)
class EmulatorOptions:
    access_keys: dict[str, str]
    """AccessKeyId -> AccessKeySecret accepted."""
    callback_url: str | None = None
    """Where DynamicImageComplete is POSTed at first (SetMessageCallback replaces it)."""
    auth_key: str | None = None
    """When set, callbacks carry X-VOD-TIMESTAMP / X-VOD-SIGNATURE (AuthSwitch on)."""
    delay: float = 1.0
    """Seconds from submission to the job's completion."""
    drop_rate: float = 0.0
    """Fraction of jobs whose callback is never sent (the job still completes and is listed)."""
    duplicate_rate: float = 0.0
    """Fraction of jobs whose callback is delivered a second time after the first succeeds."""
    fail_rate: float = 0.0
    """Fraction of jobs that end with Status "fail" (and are not listed)."""
    qps: float = 30.0
    """SubmitDynamicImageJob calls allowed per AccessKeyId in any one-second window; over it:
    Throttling.User. Each API has its own quota, as at VOD."""
    list_qps: float = 100.0
    """The same for ListDynamicImage."""
    callback_qps: float = 15.0
    """The same for SetMessageCallback and GetMessageCallback (each its own)."""
    seed: int | None = None
    """Seed for the fault injection, to make it reproducible."""

    def __post_init__(self) -> None:
        for name in ("drop_rate", "duplicate_rate", "fail_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.delay < 0:
            raise ValueError("delay must not be negative")
        for name in ("qps", "list_qps", "callback_qps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.callback_url is not None and (why := callback_url_problem(self.callback_url)):
            raise ValueError(f"callback_url {why}")
        if self.auth_key is not None and (why := auth_key_problem(self.auth_key)):
            raise ValueError(f"auth_key {why}")


class PopError(Exception):
    """An error answer, in the shape Alibaba Cloud's gateway (POP) gives it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def missing_parameter(name: str) -> PopError:
    return PopError(
        400,
        "MissingParameter",
        f'The input parameter "{name}" that is mandatory for processing this request is not '
        "supplied.",
    )


def invalid_parameter(name: str, why: str) -> PopError:
    return PopError(
        400, "InvalidParameter", f'The specified parameter "{name}" is not valid: {why}.'
    )


def signature_mismatch(why: str) -> PopError:
    return PopError(
        400,
        "SignatureDoesNotMatch",
        f"Specified signature is not matched with our calculation ({why}).",
    )


def incomplete_signature(why: str) -> PopError:
    return PopError(
        400,
        "IncompleteSignature",
        f"The request signature does not conform to Aliyun standards ({why}).",
    )


# --- ACS3-HMAC-SHA256, as alibabacloud_tea_openapi.utils.Utils.get_authorization computes it ---


@dataclass(frozen=True)
class Authorization:
    access_key_id: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str | None) -> Authorization:
    if not value:
        raise missing_parameter("Authorization")
    match = _AUTHORIZATION.fullmatch(value.strip())
    if match is None:
        raise incomplete_signature("the Authorization header is malformed")
    if match["algorithm"] != SIGNATURE_ALGORITHM:
        raise incomplete_signature(f"only {SIGNATURE_ALGORITHM} is supported")
    return Authorization(
        access_key_id=match["key"],
        signed_headers=tuple(match["headers"].lower().split(";")),
        signature=match["signature"].lower(),
    )


def canonical_request(
    *,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, list[str]],
    signed_headers: tuple[str, ...],
    payload_hash: str,
) -> str:
    canonical_query = "&".join(f"{key}={quote(query[key], safe='~')}" for key in sorted(query))
    # A header sent more than once is signed as its sorted, comma-joined values.
    canonical_headers = "".join(
        f"{name}:{','.join(sorted(value.strip() for value in headers.get(name, [])))}\n"
        for name in signed_headers
    )
    return "\n".join(
        [method, path or "/", canonical_query, canonical_headers, ";".join(signed_headers),
         payload_hash]
    )  # fmt: skip


def request_signature(secret: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    string_to_sign = f"{SIGNATURE_ALGORITHM}\n{digest}"
    return hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def check_request_date(value: str, now: datetime) -> None:
    try:
        sent = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise PopError(
            400,
            "InvalidTimeStamp.Format",
            "Specified time stamp or date value is not well formatted.",
        ) from None
    if abs((now - sent).total_seconds()) > MAX_CLOCK_SKEW_SECONDS:
        raise PopError(
            400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired."
        )


class SlidingWindowLimiter:
    """At most `limit` admissions per key in any window of `window` seconds (no burst above)."""

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self._admitted: dict[str, deque[float]] = {}

    def admit(self, key: str, limit: float) -> bool:
        now = time.monotonic()
        admitted = self._admitted.setdefault(key, deque())
        while admitted and admitted[0] <= now - self.window:
            admitted.popleft()
        if len(admitted) >= limit:
            return False
        admitted.append(now)
        return True


class NonceRegister:
    """The signature nonces seen while a request carrying them could still be accepted."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._expiry: OrderedDict[tuple[str, str], float] = OrderedDict()

    def use(self, access_key_id: str, nonce: str) -> bool:
        """Record the nonce; False if it was already used."""
        now = time.monotonic()
        # Entries expire in insertion order, so the oldest are always at the front.
        while self._expiry and next(iter(self._expiry.values())) <= now:
            self._expiry.popitem(last=False)
        key = (access_key_id, nonce)
        if key in self._expiry:
            return False
        self._expiry[key] = now + self.ttl
        return True


# --- jobs ---


@dataclass(frozen=True)
class OutputSpec:
    """The animated image a job makes (the template's defaults, or OverrideParams)."""

    format: str = "gif"
    fps: int = 10
    width: int = 320
    height: int = 180
    duration: float = 3.0


@dataclass(frozen=True)
class Faults:
    fail: bool
    drop: bool
    duplicate: bool


@dataclass(frozen=True)
class DynamicImage:
    dynamic_image_id: str
    file_url: str
    file_size: int
    creation_time: str


@dataclass
class Job:
    job_id: str
    video_id: str
    template_id: str
    spec: OutputSpec
    faults: Faults
    submitted_at: str
    status: JobStatus = "running"
    completed_at: str | None = None
    image: DynamicImage | None = None
    callback: CallbackOutcome = "pending"
    attempts: int = 0
    deliveries: int = 0


def _override_int(section: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = section.get(key, default)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid_parameter("OverrideParams", f"{key} must be an integer from {low} to {high}")
    return value


def _override_section(overrides: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    section = overrides.get(key, {})
    if not isinstance(section, dict):
        raise invalid_parameter("OverrideParams", f"{key} must be a JSON object")
    return section


def parse_override_params(raw: str | None) -> OutputSpec:
    """The output of a job with these OverrideParams (a JSON object, checked like VOD does)."""
    if raw is None:
        return OutputSpec()
    try:
        overrides = json.loads(raw)
    except ValueError:
        raise invalid_parameter("OverrideParams", "it is not JSON") from None
    if not isinstance(overrides, dict):
        raise invalid_parameter("OverrideParams", "it must be a JSON object")
    video = _override_section(overrides, "Video")
    container = _override_section(overrides, "Container")
    default = OutputSpec()
    output_format = container.get("Format", default.format)
    if output_format not in {"gif", "webp"}:
        raise invalid_parameter("OverrideParams", "Container.Format must be gif or webp")
    return OutputSpec(
        format=output_format,
        fps=_override_int(video, "Fps", default.fps, 1, 60),
        width=_override_int(video, "Width", default.width, 128, 4096),
        height=_override_int(video, "Height", default.height, 128, 4096),
    )


def utc_now_text() -> str:
    """Now in VOD's `yyyy-MM-ddTHH:mm:ssZ` UTC format."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dynamic_image_event(job: Job) -> dict[str, str]:
    """The DynamicImageComplete event VOD POSTs for a finished job."""
    event = {
        "EventTime": job.completed_at or utc_now_text(),
        "EventType": EVENT_TYPE,
        "VideoId": job.video_id,
        "Status": job.status,
        "JobId": job.job_id,
    }
    if job.image is None:
        event["ErrorCode"] = "InvalidParameter.ResourceContentBad"
        event["ErrorMessage"] = "The input video could not be decoded (emulated failure)."
    else:
        # VOD sends the job info as a JSON string inside the JSON body, every value a string.
        event["DynamicImageJobInfo"] = json.dumps(
            {
                "JobId": job.job_id,
                "Status": "success",
                "FileURL": job.image.file_url,
                "FileSize": str(job.image.file_size),
                "Fps": str(job.spec.fps),
                "Height": str(job.spec.height),
                "Width": str(job.spec.width),
            },
            separators=(",", ":"),
        )
    return event


def listed_image(job: Job, image: DynamicImage) -> dict[str, str]:
    """One item of ListDynamicImage's DynamicImageList."""
    return {
        "VideoId": job.video_id,
        "JobId": job.job_id,
        "DynamicImageId": image.dynamic_image_id,
        "FileURL": image.file_url,
        "Format": job.spec.format,
        "Fps": str(job.spec.fps),
        "Width": str(job.spec.width),
        "Height": str(job.spec.height),
        "FileSize": str(image.file_size),
        "Duration": f"{job.spec.duration:.3f}",
        "CreationTime": image.creation_time,
    }


# --- message callback configuration ---


@dataclass(frozen=True)
class MessageCallback:
    """The account's callback settings, as SetMessageCallback / GetMessageCallback see them."""

    callback_type: str = "HTTP"
    callback_url: str | None = None
    event_type_list: str = "ALL"
    auth_switch: str = "off"
    auth_key: str | None = None
    app_id: str = DEFAULT_APP_ID
    mns_endpoint: str | None = None
    mns_queue_name: str | None = None

    def http_target(self, event_type: str) -> str | None:
        """The URL an event of this type is POSTed to, or None when it is not sent over HTTP."""
        events = {name.strip() for name in self.event_type_list.split(",") if name.strip()}
        if self.callback_type != "HTTP" or not ({"ALL", event_type} & events):
            return None
        return self.callback_url

    @property
    def signing_key(self) -> str | None:
        return self.auth_key if self.auth_switch == "on" else None

    def as_response(self) -> dict[str, str]:
        fields = {
            "AppId": self.app_id,
            "CallbackType": self.callback_type,
            "CallbackURL": self.callback_url,
            "EventTypeList": self.event_type_list,
            "AuthSwitch": self.auth_switch,
            "AuthKey": self.auth_key,
            "MnsEndpoint": self.mns_endpoint,
            "MnsQueueName": self.mns_queue_name,
        }
        return {name: value for name, value in fields.items() if value is not None}


def required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise missing_parameter(name)
    return value


def check_video(video_id: str) -> None:
    """The emulator's stand-in for VOD's video lookup (see the module docstring)."""
    if video_id.startswith("notfound-"):
        raise PopError(404, "InvalidVideo.NotFound", "The video does not exist.")
    if video_id.startswith("illegal-"):
        raise PopError(400, "Forbidden.IllegalStatus", "Status of the video is illegal.")
    if video_id.startswith("internalerror-"):
        raise internal_error()


def internal_error() -> PopError:
    return PopError(
        500, "InternalError", "The request processing has failed due to some unknown error."
    )


def new_request_id() -> str:
    return str(uuid.uuid4()).upper()


def error_response(error: PopError, request_id: str) -> JSONResponse:
    return JSONResponse(
        {
            "RequestId": request_id,
            "HostId": HOST_ID,
            "Code": error.code,
            "Message": error.message,
            "Recommend": f"https://api.aliyun.com/troubleshoot?q={error.code}&product=vod"
            f"&requestId={request_id}",
        },
        status_code=error.status,
        headers={"x-acs-request-id": request_id},
    )


Action = Callable[[Mapping[str, str]], dict[str, Any]]


class Emulator:
    """All of one emulator's state, and the background tasks that finish its jobs."""

    def __init__(self, options: EmulatorOptions) -> None:
        self.options = options
        self.jobs: dict[str, Job] = {}
        self.message_callback = MessageCallback(
            callback_url=options.callback_url,
            auth_key=options.auth_key,
            auth_switch="on" if options.auth_key else "off",
        )
        self._random = random.Random(options.seed)
        self._limiter = SlidingWindowLimiter()
        self._quotas = {
            "SubmitDynamicImageJob": options.qps,
            "ListDynamicImage": options.list_qps,
            "SetMessageCallback": options.callback_qps,
            "GetMessageCallback": options.callback_qps,
        }
        # A nonce must stay remembered as long as its x-acs-date is still accepted.
        self._nonces = NonceRegister(2 * MAX_CLOCK_SKEW_SECONDS)
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._actions: dict[str, Action] = {
            "SubmitDynamicImageJob": self.submit_dynamic_image_job,
            "ListDynamicImage": self.list_dynamic_image,
            "SetMessageCallback": self.set_message_callback,
            "GetMessageCallback": self.get_message_callback,
        }

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run background work while inside; cancel whatever is left on the way out."""
        # trust_env=False: VOD posts straight to the URL, never through this host's proxy.
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as http:
            self._http = http
            try:
                yield
            finally:
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                self._http = None

    # --- the RPC endpoint ---

    async def handle_rpc(self, request: Request) -> Response:
        request_id = new_request_id()
        action = request.headers.get("x-acs-action")
        try:
            access_key_id, params = await self._authenticate(request)
            if request.headers["x-acs-version"] != API_VERSION:
                raise PopError(400, "InvalidVersion", "Specified parameter Version is not valid.")
            run = self._actions.get(action or "")
            if run is None:
                raise PopError(
                    404,
                    "InvalidAction.NotFound",
                    "Specified api is not found, please check your url and method.",
                )
            if not self._limiter.admit(f"{access_key_id}:{action}", self._quotas[action or ""]):
                raise PopError(
                    400, "Throttling.User", "Request was denied due to user flow control."
                )
            body = run(params)
        except PopError as error:
            logger.info(
                "request_rejected",
                action=action,
                code=error.code,
                status=error.status,
                request_id=request_id,
            )
            return error_response(error, request_id)
        except Exception:
            logger.exception("request_failed", action=action, request_id=request_id)
            return error_response(internal_error(), request_id)
        return JSONResponse(
            {"RequestId": request_id, **body}, headers={"x-acs-request-id": request_id}
        )

    async def _authenticate(self, request: Request) -> tuple[str, dict[str, str]]:
        """The caller's AccessKeyId and the request's parameters, once its signature checks out."""
        authorization = parse_authorization(request.headers.get("authorization"))
        for name in _SIGNED_HEADERS_REQUIRED:
            if not request.headers.get(name):
                raise missing_parameter(name)
            if name not in authorization.signed_headers:
                raise incomplete_signature(f"the {name} header must be signed")
        check_request_date(request.headers["x-acs-date"], datetime.now(UTC))
        secret = self.options.access_keys.get(authorization.access_key_id)
        if secret is None:
            raise PopError(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
        body = await request.body()
        payload_hash = request.headers["x-acs-content-sha256"].lower()
        if not hmac.compare_digest(payload_hash, hashlib.sha256(body).hexdigest()):
            raise signature_mismatch("x-acs-content-sha256 is not the hash of the body")
        query = dict(parse_qsl(request.url.query, keep_blank_values=True))
        canonical = canonical_request(
            method=request.method,
            path=request.url.path,
            query=query,
            headers={name: request.headers.getlist(name) for name in authorization.signed_headers},
            signed_headers=authorization.signed_headers,
            payload_hash=payload_hash,
        )
        if not hmac.compare_digest(authorization.signature, request_signature(secret, canonical)):
            raise signature_mismatch("the AccessKeySecret or the signed content differs")
        # Only a verified request spends its nonce, so nobody can burn someone else's.
        if not self._nonces.use(
            authorization.access_key_id, request.headers["x-acs-signature-nonce"]
        ):
            raise PopError(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
        params = query
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            params = {**query, **dict(parse_qsl(body.decode(), keep_blank_values=True))}
        return authorization.access_key_id, params

    # --- actions ---

    def submit_dynamic_image_job(self, params: Mapping[str, str]) -> dict[str, Any]:
        video_id = required(params, "VideoId")
        template_id = required(params, "DynamicImageTemplateId")
        spec = parse_override_params(params.get("OverrideParams"))
        check_video(video_id)
        # Drawn at submission, in a fixed order, so a seed gives the same faults in any timing.
        faults = Faults(
            fail=self._random.random() < self.options.fail_rate,
            drop=self._random.random() < self.options.drop_rate,
            duplicate=self._random.random() < self.options.duplicate_rate,
        )
        job = Job(
            job_id=uuid.uuid4().hex,
            video_id=video_id,
            template_id=template_id,
            spec=spec,
            faults=faults,
            submitted_at=utc_now_text(),
        )
        self.jobs[job.job_id] = job
        self._spawn(self._finish(job))
        logger.info("job_submitted", job_id=job.job_id, video_id=video_id)
        return {"DynamicImageJob": {"JobId": job.job_id}}

    def list_dynamic_image(self, params: Mapping[str, str]) -> dict[str, Any]:
        video_id = required(params, "VideoId")
        check_video(video_id)
        images = [
            listed_image(job, job.image)
            for job in self.jobs.values()
            if job.video_id == video_id and job.image is not None
        ]
        return {"DynamicImageList": images}

    def set_message_callback(self, params: Mapping[str, str]) -> dict[str, Any]:
        # What is not given is left as it was.
        current = self.message_callback
        updated = replace(
            current,
            callback_type=params.get("CallbackType", current.callback_type),
            callback_url=params.get("CallbackURL", current.callback_url),
            event_type_list=params.get("EventTypeList", current.event_type_list),
            auth_switch=params.get("AuthSwitch", current.auth_switch),
            auth_key=params.get("AuthKey", current.auth_key),
            app_id=params.get("AppId", current.app_id),
            mns_endpoint=params.get("MnsEndpoint", current.mns_endpoint),
            mns_queue_name=params.get("MnsQueueName", current.mns_queue_name),
        )
        if updated.callback_type not in {"HTTP", "MNS"}:
            raise invalid_parameter("CallbackType", "it must be HTTP or MNS")
        if updated.auth_switch not in {"on", "off"}:
            raise invalid_parameter("AuthSwitch", "it must be on or off")
        if "CallbackURL" in params and (why := callback_url_problem(params["CallbackURL"])):
            raise invalid_parameter("CallbackURL", f"it {why}")
        if "AuthKey" in params and (why := auth_key_problem(params["AuthKey"])):
            raise invalid_parameter("AuthKey", f"it {why}")
        if updated.callback_type == "HTTP" and not updated.callback_url:
            raise missing_parameter("CallbackURL")
        if updated.callback_type == "HTTP" and updated.auth_switch == "on" and not updated.auth_key:
            raise missing_parameter("AuthKey")
        if updated.callback_type == "MNS" and not updated.mns_endpoint:
            raise missing_parameter("MnsEndpoint")
        if updated.callback_type == "MNS" and not updated.mns_queue_name:
            raise missing_parameter("MnsQueueName")
        self.message_callback = updated
        logger.info(
            "message_callback_set",
            callback_type=updated.callback_type,
            callback_url=updated.callback_url,
            event_type_list=updated.event_type_list,
            auth_switch=updated.auth_switch,
        )
        return {}

    def get_message_callback(self, params: Mapping[str, str]) -> dict[str, Any]:
        return {"MessageCallback": self.message_callback.as_response()}

    # --- completion and callback delivery ---

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self._http is None:
            work.close()
            raise RuntimeError("the emulator is not running: serve its app with lifespan on")
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, job: Job) -> None:
        await asyncio.sleep(self.options.delay)
        job.completed_at = utc_now_text()
        if job.faults.fail:
            job.status = "fail"
        else:
            job.status = "success"
            image_id = uuid.uuid4().hex
            job.image = DynamicImage(
                dynamic_image_id=image_id,
                # Like VOD's, the file is named after the image, not the job.
                file_url=f"https://outin-emulator.oss-cn-shanghai.aliyuncs.com/{job.video_id}"
                f"/dynamic/{image_id[:8]}.{job.spec.format}",
                file_size=job.spec.width * job.spec.height * job.spec.fps // 8,
                creation_time=job.completed_at,
            )
        logger.info("job_completed", job_id=job.job_id, video_id=job.video_id, status=job.status)
        # The callback goes where the settings point at the moment the job ends.
        config = self.message_callback
        url = config.http_target(EVENT_TYPE)
        if url is None:
            job.callback = "not_subscribed"
            logger.info("callback_not_subscribed", job_id=job.job_id)
            return
        if job.faults.drop:
            job.callback = "dropped_by_fault"
            logger.info("callback_dropped_by_fault", job_id=job.job_id)
            return
        body = json.dumps(dynamic_image_event(job)).encode()
        delivered = await self._deliver(job, body, url, config.signing_key)
        job.callback = "delivered" if delivered else "failed_after_retries"
        if delivered and job.faults.duplicate:
            await self._deliver(job, body, url, config.signing_key)

    async def _deliver(self, job: Job, body: bytes, url: str, auth_key: str | None) -> bool:
        """POST the event as VOD does: 3 attempts 1 s apart, each needing a 200 within 5 s."""
        assert self._http is not None
        for attempt in range(1, CALLBACK_ATTEMPTS + 1):
            if attempt > 1:
                await asyncio.sleep(CALLBACK_RETRY_INTERVAL_SECONDS)
            headers = {"Content-Type": "application/json"}
            if auth_key is not None:
                # Signed afresh for each attempt, as the timestamp is the time of sending.
                timestamp = str(int(time.time()))
                headers["X-VOD-TIMESTAMP"] = timestamp
                headers["X-VOD-SIGNATURE"] = sign(url, timestamp, auth_key)
            job.attempts += 1
            try:
                async with asyncio.timeout(CALLBACK_TIMEOUT_SECONDS):
                    response = await self._http.post(url, content=body, headers=headers)
            except (httpx.HTTPError, TimeoutError) as error:
                reason = type(error).__name__
            else:
                if response.status_code == 200:
                    job.deliveries += 1
                    logger.info("callback_delivered", job_id=job.job_id, attempt=attempt, url=url)
                    return True
                reason = f"HTTP {response.status_code}"
            logger.info(
                "callback_attempt_failed", job_id=job.job_id, attempt=attempt, reason=reason
            )
        logger.warning("callback_failed_after_retries", job_id=job.job_id, url=url)
        return False

    # --- observation ---

    async def state(self, request: Request) -> Response:
        config = self.message_callback
        return JSONResponse(
            {
                "jobs": [
                    {
                        "job_id": job.job_id,
                        "video_id": job.video_id,
                        "template_id": job.template_id,
                        "status": job.status,
                        "submitted_at": job.submitted_at,
                        "completed_at": job.completed_at,
                        "callback": job.callback,
                        "attempts": job.attempts,
                        "deliveries": job.deliveries,
                    }
                    for job in self.jobs.values()
                ],
                "message_callback": {
                    "callback_type": config.callback_type,
                    "callback_url": config.callback_url,
                    "event_type_list": config.event_type_list,
                    "auth_switch": config.auth_switch,
                },
            }
        )


def create_emulator_app(options: EmulatorOptions) -> Starlette:
    """The emulator as an ASGI app; its state lives in `app.state.emulator`."""
    emulator = Emulator(options)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with emulator.running():
            yield

    app = Starlette(
        routes=[
            Route("/", emulator.handle_rpc, methods=["GET", "POST"]),
            Route("/_emulator/state", emulator.state, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.emulator = emulator
    return app


def serve_emulator(options: EmulatorOptions, *, host: str, port: int) -> None:
    """Serve the emulator under uvicorn until interrupted (logging is the caller's to set up)."""
    config = uvicorn.Config(
        create_emulator_app(options),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    uvicorn.Server(config).run()
