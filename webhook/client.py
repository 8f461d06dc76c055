"""What subscribers import: envelopes from the receiver's Redis, as typed objects.

- `subscribe`: live pub/sub (misses what is published while not subscribed);
- `consume`: durable, with a consumer group over the stream: at-least-once, acknowledged after
  the handler returns, reclaimed from crashed consumers, poison entries dead-lettered;
- `replay`: history from the stream;
- `wait_for`: one job's outcome, whenever it came;
- `dead_letters`, `redrive_dead_letters`, `purge_dead_letters` (and the `_all_` ones, from
  webhook.deadletters): what consumer groups gave up on, read, handed back to their group
  once, or deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, cast

import structlog
from pydantic import ValidationError
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# The dead-letter operations, offered here too: a subscriber needs only this module.
from webhook.connection import RedisClient, layout_of
from webhook.deadletters import DeadLetter as DeadLetter
from webhook.deadletters import UnknownDeadLetters as UnknownDeadLetters
from webhook.deadletters import dead_letter as dead_letter
from webhook.deadletters import dead_letters as dead_letters
from webhook.deadletters import purge_all_dead_letters as purge_all_dead_letters
from webhook.deadletters import purge_dead_letters as purge_dead_letters
from webhook.deadletters import redrive_all_dead_letters as redrive_all_dead_letters
from webhook.deadletters import redrive_dead_letters as redrive_dead_letters
from webhook.events import Envelope
from webhook.keys import DEFAULT_PREFIX, Keys
from webhook.pubsub import channels_for, published
from webhook.streams import StreamEntries, merged, read_entries, stream_entries

logger = structlog.get_logger("webhook.client")

TERMINAL_STATUSES = frozenset({"success", "fail", "timed_out"})
# What `--since` and `?since=` take besides a time (see Layout.positions).
POSITION = re.compile(r"\d+(-\d+)?(@\d+)?(,\d+(-\d+)?@\d+)*")
Handler = Callable[[Envelope], Awaitable[None]]


class Routed(Protocol):
    """What the type and job filters look at: an Envelope, or the feed's lenient reading."""

    @property
    def event_type(self) -> str: ...

    @property
    def job_id(self) -> str | None: ...


def matches(envelope: Routed, *, event_type: str | None, job_id: str | None) -> bool:
    return (event_type is None or envelope.event_type == event_type) and (
        job_id is None or envelope.job_id == job_id
    )


async def subscribe(
    redis: RedisClient,
    channel: str | None = None,
    *,
    event_type: str | None = None,
    job_id: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    partitions: int | None = None,
    on_subscribed: Callable[[], Awaitable[None] | None] | None = None,
) -> AsyncIterator[Envelope]:
    """Yield every envelope published from now on, optionally of one type and/or job.

    `on_subscribed` runs once Redis has confirmed the subscription, so nothing published after
    it is missed. Pub/sub is live only: use `consume` to also get what was missed. On Redis
    Cluster `partitions` is the deployment's VOD_WEBHOOK_PARTITIONS (None: as its processes
    recorded it there).
    """
    if channel is not None:
        channels = [channel]
    else:
        layout = await layout_of(redis, prefix, partitions)
        channels = channels_for(layout, event_type=event_type, job_id=job_id)
    async for data in published(redis, channels):
        if data is None:
            if on_subscribed is not None:
                result = on_subscribed()
                if result is not None:
                    await result
            continue
        envelope = Envelope.model_validate_json(data)
        if matches(envelope, event_type=event_type, job_id=job_id):
            yield envelope


async def wait_for(
    redis: RedisClient,
    job_id: str,
    *,
    timeout: float,  # noqa: ASYNC109 - callers think in deadlines; the API takes one
    prefix: str = DEFAULT_PREFIX,
    partitions: int | None = None,
) -> Envelope:
    """The job's outcome envelope, whether it came before or after this call.

    Subscribes first and only then reads the job record, so an outcome published in between is
    not missed. Raises TimeoutError after `timeout` seconds.
    """
    async with asyncio.timeout(timeout):
        keys = (await layout_of(redis, prefix, partitions)).of_job(job_id)
        async for data in published(redis, [keys.job_channel(job_id)]):
            if data is None:
                # Kept beside the job hash (in it, by earlier versions).
                stored = await redis.get(keys.job_envelope(job_id)) or await redis.hget(
                    keys.job(job_id), "envelope"
                )
                if stored:
                    return Envelope.model_validate_json(stored)
            else:
                envelope = Envelope.model_validate_json(data)
                if envelope.status in TERMINAL_STATUSES:
                    return envelope
    raise ConnectionError(f"the subscription to {keys.job_channel(job_id)} ended")


def stream_position(since: str | datetime) -> str:
    """Where to read after: a position as it is (see Layout.positions; `0` for all history),
    or a moment in time."""
    if isinstance(since, datetime):
        return f"{int(since.timestamp() * 1000)}-0"
    if not POSITION.fullmatch(since):
        raise ValueError(f"not a stream id (such as 1732476000000-0) or 0: {since!r}")
    return since


def parse_since(text: str) -> str | datetime:
    """Where `replay` starts, as a person writes it: a stream or envelope id as it is, or an ISO
    8601 time with its time zone. The ValueError's message is worded to follow the option's
    name (`--since 'x' is neither ...`)."""
    if POSITION.fullmatch(text):
        return text
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a stream id nor an ISO time") from None
    if moment.tzinfo is None:
        # Read as local time it would depend on the machine; the stream's ids are UTC.
        raise ValueError("needs a time zone, e.g. 2026-11-24T10:00:00Z")
    return moment


async def replay(
    redis: RedisClient,
    since: str | datetime = "0",
    *,
    event_type: str | None = None,
    job_id: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    partitions: int | None = None,
    page: int = 500,
) -> AsyncIterator[Envelope]:
    """The envelopes still in the stream after `since`, oldest first, optionally filtered.
    With several partitions, each partition's entries come in their order, merged by time.
    An entry that holds no envelope (not written by vod-webhook) is skipped and logged."""
    layout = await layout_of(redis, prefix, partitions)
    starts = zip(layout.keys, layout.positions(stream_position(since)), strict=True)
    reads = [
        stream_entries(redis, keys.stream, after, page)
        for keys, after in starts
        if job_id is None or keys is layout.of_job(job_id)  # a job's envelopes are in its own
    ]
    async for entry_id, body in merged(reads):
        try:
            envelope = Envelope.model_validate_json(body) if body is not None else None
        except ValidationError:
            envelope = None
        if envelope is None:
            logger.warning("replay_entry_skipped", id=entry_id, detail="not an envelope")
        elif matches(envelope, event_type=event_type, job_id=job_id):
            yield envelope


@dataclass(frozen=True)
class ConsumerOptions:
    start: Literal["beginning", "now"] = "now"
    """Where a new group starts reading; an existing group carries on where it was."""
    claim_idle_seconds: float = 60.0
    """An entry delivered this long ago and not acknowledged is taken over (its consumer
    crashed, or its handler failed)."""
    max_deliveries: int = 5
    """An entry whose handler failed this many times goes to the dead-letter stream."""
    batch: int = 16
    block_seconds: float = 1.0
    reconnect_seconds: float = 60.0
    """How long to keep retrying, once running, while Redis cannot be reached (a restart,
    a failover) before giving up with the error."""


async def consume(
    redis: RedisClient,
    group: str,
    consumer: str,
    handler: Handler,
    *,
    prefix: str = DEFAULT_PREFIX,
    partitions: int | None = None,
    options: ConsumerOptions | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Hand every envelope of the stream to `handler`, once per group, until `stop` is set.

    With several partitions (Redis Cluster), each partition's stream is read by a loop of its
    own under the same group and consumer names, in its order; `handler` is still called once
    at a time. `partitions` as for `subscribe`.

    Stop it with `stop` rather than by cancelling: redis-py can lose a cancellation that lands
    in a blocking read and then wait for a reply that never comes. It returns within
    `block_seconds` of `stop`, after the entry in hand; entries read but not yet handled stay
    pending for this consumer, which handles them first when it starts again.

    An entry is acknowledged only after `handler` returns, so a crash means redelivery (to this
    consumer when it restarts under the same name, or to a peer after `claim_idle_seconds`).
    An entry whose handler keeps failing is moved, with the error, to `{prefix}:deadletter`;
    an entry that is not an envelope at all is moved there at once. Dead letters redriven to
    this group (`redrive_dead_letters`) come from `{prefix}:redrive:{group}`, which it reads
    beside the stream.

    Redis out of reach at the start raises at once; once running, it is retried for up to
    `reconnect_seconds`. A group that vanished (a Redis restart without persistence, FLUSHALL,
    XGROUP DESTROY) is created again where this consumer had read up to.
    """
    options = options or ConsumerOptions()
    layout = await layout_of(redis, prefix, partitions)
    if layout.partitions > 1:
        handler = _one_at_a_time(handler)
    halt = asyncio.Event()  # set by `stop`, or when any partition's loop ends
    loops = [_ConsumerLoop(redis, keys, group, consumer, handler, options, halt)
             for keys in layout.keys]  # fmt: skip
    for loop in loops:
        await loop.join(_START_IDS[options.start])

    async def run(loop: _ConsumerLoop) -> None:
        try:
            await loop.run()
        finally:
            halt.set()

    async def relay_stop(stop: asyncio.Event) -> None:
        await stop.wait()
        halt.set()

    relay = asyncio.create_task(relay_stop(stop or asyncio.Event()))
    try:
        ended = await asyncio.gather(*(run(loop) for loop in loops), return_exceptions=True)
    finally:
        relay.cancel()
    for outcome in ended:
        if isinstance(outcome, BaseException):
            raise outcome


def _one_at_a_time(handler: Handler) -> Handler:
    """`handler`, called once at a time whichever partition's loop calls it."""
    lock = asyncio.Lock()

    async def handle(envelope: Envelope) -> None:
        async with lock:
            await handler(envelope)

    return handle


_START_IDS = {"now": "$", "beginning": "0"}
# Errors that mean "Redis is out of reach for now": down, or failing over (a cluster without
# a master for some slot, a demoted master refusing writes, a promoted replica still loading).
_UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    TryAgainError,
    MasterDownError,
    ReadOnlyError,
    BusyLoadingError,
)


def _group_lost(error: ResponseError) -> bool:
    # NOGROUP: the group (or its stream) is gone; UNBLOCKED: the stream was deleted while a
    # blocking read waited on it.
    return str(error).startswith(("NOGROUP", "UNBLOCKED"))


class _ConsumerLoop:
    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        group: str,
        consumer: str,
        handler: Handler,
        options: ConsumerOptions,
        stop: asyncio.Event,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.group = group
        self.consumer = consumer
        self.handler = handler
        self.options = options
        self.stop = stop
        self.redrive = keys.redrive(group)
        self.streams = (keys.stream, self.redrive)
        """What the group reads: the stream every group shares, and its own redrive stream."""
        self.position = "0"
        """The group's read position as last known here: where to create it again if lost."""
        self.failures = 0
        """Failures in a row without a successful read since, for the backoff."""

    async def join(self, start: str) -> None:
        """Create the group at `start` unless it exists; learn its read position. On the
        redrive stream it starts at the beginning: what is acknowledged there is deleted, so
        all that stream holds is still to be handled."""
        for stream, at in ((self.keys.stream, start), (self.redrive, "0")):
            try:
                await self.redis.xgroup_create(stream, self.group, id=at, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        for info in await self.redis.xinfo_groups(self.keys.stream):
            if info["name"] == self.group:
                self.position = str(info["last-delivered-id"])

    async def run(self) -> None:
        outage_since: float | None = None
        rejoin = False
        while not self.stop.is_set():
            try:
                if rejoin:
                    await self.join(self.position)
                    logger.warning(
                        "consumer_group_recreated", group=self.group, position=self.position
                    )
                    rejoin = False
                await self.serve()
                return
            except _UNREACHABLE as exc:
                now = time.monotonic()
                if outage_since is None or not self.failures:
                    outage_since = now  # a new outage: the last read worked
                if now - outage_since > self.options.reconnect_seconds:
                    raise
                logger.warning("redis_unavailable", group=self.group, error=repr(exc))
            except ResponseError as exc:
                if not _group_lost(exc):
                    raise
                logger.warning("consumer_group_lost", group=self.group, error=str(exc))
                rejoin = True
            self.failures += 1
            # The first retry is quick (a lost group is recreated at once); then back off, so
            # a Redis that stays away or a group that keeps vanishing is not hammered.
            delay = min(0.05 * 2 ** (self.failures - 1), 2.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)

    async def serve(self) -> None:
        """Read and handle until `stop`; a failure of Redis or of the group propagates."""
        for stream in self.streams:
            await self.finish_own(stream)
        idle_ms, batch = int(self.options.claim_idle_seconds * 1000), self.options.batch
        while not self.stop.is_set():
            for stream in self.streams:
                _, claimed, *_ = await self.redis.xautoclaim(
                    stream, self.group, self.consumer, idle_ms, start_id="0-0", count=batch
                )
                await self.handle_all(stream, cast(StreamEntries, claimed))
            if self.stop.is_set():
                return
            reply = await self.redis.xreadgroup(
                self.group,
                self.consumer,
                dict.fromkeys(self.streams, ">"),
                count=batch,
                block=int(self.options.block_seconds * 1000),
            )
            self.failures = 0
            for stream, fresh in cast(list[tuple[str, StreamEntries]], reply or []):
                if stream == self.keys.stream and fresh:
                    self.position = fresh[-1][0]
                await self.handle_all(stream, fresh)

    async def finish_own(self, stream: str) -> None:
        """Handle what this consumer was given before from `stream` and never acknowledged (it
        stopped, or lost Redis, meanwhile), a page at a time."""
        after = "0"
        while not self.stop.is_set():
            own = read_entries(
                await self.redis.xreadgroup(
                    self.group, self.consumer, {stream: after}, count=self.options.batch
                )
            )
            self.failures = 0
            await self.handle_all(stream, own)
            if len(own) < self.options.batch:
                return
            after = own[-1][0]

    async def handle_all(self, stream: str, entries: StreamEntries) -> None:
        for entry_id, fields in entries:
            if self.stop.is_set():
                return  # the rest stay pending for this consumer
            await self.handle(stream, entry_id, fields)

    async def handle(self, stream: str, entry_id: str, fields: dict[str, str] | None) -> None:
        if not fields:
            # Trimmed from the stream while pending (redis-py reads it as no fields; XADD never
            # writes an entry without any): nothing is left to handle or to dead-letter.
            logger.warning("pending_entry_trimmed", id=entry_id, group=self.group)
            await self.acknowledge(stream, entry_id)
            return
        try:
            envelope = Envelope.model_validate_json(fields["envelope"])
        except (ValidationError, KeyError) as exc:
            # Not an envelope: no number of retries will change that.
            await self.dead_letter(stream, entry_id, fields, exc, 1)
            return
        try:
            await self.handler(envelope)
        except Exception as exc:
            pending = await self.redis.xpending_range(
                stream, self.group, min=entry_id, max=entry_id, count=1
            )
            if not pending:
                # Acknowledged meanwhile (a peer that had claimed it finished it): not ours.
                logger.warning("handler_failed", id=entry_id, error=repr(exc), acknowledged=True)
                return
            deliveries = int(pending[0]["times_delivered"])
            logger.warning("handler_failed", id=entry_id, deliveries=deliveries, error=repr(exc))
            if deliveries >= self.options.max_deliveries:
                await self.dead_letter(stream, entry_id, fields, exc, deliveries)
            return  # left pending: claimed again after claim_idle_seconds
        await self.acknowledge(stream, entry_id)

    async def acknowledge(self, stream: str, entry_id: str) -> None:
        if stream != self.redrive:  # one command: no transaction to set up (nor to break)
            await self.redis.xack(stream, self.group, entry_id)
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            self.let_go(pipe, stream, entry_id)
            await pipe.execute()

    def let_go(self, pipe: Pipeline | ClusterPipeline, stream: str, entry_id: str) -> None:
        """Queue the acknowledgement of an entry; a redriven one, which no other group reads,
        is deleted too (with it, as `pipe` is a transaction)."""
        pipe.xack(stream, self.group, entry_id)
        if stream == self.redrive:
            pipe.xdel(stream, entry_id)

    async def dead_letter(
        self,
        stream: str,
        entry_id: str,
        fields: dict[str, str],
        error: BaseException,
        deliveries: int,
    ) -> None:
        letter: dict[Any, Any] = {
            **fields,  # the envelope; a redriven entry's original_id, redrives and history too
            "original_id": fields.get("original_id", entry_id),
            "group": self.group,
            "consumer": self.consumer,
            "deliveries": str(deliveries),
            "error": "".join(traceback.format_exception_only(error)).strip(),
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.dead_letter, letter)
            self.let_go(pipe, stream, entry_id)
            await pipe.execute()
        logger.error("entry_dead_lettered", id=entry_id, group=self.group, error=repr(error))
