"""What is published on channels, from one Redis or from a cluster's shards (light: redis only).

On one server the channels are read over one classic subscription. On Redis Cluster the scripts
publish on shard channels (SPUBLISH), each served by the master of its slot: each channel is
read over a sharded subscription of its own (redis-py's ClusterPubSub, which follows the slot
to a new master after a failover or resharding), all at once, into one bounded queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

from webhook.connection import RedisClient
from webhook.keys import Layout

# How long one pub/sub read waits before looking again; it ends nothing.
PUBSUB_POLL_SECONDS = 1.0
# Messages read from the shards and not yet taken: beyond, the readers wait, Redis buffers, and
# a subscriber that stays behind is disconnected by Redis's own limit (as on one server).
_SHARD_QUEUE = 1000


def channels_for(
    layout: Layout, *, event_type: str | None = None, job_id: str | None = None
) -> list[str]:
    """The narrowest channels carrying what the filters ask for: the job's one, else those of
    the type (or of every event) in each partition."""
    if job_id is not None:
        return [layout.of_job(job_id).job_channel(job_id)]
    if event_type is not None:
        return [keys.type_channel(event_type) for keys in layout.keys]
    return [keys.events_channel for keys in layout.keys]


async def published(redis_client: RedisClient, channels: list[str]) -> AsyncIterator[str | None]:
    """None once every channel's subscription is confirmed, then each message's data as it
    comes. Sharded on a cluster (see the module's doc)."""
    if isinstance(redis_client, RedisCluster):
        messages = _shard_messages(redis_client, channels)
    else:
        messages = _server_messages(redis_client, channels)
    confirmed = 0
    async for kind, data in messages:
        if kind in ("subscribe", "ssubscribe"):
            confirmed += 1
            if confirmed == len(channels):
                yield None
        elif kind in ("message", "smessage"):
            yield str(data)


async def _server_messages(
    redis_client: RedisClient, channels: list[str]
) -> AsyncIterator[tuple[str, Any]]:
    async with redis_client.pubsub() as pubsub:
        await pubsub.subscribe(*channels)
        async for message in _messages(pubsub):
            yield message["type"], message["data"]


async def _messages(pubsub: PubSub) -> AsyncIterator[dict[str, Any]]:
    """What `pubsub.listen()` yields, read with a timeout of its own: redis-py before 8.0.1
    applies the socket timeout to listen's blocking read, so a channel quiet for 2 s ended
    `listen` and `submit --wait` with TimeoutError. A read that times out on its own timeout
    returns None instead, on every version."""
    while pubsub.subscribed:
        message = await pubsub.get_message(timeout=PUBSUB_POLL_SECONDS)
        if message is not None:
            yield message


async def _shard_messages(
    cluster: RedisCluster, channels: list[str]
) -> AsyncIterator[tuple[str, Any]]:
    await cluster.initialize()  # the slots, to find each channel's master
    queue: asyncio.Queue[tuple[str, Any] | BaseException] = asyncio.Queue(_SHARD_QUEUE)

    async def read(channel: str) -> None:
        try:
            pubsub = cluster.pubsub()
            try:
                await pubsub.ssubscribe(channel)
                while True:
                    message = await pubsub.get_sharded_message(timeout=PUBSUB_POLL_SECONDS)
                    if message is not None:
                        await queue.put((message["type"], message["data"]))
            finally:
                await pubsub.aclose()
        except Exception as exc:  # handed to the reader, which raises it
            await queue.put(exc)

    readers = [asyncio.create_task(read(channel)) for channel in channels]
    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
