"""What subscribers import: envelopes from the receiver's Redis, as typed objects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from redis.asyncio import Redis

from webhook.events import Envelope
from webhook.store import Keys


async def subscribe(
    redis: Redis,
    channel: str,
    *,
    on_subscribed: Callable[[], Awaitable[None] | None] | None = None,
) -> AsyncIterator[Envelope]:
    """Yield every envelope published on `channel` from now on (pub/sub: live only).

    `on_subscribed` runs once Redis has confirmed the subscription, so nothing published after
    it is missed.
    """
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        async for message in pubsub.listen():
            if message["type"] == "subscribe":
                if on_subscribed is not None:
                    result = on_subscribed()
                    if result is not None:
                        await result
                continue
            if message["type"] == "message":
                yield Envelope.model_validate_json(message["data"])


TERMINAL_STATUSES = frozenset({"success", "fail", "timed_out"})


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
