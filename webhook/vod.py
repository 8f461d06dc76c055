"""The VOD API calls vod-webhook makes, through the official SDK, each behind the rate limiter
and retried with bounded exponential backoff when the failure is transient."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from webhook.connection import RedisClient
from webhook.limiter import RateLimiter
from webhook.settings import ConfigError, Settings, layout_of
from webhook.stats import count_submission

# The SDK is ~600 modules: imported when a Vod is built, not by every process that imports this
# one (a `serve` worker without RECONCILE or VERIFY_OUTCOMES never needs it).
if TYPE_CHECKING:
    from alibabacloud_credentials.client import Client as CredentialClient
    from alibabacloud_vod20170321.client import Client
    from Tea.exceptions import TeaException

logger = structlog.get_logger("webhook.vod")
T = TypeVar("T")

# Transient by nature: the same call may succeed a moment later.
_TRANSIENT_CODES = {"Throttling", "Throttling.User", "Throttling.Api", "ServiceUnavailable",
                    "ServiceUnAvailable", "InternalError", "NetworkError"}  # fmt: skip


class VodError(Exception):
    """VOD refused a call, or could not be reached; carries VOD's code and request id."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status_code: int | None = None,
        request_id: str | None = None,
    ) -> None:
        suffix = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{code}: {message}{suffix}")
        self.code = code
        self.message = message
        self.status_code = status_code
        self.request_id = request_id

    @property
    def transient(self) -> bool:
        return self.code in _TRANSIENT_CODES or (self.status_code or 0) >= 500

    @property
    def outcome(self) -> str:
        """What the call came to, as the submission stats count it: throttled (VOD's quota),
        failed (VOD or the network failing, for a while), or refused (for good)."""
        if self.code.startswith("Throttling"):
            return "throttled"
        return "failed" if self.transient else "refused"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    base_delay: float = 0.2
    max_delay: float = 5.0

    def delay(self, attempt: int) -> float:
        """Full jitter: a random wait up to an exponentially growing cap."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


@dataclass(frozen=True)
class DynamicImage:
    """One item of ListDynamicImage: a finished dynamic-image job's output."""

    job_id: str
    video_id: str
    raw: dict[str, Any]
    """The item as VOD returned it: JobId, FileURL, Format, Fps, Width, Height, FileSize, ..."""


def parse_endpoint(endpoint: str) -> tuple[str, str]:
    """`http://127.0.0.1:9000` -> ("http", "127.0.0.1:9000"); a bare host means HTTPS."""
    scheme, separator, rest = endpoint.partition("://")
    if not separator:
        return "https", endpoint.rstrip("/")
    if scheme not in {"http", "https"} or not rest.strip("/"):
        raise ConfigError(f"VOD_WEBHOOK_VOD_ENDPOINT: not an http(s) URL or host: {endpoint!r}")
    return scheme, rest.strip("/")


class Vod:
    def __init__(
        self,
        client: Client,
        limiter: RateLimiter,
        retry: RetryPolicy | None = None,
        *,
        list_limiter: RateLimiter | None = None,
    ) -> None:
        """`limiter` paces every call but ListDynamicImage, which `list_limiter` paces (VOD
        has a quota per API); without it, `limiter` paces that too."""
        self._client = client
        self._limiter = limiter
        self._list_limiter = list_limiter or limiter
        self._retry = retry or RetryPolicy()

    @classmethod
    def from_settings(cls, settings: Settings, redis: RedisClient) -> Vod:
        """Calls share the quotas of settings.account_id, else of the signing AccessKey ID: one
        for ListDynamicImage, one for the rest (submissions)."""
        client, access_key_id = cls.sdk_client(settings)
        keys, account = layout_of(settings).shared, settings.account_id or access_key_id
        limiter = RateLimiter(redis, keys, account, settings.submit_qps)
        list_limiter = RateLimiter(redis, keys, f"{account}:ListDynamicImage", settings.list_qps)
        return cls(client, limiter, list_limiter=list_limiter)

    @staticmethod
    def sdk_client(settings: Settings) -> tuple[Client, str]:
        """The SDK client on the default credential chain, and the AccessKey ID it signs with."""
        from alibabacloud_tea_openapi.utils_models import Config
        from alibabacloud_vod20170321.client import Client

        protocol, endpoint = parse_endpoint(
            settings.vod_endpoint or f"vod.{settings.region}.aliyuncs.com"
        )
        credential, access_key_id = default_credentials()
        config = Config(
            credential=credential, region_id=settings.region, endpoint=endpoint, protocol=protocol
        )
        return Client(config), access_key_id

    async def submit_dynamic_image_job(
        self, video_id: str, template_id: str, override_params: str | None
    ) -> tuple[str, str]:
        """Submit a job; returns (JobId, RequestId)."""
        from alibabacloud_vod20170321 import models

        request = models.SubmitDynamicImageJobRequest(
            video_id=video_id,
            dynamic_image_template_id=template_id,
            override_params=override_params,
        )
        response = await self._call(
            "SubmitDynamicImageJob", lambda: self._client.submit_dynamic_image_job_async(request)
        )
        return response.body.dynamic_image_job.job_id, response.body.request_id

    async def list_dynamic_image(self, video_id: str) -> list[DynamicImage]:
        from alibabacloud_vod20170321 import models

        request = models.ListDynamicImageRequest(video_id=video_id)
        response = await self._call(
            "ListDynamicImage",
            lambda: self._client.list_dynamic_image_async(request),
            self._list_limiter,
        )
        return [
            DynamicImage(job_id=item.job_id, video_id=video_id, raw=item.to_map())
            for item in response.body.dynamic_image_list or []
            if item.job_id
        ]

    async def set_message_callback(
        self, callback_url: str, auth_key: str, event_types: list[str]
    ) -> str:
        """Configure VOD's HTTP callback with signing on; returns the RequestId."""
        return await self._set_callback(
            callback_type="HTTP", callback_url=callback_url, auth_switch="on", auth_key=auth_key,
            event_type_list=",".join(event_types),
        )  # fmt: skip

    async def set_mns_callback(
        self, mns_endpoint: str, mns_queue: str, event_types: list[str]
    ) -> str:
        """Configure VOD to write its events into an MNS queue; returns the RequestId."""
        return await self._set_callback(
            callback_type="MNS", mns_endpoint=mns_endpoint, mns_queue_name=mns_queue,
            event_type_list=",".join(event_types),
        )  # fmt: skip

    async def _set_callback(self, **fields: str) -> str:
        from alibabacloud_vod20170321 import models

        request = models.SetMessageCallbackRequest(**fields)
        response = await self._call(
            "SetMessageCallback", lambda: self._client.set_message_callback_async(request)
        )
        return str(response.body.request_id)

    async def get_message_callback(self) -> dict[str, Any]:
        from alibabacloud_vod20170321 import models

        request = models.GetMessageCallbackRequest()
        response = await self._call(
            "GetMessageCallback", lambda: self._client.get_message_callback_async(request)
        )
        callback = response.body.message_callback
        return dict(callback.to_map()) if callback is not None else {}

    async def _call(
        self, action: str, call: Callable[[], Awaitable[T]], limiter: RateLimiter | None = None
    ) -> T:
        from Tea.exceptions import TeaException

        attempt = 0
        while True:
            await (limiter or self._limiter).acquire()
            try:
                return await call()
            except TeaException as exc:
                error = _vod_error(exc)
            if action == "SubmitDynamicImageJob":  # one VOD took is counted as it is recorded
                shared = self._limiter  # the Redis and prefix of its quota keep the count too
                await count_submission(shared.redis, shared.keys, error.outcome, error.code)
            attempt += 1
            if not error.transient or attempt >= self._retry.attempts:
                raise error
            delay = self._retry.delay(attempt)
            logger.warning("vod_call_retried", action=action, code=error.code, attempt=attempt,
                           delay_s=round(delay, 3))  # fmt: skip
            await asyncio.sleep(delay)


def masked_message_callback(callback: dict[str, Any]) -> dict[str, Any]:
    """GetMessageCallback's answer fit to print: the AuthKey cut to its first two characters,
    enough to tell keys apart."""
    key = callback.get("AuthKey")
    return callback | {"AuthKey": f"{key[:2]}***"} if key else callback


def default_credentials() -> tuple[CredentialClient, str]:
    """The default credential chain's client, and the AccessKey ID it has now; ConfigError when
    the chain finds none."""
    try:
        credential = _credential_client()
        return credential, credential.get_credential().get_access_key_id()
    except Exception as exc:  # the chain raises plain exceptions of several kinds
        raise ConfigError(
            "no Alibaba Cloud credentials: set ALIBABA_CLOUD_ACCESS_KEY_ID and "
            f"ALIBABA_CLOUD_ACCESS_KEY_SECRET (or another default-chain source): {exc}"
        ) from None


def _credential_client() -> CredentialClient:
    """The default chain, but with the environment read now: the credentials package reads
    ALIBABA_CLOUD_* variables once, when it is imported."""
    from alibabacloud_credentials.client import Client as CredentialClient
    from alibabacloud_credentials.models import Config as CredentialConfig

    key_id = os.environ.get("ALIBABA_CLOUD_ACCESS_KEY_ID")
    secret = os.environ.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
    if not (key_id and secret):
        return CredentialClient()
    token = os.environ.get("ALIBABA_CLOUD_SECURITY_TOKEN")
    return CredentialClient(
        CredentialConfig(
            type="sts" if token else "access_key",
            access_key_id=key_id,
            access_key_secret=secret,
            security_token=token,
        )
    )


def _vod_error(exc: TeaException) -> VodError:
    from alibabacloud_tea_openapi.exceptions import AlibabaCloudException

    if isinstance(exc, AlibabaCloudException):
        data = exc.data if isinstance(exc.data, dict) else {}
        return VodError(
            str(exc.code),
            str(data.get("Message") or exc.message),
            status_code=exc.status_code,
            request_id=exc.request_id,
        )
    # Connection failures reach us as an UnretryableException wrapping the cause.
    cause = getattr(exc, "inner_exception", None) or exc
    return VodError("NetworkError", str(getattr(cause, "message", None) or cause))
