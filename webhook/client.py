"""What subscribers import: envelopes from the receiver's Redis, as typed objects.

- `subscribe`: live pub/sub (misses what is published while not subscribed);
- `consume`: durable, with a consumer group over the stream: at-least-once, acknowledged after
  the handler returns, reclaimed from crashed consumers, poison entries dead-lettered;
- `replay`: history from the stream;
- `wait_for`: one job's outcome, whenever it came.
"""

from __future__ import annotations

import asyncio
import re
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

import structlog
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from webhook.events import Envelope
from webhook.store import Keys, StreamEntries, read_entries

logger = structlog.get_logger("webhook.client")

TERMINAL_STATUSES = frozenset({"success", "fail", "timed_out"})
STREAM_ID = re.compile(r"\d+(-\d+)?")
Handler = Callable[[Envelope], Awaitable[None]]


def channel_for(keys: Keys, *, event_type: str | None = None, job_id: str | None = None) -> str:
    """The narrowest channel carrying what the filters ask for."""
    if job_id is not None:
        return keys.job_channel(job_id)
    if event_type is not None:
        return keys.type_channel(event_type)
    return keys.events_channel


def matches(envelope: Envelope, *, event_type: str | None, job_id: str | None) -> bool:
    return (event_type is None or envelope.event_type == event_type) and (
        job_id is None or envelope.job_id == job_id
    )


async def subscribe(
    redis: Redis,
    channel: str | None = None,
    *,
    event_type: str | None = None,
    job_id: str | None = None,
    prefix: str = "vod",
    on_subscribed: Callable[[], Awaitable[None] | None] | None = None,
) -> AsyncIterator[Envelope]:
    """Yield every envelope published from now on, optionally of one type and/or job.

    `on_subscribed` runs once Redis has confirmed the subscription, so nothing published after
    it is missed. Pub/sub is live only: use `consume` to also get what was missed.
    """
    channel = channel or channel_for(Keys(prefix), event_type=event_type, job_id=job_id)
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        async for message in pubsub.listen():
            if message["type"] == "subscribe":
                if on_subscribed is not None:
                    result = on_subscribed()
                    if result is not None:
                        await result
            elif message["type"] == "message":
                envelope = Envelope.model_validate_json(message["data"])
                if matches(envelope, event_type=event_type, job_id=job_id):
                    yield envelope


async def wait_for(
    redis: Redis,
    job_id: str,
    *,
    timeout: float,  # noqa: ASYNC109 - callers think in deadlines; the API takes one
    prefix: str = "vod",
) -> Envelope:
    """The job's outcome envelope, whether it came before or after this call.

    Subscribes first and only then reads the job record, so an outcome published in between is
    not missed. Raises TimeoutError after `timeout` seconds.
    """
    keys = Keys(prefix)
    async with asyncio.timeout(timeout), redis.pubsub() as pubsub:
        await pubsub.subscribe(keys.job_channel(job_id))
        async for message in pubsub.listen():
            if message["type"] == "subscribe":
                stored = await redis.hget(keys.job(job_id), "envelope")
                if stored:
                    return Envelope.model_validate_json(stored)
            elif message["type"] == "message":
                envelope = Envelope.model_validate_json(message["data"])
                if envelope.status in TERMINAL_STATUSES:
                    return envelope
    raise ConnectionError(f"the subscription to {keys.job_channel(job_id)} ended")


def stream_position(since: str | datetime) -> str:
    """A stream id to read after: an id as it is (`0` for all history), or a moment in time."""
    if isinstance(since, datetime):
        return f"{int(since.timestamp() * 1000)}-0"
    if not STREAM_ID.fullmatch(since):
        raise ValueError(f"not a stream id (such as 1732476000000-0) or 0: {since!r}")
    return since


async def replay(
    redis: Redis,
    since: str | datetime = "0",
    *,
    event_type: str | None = None,
    job_id: str | None = None,
    prefix: str = "vod",
    page: int = 500,
) -> AsyncIterator[Envelope]:
    """The envelopes still in the stream after `since`, oldest first, optionally filtered."""
    async for _, body in stream_entries(redis, Keys(prefix).stream, stream_position(since), page):
        envelope = Envelope.model_validate_json(body)
        if matches(envelope, event_type=event_type, job_id=job_id):
            yield envelope


async def stream_entries(
    redis: Redis, stream: str, after: str, page: int = 500
) -> AsyncIterator[tuple[str, str]]:
    """(id, envelope JSON) of the entries after `after`, oldest first, read a page at a time."""
    while True:
        entries = cast(StreamEntries, await redis.xrange(stream, f"({after}", "+", count=page))
        for entry_id, fields in entries:
            yield entry_id, fields["envelope"]
        if len(entries) < page:
            return
        after = entries[-1][0]


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


async def consume(
    redis: Redis,
    group: str,
    consumer: str,
    handler: Handler,
    *,
    prefix: str = "vod",
    options: ConsumerOptions | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Hand every envelope of the stream to `handler`, once per group, until `stop` is set.

    Stop it with `stop` rather than by cancelling: redis-py can lose a cancellation that lands
    in a blocking read and then wait for a reply that never comes. It returns within
    `block_seconds` of `stop`, after the entry in hand.

    An entry is acknowledged only after `handler` returns, so a crash means redelivery (to this
    consumer when it restarts under the same name, or to a peer after `claim_idle_seconds`).
    An entry whose handler keeps failing is moved, with the error, to `{prefix}:deadletter`.
    """
    options = options or ConsumerOptions()
    keys = Keys(prefix)
    try:
        await redis.xgroup_create(
            keys.stream, group, id="$" if options.start == "now" else "0", mkstream=True
        )
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    # First what this consumer was given before and never acknowledged (it stopped meanwhile).
    own = await redis.xreadgroup(group, consumer, {keys.stream: "0"}, count=10_000)
    await _handle_all(redis, keys, group, consumer, handler, options, read_entries(own))
    idle_ms = int(options.claim_idle_seconds * 1000)
    stop = stop or asyncio.Event()
    while not stop.is_set():
        _, claimed, *_ = await redis.xautoclaim(
            keys.stream, group, consumer, min_idle_time=idle_ms, start_id="0-0", count=options.batch
        )
        await _handle_all(
            redis, keys, group, consumer, handler, options, cast(StreamEntries, claimed)
        )
        fresh = await redis.xreadgroup(
            group,
            consumer,
            {keys.stream: ">"},
            count=options.batch,
            block=int(options.block_seconds * 1000),
        )
        await _handle_all(redis, keys, group, consumer, handler, options, read_entries(fresh))


async def _handle_all(
    redis: Redis,
    keys: Keys,
    group: str,
    consumer: str,
    handler: Handler,
    options: ConsumerOptions,
    entries: StreamEntries,
) -> None:
    for entry_id, fields in entries:
        if fields is None:  # trimmed from the stream while pending
            await redis.xack(keys.stream, group, entry_id)
            continue
        try:
            await handler(Envelope.model_validate_json(fields["envelope"]))
        except (ValidationError, KeyError) as exc:
            await _dead_letter(redis, keys, group, consumer, entry_id, fields, exc, deliveries=1)
            continue
        except Exception as exc:
            pending = await redis.xpending_range(
                keys.stream, group, min=entry_id, max=entry_id, count=1
            )
            deliveries = int(pending[0]["times_delivered"]) if pending else options.max_deliveries
            logger.warning("handler_failed", id=entry_id, deliveries=deliveries, error=repr(exc))
            if deliveries >= options.max_deliveries:
                await _dead_letter(redis, keys, group, consumer, entry_id, fields, exc, deliveries)
            continue  # left pending: claimed again after claim_idle_seconds
        await redis.xack(keys.stream, group, entry_id)


async def _dead_letter(
    redis: Redis,
    keys: Keys,
    group: str,
    consumer: str,
    entry_id: str,
    fields: dict[str, str],
    error: BaseException,
    deliveries: int,
) -> None:
    entry: dict[Any, Any] = {
        **fields,
        "original_id": entry_id,
        "group": group,
        "consumer": consumer,
        "deliveries": str(deliveries),
        "error": "".join(traceback.format_exception_only(error)).strip(),
    }
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.dead_letter, entry)
        pipe.xack(keys.stream, group, entry_id)
        await pipe.execute()
    logger.error("entry_dead_lettered", id=entry_id, group=group, error=repr(error))
