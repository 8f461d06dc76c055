"""One follower of the stream per process, feeding every `/events` connection through its own
bounded queue: a slow client is cut off (and resumes from the stream with Last-Event-ID), and
never slows Redis, the receiver or the other clients. On shutdown every feed is ended, so the
server's drain is not held up by streams that never end by themselves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import cast

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from webhook.store import StreamEntries, read_entries

logger = structlog.get_logger("webhook.feed")

Entry = tuple[str, str]  # (stream id, envelope JSON)


class Ended(Exception):
    """The feed ended for this connection: it fell more than its queue behind, or the server
    is shutting down."""


class Subscription:
    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[Entry | None] = asyncio.Queue(size)
        self.ended = False

    def offer(self, entry: Entry) -> None:
        if self.ended:
            return
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.end()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        # Room for the marker: drop what this connection will not be sent any more.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def next(self) -> Entry:
        entry = await self._queue.get()
        if entry is None:
            raise Ended
        return entry


class StreamFeed:
    def __init__(self, redis: Redis, stream: str, *, queue_size: int) -> None:
        self._redis = redis
        self._stream = stream
        self._queue_size = queue_size
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    def close(self) -> None:
        """End every connection's feed, now and from now on."""
        self._closed = True
        for subscription in self._subscriptions:
            subscription.end()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    @asynccontextmanager
    async def subscription(self) -> AsyncIterator[Subscription]:
        subscription = Subscription(self._queue_size)
        if self._closed:
            subscription.end()
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)

    async def _follow(self) -> None:
        last: str | None = None
        while True:
            try:
                if last is None:
                    newest = cast(StreamEntries, await self._redis.xrevrange(self._stream, count=1))
                    last = newest[0][0] if newest else "0-0"
                # Short blocks keep each call inside the client's socket timeout.
                answer = await self._redis.xread({self._stream: last}, count=500, block=1000)
                for entry_id, fields in read_entries(answer):
                    last = entry_id
                    body = fields.get("envelope")
                    if not isinstance(body, str):
                        logger.warning("feed_entry_skipped", id=entry_id, detail="no envelope")
                        continue
                    for subscription in list(self._subscriptions):
                        subscription.offer((entry_id, body))
            except (RedisError, OSError) as exc:
                logger.warning("feed_interrupted", detail=str(exc))
                await asyncio.sleep(1)
            except Exception:
                # Whatever it was, every /events client depends on this loop going on.
                logger.exception("feed_failed")
                await asyncio.sleep(1)
