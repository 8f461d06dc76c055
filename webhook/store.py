"""The Redis layout and the one atomic script every recorded event goes through.

Layout (prefix configurable):
  {prefix}:job:{JobId}        hash: status, video_id, result fields, error, timestamps, envelope
  {prefix}:seen:{fingerprint} dedup marker of a non-job event (holds its envelope id)
  {prefix}:stream             capped stream of envelopes (field `envelope`)
  {prefix}:events, {prefix}:events:{EventType}, {prefix}:jobs:{JobId}   pub/sub channels
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from webhook.errors import StoreUnavailable
from webhook.events import Envelope
from webhook.settings import Settings, redis_url_of

RECORD_EVENT = (resources.files("webhook") / "scripts" / "record_event.lua").read_text()
_ID_PLACEHOLDER = '{"id":""'


@dataclass(frozen=True)
class Recorded:
    id: str
    duplicate: bool


class Keys:
    """Names of every key and channel under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.stream = f"{prefix}:stream"
        self.events_channel = f"{prefix}:events"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def seen(self, fingerprint: str) -> str:
        return f"{self.prefix}:seen:{fingerprint}"

    def type_channel(self, event_type: str) -> str:
        return f"{self.prefix}:events:{event_type}"

    def job_channel(self, job_id: str) -> str:
        return f"{self.prefix}:jobs:{job_id}"


def connect_redis(settings: Settings) -> Redis:
    # One quick retry covers a pooled connection that died with a Redis restart; no retry on
    # timeouts, so a callback is answered well inside VOD's 5 s.
    return Redis.from_url(
        redis_url_of(settings),
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        decode_responses=True,
    )


class Store:
    def __init__(
        self, redis: Redis, *, prefix: str, stream_maxlen: int, dedup_ttl_seconds: int
    ) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self._stream_maxlen = stream_maxlen
        self._dedup_ttl = dedup_ttl_seconds
        self._record_script = redis.register_script(RECORD_EVENT)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls(
            connect_redis(settings),
            prefix=settings.key_prefix,
            stream_maxlen=settings.stream_maxlen,
            dedup_ttl_seconds=settings.dedup_ttl_seconds,
        )

    async def close(self) -> None:
        await self.redis.aclose()

    async def ensure_ready(self) -> None:
        """Redis answers and the script is loaded (loading it if Redis lost it)."""
        try:
            script = self._record_script
            if not (await self.redis.script_exists(script.sha))[0]:
                await self.redis.script_load(script.script)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis is unavailable: {exc}") from None

    async def record(self, envelope: Envelope) -> Recorded:
        """Record and fan out `envelope` unless its job outcome or event was recorded before."""
        keys = self.keys
        body = envelope.model_dump_json()
        # The script fills in the id; a recorded envelope has one already and is not re-recorded.
        assert body.startswith(_ID_PLACEHOLDER), "envelope already recorded"
        channels = [keys.events_channel, keys.type_channel(envelope.event_type)]
        fields: list[str] = []
        if envelope.is_job_outcome and envelope.job_id:
            mode, marker = "job", keys.job(envelope.job_id)
            channels.append(keys.job_channel(envelope.job_id))
            fields = _job_fields(envelope)
        else:
            mode, marker = "event", keys.seen(envelope.fingerprint())
        args: list[Any] = [mode, self._dedup_ttl, self._stream_maxlen, body, len(channels)]
        try:
            created, entry_id = await self._record_script(
                keys=[marker, keys.stream], args=[*args, *channels, *fields]
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(
                f"Redis is unavailable, nothing was stored; retry later ({type(exc).__name__})"
            ) from None
        return Recorded(id=entry_id, duplicate=not created)

    async def job(self, job_id: str) -> dict[str, str] | None:
        record = await self.redis.hgetall(self.keys.job(job_id))
        return {str(k): str(v) for k, v in record.items()} or None


def _job_fields(envelope: Envelope) -> list[str]:
    values: dict[str, object] = {
        "status": envelope.status,
        "video_id": envelope.video_id,
        "source": envelope.source,
        "event_time": envelope.event_time.isoformat() if envelope.event_time else None,
        "received_at": envelope.received_at.isoformat(),
    }
    if envelope.result is not None:
        values.update(envelope.result.model_dump())
    if envelope.error is not None:
        values["error_code"] = envelope.error.code
        values["error_message"] = envelope.error.message
    return [
        item for key, value in values.items() if value is not None for item in (key, str(value))
    ]
