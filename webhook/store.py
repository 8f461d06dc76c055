"""The atomic scripts every change of state goes through, and the reads of what they wrote.

The key layout is in webhook/keys.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, ClassVar

import orjson
import structlog
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from webhook.autopipeline import AutoPipeline, NotReplicated
from webhook.connection import RedisClient, connect
from webhook.errors import StoreUnavailable
from webhook.events import Envelope, utc_text
from webhook.keys import Keys, Layout
from webhook.settings import Settings, redis_url_of
from webhook.stats import submission_field

_ID_PLACEHOLDER = '{"id":""'
logger = structlog.get_logger("webhook.store")

# A script call ends within this, so VOD (which waits 5 s) hears 503 rather than nothing.
CALL_DEADLINE_SECONDS = 4.0
# How long a batch line stays claimed by a run that may have died while submitting it.
BATCH_CLAIM_SECONDS = 600


SCRIPTS = ("record_event", "record_submission", "gcra", "hold_outcome", "claim_due")


def script_source(name: str) -> str:
    """A script from webhook/scripts, with the shared functions in front."""
    scripts = resources.files("webhook") / "scripts"
    return (scripts / "common.lua").read_text() + (scripts / f"{name}.lua").read_text()


@dataclass(frozen=True)
class Recorded:
    id: str
    duplicate: bool


def connect_redis(settings: Settings) -> RedisClient:
    """A client for the configured Redis, or the embedded store (see webhook/connection.py)."""
    return connect(
        redis_url_of(settings),
        timeout=settings.redis_timeout_seconds,
        max_connections=settings.redis_max_connections,
    )


class Store:
    def __init__(
        self,
        redis: RedisClient,
        *,
        prefix: str,
        stream_maxlen: int,
        dedup_ttl_seconds: int,
        partitions: int = 1,
        call_deadline_seconds: float = CALL_DEADLINE_SECONDS,
        max_held: int = 10_000,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 0,
    ) -> None:
        self.redis = redis
        # The scripts (the callback's one round trip among them) share one pipelined connection
        # (on a cluster, one per master); reads, pub/sub and blocking calls use redis's pool.
        options: dict[str, Any] = {
            "default_timeout": call_deadline_seconds,
            "wait_replicas": wait_replicas,
            "wait_timeout_ms": wait_timeout_ms,
        }
        self._scripts: AutoPipeline | ClusterScripts
        if isinstance(redis, RedisCluster):
            self._scripts = ClusterScripts(redis, **options)
        else:
            self._scripts = AutoPipeline(redis, **options)
        self.layout = Layout(prefix, partitions, sharded=isinstance(redis, RedisCluster))
        self.shared = self.layout.shared
        """Partition 0's keys, which hold what no job owns (see Layout.shared)."""
        self._stream_maxlen = stream_maxlen
        self._dedup_ttl = dedup_ttl_seconds
        self._call_deadline = call_deadline_seconds
        self._max_held = max_held
        self._record_event = redis.register_script(script_source("record_event"))
        self._record_submission = redis.register_script(script_source("record_submission"))
        self._hold_outcome = redis.register_script(script_source("hold_outcome"))

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls(
            connect_redis(settings),
            prefix=settings.key_prefix,
            stream_maxlen=settings.stream_maxlen,
            dedup_ttl_seconds=settings.dedup_ttl_seconds,
            partitions=settings.partitions,
            max_held=settings.max_held_outcomes,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
        )

    async def close(self) -> None:
        await self._scripts.aclose()
        await self.redis.aclose()

    async def ensure_ready(self) -> None:
        """Redis takes writes now, in every partition, is recent enough, has the scripts
        (loading any it lost), and on a cluster holds this deployment's number of partitions.

        The probe is a real write, so a Redis that answers but refuses to store (maxmemory with
        noeviction, a read-only replica after a failover, MISCONF) is not ready. It is a SET
        with NX and GET, as batch lines are claimed, which Redis older than 7.0 refuses.
        """
        scripts: list[AsyncScript] = [
            self._record_event,
            self._record_submission,
            self._hold_outcome,
        ]
        layout = self.layout
        with unavailable():
            loaded = await self.redis.script_exists(*(script.sha for script in scripts))
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys in layout.keys:
                    pipe.set(keys.ready, "1", nx=True, get=True, px=10_000)
                if layout.sharded:
                    pipe.set(layout.partitions_key, layout.partitions, nx=True, get=True)
                replies = await pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, ResponseError):
                    if "syntax error" in str(reply):
                        raise UnsupportedRedis(
                            "Redis 7.0 or newer is required (SET with both NX and GET)"
                        )
                    raise reply
            if layout.sharded and replies[-1] not in (None, str(layout.partitions)):
                raise PartitionsMismatch(
                    f"this Redis Cluster holds {replies[-1]} partitions of key prefix "
                    f"{layout.prefix!r}, and VOD_WEBHOOK_PARTITIONS is {layout.partitions}: "
                    'set it to the same, or migrate (README "Scaling")'
                )
            for script, present in zip(scripts, loaded, strict=True):
                if not present:
                    await self.redis.script_load(script.script)

    async def accept(self, envelope: Envelope, *, verify_outcomes: bool) -> tuple[Recorded, bool]:
        """Record `envelope`, or with VERIFY_OUTCOMES hold it if it is a job outcome (VOD does
        not sign the body: it is published once ListDynamicImage confirms it, webhook/verify.py);
        whether it was held."""
        hold = verify_outcomes and envelope.is_job_outcome and bool(envelope.job_id)
        return await (self.hold(envelope) if hold else self.record(envelope)), hold

    async def record(self, envelope: Envelope) -> Recorded:
        """Record and fan out `envelope` unless its job outcome or event was recorded before."""
        keys, args = self.record_arguments(envelope)
        created, entry_id = await self._call(self._record_event, keys, args)
        return Recorded(id=entry_id, duplicate=not created)

    def record_arguments(self, envelope: Envelope) -> tuple[list[str], list[Any]]:
        """The record_event script's keys (the dedup marker first) and arguments (the job id
        second) for `envelope`."""
        body = envelope.model_dump_json()
        # The script fills in the id; a recorded envelope has one already and is not re-recorded.
        assert body.startswith(_ID_PLACEHOLDER), "envelope already recorded"
        completed = envelope.event_time or envelope.received_at
        if envelope.is_job_outcome and envelope.job_id:
            keys = self.layout.of_job(envelope.job_id)
            mode, marker, job_id = "job", keys.job(envelope.job_id), envelope.job_id
            fields = orjson.dumps(_job_fields(envelope))
        else:
            fingerprint = envelope.fingerprint()
            keys = self.layout.of_event(fingerprint)
            mode, marker, job_id = "event", keys.seen(fingerprint), ""
            fields = b""
        # The channels are derived in the script from the prefix (see Keys): fewer arguments.
        args: list[Any] = [
            mode,
            job_id,
            envelope.status or "",
            _epoch_ms(completed),
            self._dedup_ttl,
            self._stream_maxlen,
            body,
            keys.prefix,
            envelope.event_type,
            fields,
            self.layout.publish,
            self._partition_suffix(keys),
        ]
        return [marker, keys.stream, keys.pending], args

    def _partition_suffix(self, keys: Keys) -> str:
        """What the scripts put after an envelope's stream id (see Layout.qualify)."""
        return self.layout.qualify(keys, "")

    async def hold(self, envelope: Envelope) -> Recorded:
        """Hold a callback's job outcome for verification (VERIFY_OUTCOMES), in one round trip.

        `duplicate` when the job's outcome is recorded already (`id` names it) or this very body
        is held already (`id` is ""). Raises TooManyHeld when `max_held` outcomes are held."""
        assert envelope.job_id, "only a job outcome is held"
        fingerprint = envelope.fingerprint()
        partition = self.layout.of_job(envelope.job_id)
        keys = [
            partition.job(envelope.job_id),
            partition.held(fingerprint),
            partition.verify_queue,
        ]
        args = [fingerprint, envelope.model_dump_json(), self._dedup_ttl, self._max_held]
        held, entry_id = await self._call(self._hold_outcome, keys, args)
        if held < 0:
            raise TooManyHeld(
                f"{self._max_held} outcomes await verification already; nothing was stored, "
                "retry later"
            )
        return Recorded(id=entry_id, duplicate=held == 0)

    async def record_submission(
        self, job_id: str, video_id: str, submission: dict[str, Any], submitted_at: datetime
    ) -> Recorded | None:
        """Correlate a submission with its job; None if this job's submission was recorded before.

        When the job's outcome came first, it is published again with the submission filled
        in, and the returned Recorded names that envelope (id "" while the job is pending). The
        same call counts the submission (`submitted` in the submission stats).
        """
        keys = self.layout.of_job(job_id)
        args: list[Any] = [
            job_id,
            video_id,
            json.dumps(submission, separators=(",", ":")),
            _epoch_ms(submitted_at),
            self._dedup_ttl,
            self._stream_maxlen,
            submission_field("submitted"),
            self.layout.publish,
            self._partition_suffix(keys),
            *keys.job_outcome_channels(job_id),
        ]
        created, entry_id = await self._call(
            self._record_submission,
            [keys.job(job_id), keys.pending, keys.stream, keys.submission_stats],
            args,
        )
        return Recorded(id=entry_id, duplicate=False) if created else None

    async def claim_batch_line(self, fingerprint: str) -> str | None:
        """Claim a batch line for submission; returns what holds it already, if anything
        (`job:<JobId>` once submitted)."""
        key = self.layout.shared.batch_line(fingerprint)
        with unavailable():
            claimed = await self.redis.set(
                key, "claimed", nx=True, ex=BATCH_CLAIM_SECONDS, get=True
            )
        return str(claimed) if claimed is not None else None

    async def complete_batch_line(self, fingerprint: str, job_id: str) -> None:
        with unavailable():
            await self.redis.set(
                self.layout.shared.batch_line(fingerprint), f"job:{job_id}", ex=self._dedup_ttl
            )

    async def release_batch_line(self, fingerprint: str) -> None:
        with unavailable():
            await self.redis.delete(self.layout.shared.batch_line(fingerprint))

    async def job(self, job_id: str) -> dict[str, str] | None:
        """The job's hash, with its `envelope` and `submission` (kept beside it) when present."""
        keys = self.layout.of_job(job_id)
        with unavailable():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(keys.job(job_id))
                pipe.get(keys.job_envelope(job_id))
                pipe.get(keys.job_submission(job_id))
                record, envelope, submission = await pipe.execute()
        job = {str(k): str(v) for k, v in record.items()}
        if job and envelope is not None:
            job["envelope"] = str(envelope)
            job.update(_outcome_fields(Envelope.model_validate_json(job["envelope"])))
        if job and submission is not None:
            job["submission"] = str(submission)
        return job or None

    async def video_ids(self, job_ids: list[str]) -> list[str | None]:
        with unavailable():
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hget(self.layout.of_job(job_id).job(job_id), "video_id")
                values = await pipe.execute()
        return [str(v) if v is not None else None for v in values]

    async def forget_pending(self, job_id: str) -> None:
        with unavailable():
            await self.redis.zrem(self.layout.of_job(job_id).pending, job_id)

    async def held_count(self) -> int:
        """How many outcomes await verification, in every partition."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys in self.layout.keys:
                pipe.zcard(keys.verify_queue)
            return sum(await pipe.execute())

    async def take_turn(self, task: str, token: str, seconds: float) -> bool:
        """Whether it is this caller's turn to run `task`: one caller per `seconds`, any process."""
        key = self.layout.shared.turn(task)
        with unavailable():
            return bool(await self.redis.set(key, token, nx=True, px=int(seconds * 1000)))

    async def pending_jobs(self, submitted_before_ms: int | None = None) -> list[tuple[str, int]]:
        """(job id, submitted ms) of jobs still waiting for an outcome, oldest first."""
        high = "+inf" if submitted_before_ms is None else submitted_before_ms
        with unavailable():
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys in self.layout.keys:
                    pipe.zrangebyscore(keys.pending, "-inf", high, withscores=True)
                replies = await pipe.execute()
        rows = [(str(row[0]), int(row[1])) for reply in replies for row in reply]
        return sorted(rows, key=lambda row: row[1])

    async def _call(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        # The caller's detail names no host or port: it is sent to whoever posted the callback.
        with unavailable("Redis is unavailable, nothing was stored; retry later ({kind})"):
            # Waiting for a pooled connection, the command, and a retry on a fresh connection
            # together could outlast VOD's 5 s: the whole call has one deadline.
            async with asyncio.timeout(self._call_deadline):
                command = ("EVALSHA", script.sha, len(keys), *keys, *args)
                try:
                    return await self._scripts.execute(*command)
                except NoScriptError:  # Redis restarted, or SCRIPT FLUSH
                    await self.redis.script_load(script.script)
                    return await self._scripts.execute(*command)


class ClusterScripts:
    """The scripts' calls on Redis Cluster, each pipelined (see AutoPipeline) on a connection of
    its own to the master of its keys' slot, as the cluster client knows it. A moved slot, a
    failed connection or a cluster that is down has that map read again (once, whoever needs it
    first); a MOVED call is sent again at once, the others fail (503) meanwhile."""

    def __init__(self, redis: RedisCluster, **options: Any) -> None:
        self._redis = redis
        self._options = options
        self._pipelines: dict[str, AutoPipeline] = {}
        self._stale = False
        self._refresh = asyncio.Lock()

    async def execute(self, *args: str | bytes | int | float) -> Any:
        await self._redis.initialize()  # learns the slots on first use; then returns at once
        pipeline = await self._fresh_pipeline(args) if self._stale else self._pipeline(args)
        try:
            return await pipeline.execute(*args)
        except (MovedError, AskError):
            self._stale = True
            return await (await self._fresh_pipeline(args)).execute(*args)
        except (RedisConnectionError, ClusterDownError, MasterDownError, ReadOnlyError):
            self._stale = True
            raise

    async def _fresh_pipeline(self, args: tuple[Any, ...]) -> AutoPipeline:
        async with self._refresh:
            if self._stale:
                await self._redis.nodes_manager.initialize()
                self._stale = False
        return self._pipeline(args)

    def _pipeline(self, args: tuple[Any, ...]) -> AutoPipeline:
        # EVALSHA sha numkeys key ...: every key of a call is in its first key's slot.
        node = self._redis.get_node_from_key(str(args[3]))
        if node is None:
            raise ClusterDownError(f"no master serves the slot of {args[3]}")
        pipeline = self._pipelines.get(node.name)
        if pipeline is None:
            pipeline = self._pipelines[node.name] = AutoPipeline(node, **self._options)
        return pipeline

    async def aclose(self) -> None:
        for pipeline in self._pipelines.values():
            await pipeline.aclose()


class UnsupportedRedis(StoreUnavailable):
    """The server is too old for this project; retrying will not help."""

    code = "unsupported_redis"


class PartitionsMismatch(UnsupportedRedis):
    """The cluster was started with another number of partitions: running on would put jobs
    where the other processes do not look for them."""

    code = "partitions_mismatch"


class TooManyHeld(StoreUnavailable):
    """VOD_WEBHOOK_MAX_HELD_OUTCOMES outcomes await verification: a new one is refused, 503,
    rather than grow Redis without bound (VOD retries; reconciliation recovers what it drops)."""

    code = "too_many_held_outcomes"


class unavailable:
    """Turn a failure to reach or use Redis into StoreUnavailable, the one error that means
    "retry later" (503 over HTTP). `message` may use {error} and {kind}.

    `observer`, when set, hears the kind of each such failure (`failure_kind`): the receiver
    sets it while it runs, to count them (webhook/metrics.py); the commands leave it unset.

    A class rather than a @contextmanager: it wraps every callback's script call, and costs a
    fraction of a generator's set-up."""

    observer: ClassVar[Callable[[str], None] | None] = None

    def __init__(self, message: str = "Redis is unavailable: {error}") -> None:
        self.message = message

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if not isinstance(exc, RedisError | OSError):
            return
        if isinstance(exc, ResponseError) and not _passing(exc):
            # Not Redis being down or full: a bug (a script's, or ours) would hide behind the
            # 503 that VOD retries and then drops.
            logger.error("redis_command_failed", error=str(exc))
        if unavailable.observer is not None:
            unavailable.observer(failure_kind(exc))
        raise StoreUnavailable(self.message.format(error=exc, kind=type(exc).__name__)) from None


def failure_kind(error: RedisError | OSError) -> str:
    """What failed, in a word: `out_of_memory`, `not_replicated` (fewer replicas acknowledged
    the writes than REDIS_WAIT_REPLICAS asks), `busy` (a script running, a dataset loading,
    TRYAGAIN), `timeout`, `connection` (refused, reset, no connection free), or `other`
    (read-only, MISCONF, a refused command)."""
    if isinstance(error, OutOfMemoryError):
        return "out_of_memory"
    if isinstance(error, NotReplicated):
        return "not_replicated"
    if isinstance(error, BusyLoadingError | TryAgainError) or str(error).startswith("BUSY"):
        return "busy"
    if isinstance(error, RedisTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(error, RedisConnectionError | OSError):
        return "connection"
    return "other"


def _passing(refusal: ResponseError) -> bool:
    """Whether Redis refused for a while only: out of memory, read-only, loading, ..."""
    return isinstance(
        refusal,
        OutOfMemoryError
        | ReadOnlyError
        | BusyLoadingError
        | NoScriptError
        | TryAgainError
        | ClusterDownError
        | MasterDownError,
    ) or str(refusal).startswith(("MISCONF", "BUSY", "NOREPLICAS"))


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _job_fields(envelope: Envelope) -> list[str]:
    """The job hash's fields: what the scripts, reconciler and verifier look up. The outcome's
    details are in its envelope, kept beside the hash (see `_outcome_fields`)."""
    values: dict[str, object] = {
        "status": envelope.status,
        "video_id": envelope.video_id,
        "verified": None if envelope.verified is None else str(envelope.verified).lower(),
    }
    present = {key: str(value) for key, value in values.items() if value is not None}
    return [item for pair in present.items() for item in pair]


def _outcome_fields(envelope: Envelope) -> dict[str, str]:
    """The fields of the job record that come from its outcome's envelope."""
    values: dict[str, object] = {
        "source": envelope.source,
        "received_at": utc_text(envelope.received_at),
        "event_time": utc_text(envelope.event_time),
    }
    if envelope.result is not None:
        values.update(envelope.result.model_dump())
    if envelope.error is not None:
        values["error_code"] = envelope.error.code
        values["error_message"] = envelope.error.message
    return {key: str(value) for key, value in values.items() if value is not None}
