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
from sse_starlette import ServerSentEvent

from webhook.events import Envelope
from webhook.store import StreamEntries, read_entries

logger = structlog.get_logger("webhook.feed")

# Under load the follower hands entries over in rounds at most this often: each `/events`
# connection then costs one wake-up and one write per round, not per envelope, so the read API's
# share of the CPU stays bounded however fast callbacks arrive (latency cost: up to this much).
ROUND_SECONDS = 0.05


class Entry:
    """One stream entry, shared by every connection: parsed and encoded at most once."""

    __slots__ = ("_envelope", "_sse", "body", "id", "order")

    def __init__(self, entry_id: str, body: str) -> None:
        self.id = entry_id
        self.body = body
        milliseconds, _, sequence = entry_id.partition("-")
        self.order = (int(milliseconds), int(sequence or 0))
        self._envelope: Envelope | None = None
        self._sse: bytes | None = None

    def envelope(self) -> Envelope:
        if self._envelope is None:
            self._envelope = Envelope.model_validate_json(self.body)
        return self._envelope

    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = ServerSentEvent(data=self.body, id=self.id).encode()
        return self._sse


class Ended(Exception):
    """The feed ended for this connection: it fell more than its queue behind, or the server
    is shutting down."""


class Subscription:
    def __init__(self, size: int) -> None:
        self._size = size
        self._pending: list[Entry] = []
        self._ready = asyncio.Event()
        self.ended = False

    def offer(self, entries: list[Entry]) -> None:
        if self.ended:
            return
        if len(self._pending) + len(entries) > self._size:
            self.end()
            return
        self._pending += entries
        self._ready.set()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self._pending = []  # what this connection will not be sent any more
        self._ready.set()

    async def next(self) -> list[Entry]:
        """Every entry that arrived since the last call (waits for at least one)."""
        while not self._pending and not self.ended:
            self._ready.clear()
            await self._ready.wait()
        if self.ended:
            raise Ended
        batch, self._pending = self._pending, []
        return batch


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

    @property
    def connections(self) -> int:
        return len(self._subscriptions)

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
                batch = []
                for entry_id, fields in read_entries(answer):
                    last = entry_id
                    body = fields.get("envelope")
                    if not isinstance(body, str):
                        logger.warning("feed_entry_skipped", id=entry_id, detail="no envelope")
                        continue
                    batch.append(Entry(entry_id, body))
                if batch:
                    for subscription in list(self._subscriptions):
                        subscription.offer(batch)
                    await asyncio.sleep(ROUND_SECONDS)
            except (RedisError, OSError) as exc:
                logger.warning("feed_interrupted", detail=str(exc))
                await asyncio.sleep(1)
            except Exception:
                # Whatever it was, every /events client depends on this loop going on.
                logger.exception("feed_failed")
                await asyncio.sleep(1)
