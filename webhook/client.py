"""What subscribers import: envelopes from the receiver's Redis, as typed objects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from redis.asyncio import Redis

from webhook.events import Envelope


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
