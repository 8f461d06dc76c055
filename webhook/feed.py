"""One follower of each partition's stream per process, feeding every `/events` connection
through its own bounded queue: a slow client is cut off (and resumes from the streams with
Last-Event-ID), and never slows Redis, the receiver or the other clients. On shutdown every feed
is ended, so the server's drain is not held up by streams that never end by themselves.

Order: each partition's entries come in their stream's order; entries of different partitions
(several only on Redis Cluster) are interleaved as the followers read them, by arrival. An
event's id says where the connection is in every partition's stream (see StreamFeed), so a
client that resumes with it gets exactly what it has not had, whatever the interleaving.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import TypeVar, cast

import structlog
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError
from sse_starlette import ServerSentEvent

from webhook.connection import RedisClient
from webhook.keys import Keys, Layout
from webhook.metrics import Metrics
from webhook.streams import StreamEntries, merged, read_entries, stream_entries

logger = structlog.get_logger("webhook.feed")
T = TypeVar("T")

# Under load the follower hands entries over in rounds at most this often: each `/events`
# connection then costs one wake-up and one write per round, not per envelope, so the read API's
# share of the CPU stays bounded however fast callbacks arrive (latency cost: up to this much).
ROUND_SECONDS = 0.05
# Entries per read of the stream: with the largest envelopes (2 x 64 KiB each, cached) one
# round holds ~13 MB, once per process, shared by every connection.
ROUND_ENTRIES = 100
# The most one connection hands the server in one write: what sits unsent in its transport,
# and what it copies (uvicorn copies each write to frame it), stays this small.
WRITE_BYTES = 256 * 1024


class Route(BaseModel):
    """What the `/events` filters look at. Read leniently, so that an envelope of a newer
    receiver (a `source` this one does not know) still reaches the streams that want it."""

    event_type: str
    job_id: str | None = None


class Entry:
    """One stream entry, shared by every connection: encoded, and routed, at most once. `id` is
    its envelope's id (`<stream id>@<partition>` with several partitions), `event_id` the id
    its Server-Sent Event carries (the envelope's id unless told)."""

    __slots__ = ("_route", "_routed", "body", "event_id", "id", "order", "partition", "size", "sse")

    def __init__(
        self, envelope_id: str, body: str, partition: int = 0, event_id: str | None = None
    ) -> None:
        self.id = envelope_id
        self.body = body
        self.partition = partition
        self.order = order_of(envelope_id.partition("@")[0])
        self.event_id = event_id or envelope_id
        self.sse = encode_event(self.event_id, body)
        # What this entry keeps alive: its text and its encoding (ASCII-sized, as envelopes
        # almost all are).
        self.size = len(body) + len(self.sse)
        self._route: Route | None = None
        self._routed = False

    def route(self) -> Route | None:
        """Its type and job, or None (logged once per process) if it is not an envelope."""
        if not self._routed:
            self._routed = True
            try:
                self._route = Route.model_validate_json(self.body)
            except ValidationError as exc:
                unreadable(self.id, f"not an envelope: {exc.errors(include_url=False)[0]['msg']}")
        return self._route


def order_of(entry_id: str) -> tuple[int, int]:
    """A stream id's place in its stream (`5` is `5-0`, as XRANGE reads it)."""
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def encode_event(entry_id: str, data: str) -> bytes:
    """`data` as one Server-Sent Event with this id: what sse_starlette's encoder makes, but
    ~20 times faster for one-line data (every envelope: JSON escapes its line breaks), which
    matters as this runs on the event loop for every entry."""
    if "\n" in data or "\r" in data:
        return ServerSentEvent(data=data, id=entry_id).encode()
    return b"".join((b"id: ", entry_id.encode(), b"\r\ndata: ", data.encode(), b"\r\n\r\n"))


_reported: OrderedDict[str, None] = OrderedDict()


def unreadable(entry_id: str, detail: str) -> None:
    """Log an entry that streams skip, once per process however many of them (live or
    replaying) meet it."""
    if entry_id in _reported:
        return
    _reported[entry_id] = None
    if len(_reported) > 1000:
        _reported.popitem(last=False)
    logger.warning("feed_entry_skipped", id=entry_id, detail=detail)


class Progress:
    """Where one connection is in every partition's stream, and the event ids that say so: each
    names every partition's position as of its event (`Layout.cursor`; the stream id itself with
    one partition), so a client resuming with it misses nothing and gets nothing twice."""

    def __init__(self, layout: Layout, positions: list[str] | None) -> None:
        self.layout = layout
        self.positions = None if positions is None else list(positions)
        """Its own positions, from `since` then its history; None once the feed's are as far,
        or from the start when it only streams live: the feed's event ids are then its own."""

    def advance(self, partition: int, entry_id: str) -> str:
        """Move past a replayed entry; the event id that says so."""
        assert self.positions is not None
        self.positions[partition] = entry_id
        return self.layout.cursor(self.positions)

    def live(self, entry: Entry) -> bytes | None:
        """The event of a live entry for this connection, or None if its history had it."""
        own = self.positions
        if own is None:
            return entry.sse  # the steady state: shared by every connection
        if entry.order <= order_of(own[entry.partition]):
            return None
        feed = self.layout.positions(entry.event_id)
        # Ties go to the feed's (max keeps the first): `5` and `5-0` are one position.
        furthest = [max(theirs, mine, key=order_of) for mine, theirs in zip(own, feed, strict=True)]
        if furthest == feed:
            self.positions = None  # the feed has caught up with what history sent
            return entry.sse
        # Its history read some partition further than the feed has yet: an id of its own.
        self.positions = furthest
        return encode_event(self.layout.cursor(furthest), entry.body)


async def history(redis: RedisClient, progress: Progress, page: int) -> AsyncIterator[Entry]:
    """The entries after `progress` in every partition, merged oldest first by id, each moving
    `progress` on; `page` entries at a time are read in all (what a replaying connection holds
    at once). Those without an envelope are skipped."""
    layout, positions = progress.layout, progress.positions
    assert positions is not None
    per_read = max(page // layout.partitions, 1)
    reads = [_partition_entries(redis, keys, after, per_read)
             for keys, after in zip(layout.keys, positions, strict=True)]  # fmt: skip
    async for entry_id, (keys, body) in merged(reads):
        event_id = progress.advance(keys.partition, entry_id)
        envelope_id = layout.qualify(keys, entry_id)
        if body is None:
            unreadable(envelope_id, "no envelope")
        else:
            yield Entry(envelope_id, body, keys.partition, event_id)


async def _partition_entries(
    redis: RedisClient, keys: Keys, after: str, page: int
) -> AsyncIterator[tuple[str, tuple[Keys, str | None]]]:
    """A partition's entries after `after`, each with its partition (for `merged`)."""
    async for entry_id, body in stream_entries(redis, keys.stream, after, page):
        yield entry_id, (keys, body)


class Ended(Exception):
    """The feed ended for this connection: it fell more than its queue behind, or the server
    is shutting down (Subscription.end_reason says which)."""


class Subscription:
    """One connection's queue, bounded in entries and in bytes. Its entries are shared with
    every other connection, so all the queues together hold no more than the longest one."""

    def __init__(self, size: int, max_bytes: int) -> None:
        self._size = size
        self._max_bytes = max_bytes
        self._pending: deque[Entry] = deque()
        self.queued_bytes = 0
        self._ready = asyncio.Event()
        self.ended = False
        self.end_reason: str | None = None

    @property
    def queued(self) -> int:
        return len(self._pending)

    def offer(self, entries: list[Entry]) -> None:
        if self.ended:
            return
        added = sum(entry.size for entry in entries)
        # An empty queue takes a whole round, so a client that keeps up is never cut off by a
        # burst: the round is in memory anyway, shared.
        if self._pending and (
            len(self._pending) + len(entries) > self._size
            or self.queued_bytes + added > self._max_bytes
        ):
            logger.info(
                "events_client_behind",
                queued=len(self._pending) + len(entries),
                queued_bytes=self.queued_bytes + added,
                detail="disconnected; it resumes from the stream with Last-Event-ID",
            )
            self.end("lagging")
            return
        self._pending.extend(entries)
        self.queued_bytes += added
        self._ready.set()

    def end(self, reason: str) -> None:
        """End this connection's feed, for `reason` (one of metrics.SSE_DISCONNECT_REASONS)."""
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        self._pending.clear()  # never to be sent now
        self.queued_bytes = 0
        self._ready.set()

    async def next(self, max_bytes: int = WRITE_BYTES) -> list[Entry]:
        """The oldest entries not yet taken, as many as fit in `max_bytes` of SSE (at least
        one); waits for one."""
        while not self._pending and not self.ended:
            self._ready.clear()
            await self._ready.wait()
        if self.ended:
            raise Ended
        taken = [self._pending.popleft()]
        encoded = len(taken[0].sse)
        while self._pending and encoded + len(self._pending[0].sse) <= max_bytes:
            taken.append(self._pending.popleft())
            encoded += len(taken[-1].sse)
        self.queued_bytes -= sum(entry.size for entry in taken)
        return taken


class StreamFeed:
    """Every partition's new entries, handed to every connection in one sequence: each partition
    in its stream's order, the partitions interleaved by arrival. Each entry's event id is the
    cursor of every partition's position as of it in that sequence (its stream id with one
    partition), the same for every connection that streams live."""

    def __init__(
        self,
        redis: RedisClient,
        layout: Layout,
        *,
        queue_size: int,
        queue_bytes: int,
        metrics: Metrics,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._layout = layout
        self._queue_size = queue_size
        self._queue_bytes = queue_bytes
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._stopping = False
        self._positions: list[str] = []
        """The last entry read of each partition's stream, once known."""
        self._following = asyncio.Event()
        """Set once every partition's position is known, or the feed closed."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    def close(self) -> None:
        """End every connection's feed, now and from now on."""
        self._closed = True
        self._following.set()  # no connection waits for a feed that will not come
        for subscription in self._subscriptions:
            subscription.end("shutdown")

    async def stop(self) -> None:
        # Checked by the followers too: redis-py can lose a cancellation that lands in a
        # blocking read, and a follower would then read on for ever.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    @property
    def connections(self) -> int:
        return len(self._subscriptions)

    @asynccontextmanager
    async def subscription(self) -> AsyncIterator[Subscription]:
        """A connection's queue of live entries. Only once the feed follows every partition
        (just after start-up; longer while Redis cannot be reached): an entry recorded before
        that but after the caller's replay would reach it neither way."""
        subscription = Subscription(self._queue_size, self._queue_bytes)
        if self._closed:
            subscription.end("shutdown")
        self._subscriptions.add(subscription)
        self._metrics.stream_opened()
        try:
            await self._following.wait()
            yield subscription
        finally:
            self._subscriptions.discard(subscription)
            # Not ended by the feed: the client went away (or was cut off for not reading).
            self._metrics.stream_closed(subscription.end_reason or "client_closed")

    async def _follow(self) -> None:
        """Learn where each partition's stream ends (every event id names them all), then follow
        each one with a task of its own: on a cluster one read names one slot's keys only."""
        for keys in self._layout.keys:
            newest = await self._retried(partial(self._newest, keys))
            if newest is None:
                return  # stopped
            self._positions.append(newest)
        self._following.set()
        await asyncio.gather(*(self._follow_partition(keys) for keys in self._layout.keys))

    async def _newest(self, keys: Keys) -> str:
        newest = cast(StreamEntries, await self._redis.xrevrange(keys.stream, count=1))
        return newest[0][0] if newest else "0-0"

    async def _follow_partition(self, keys: Keys) -> None:
        while not self._stopping:
            await self._retried(partial(self._read_round, keys))

    async def _retried(self, step: Callable[[], Awaitable[T]]) -> T | None:
        """What `step` returns, retried every second until it does (every /events client
        depends on the feed going on); None once the feed is stopped."""
        while not self._stopping:
            try:
                return await step()
            except (RedisError, OSError) as exc:
                logger.warning("feed_interrupted", detail=str(exc))
            except Exception:
                # Whatever it was, the feed must go on.
                logger.exception("feed_failed")
            await asyncio.sleep(1)
        return None

    async def _read_round(self, keys: Keys) -> None:
        """Read what came after the partition's last entry, and hand it to every connection."""
        partition, layout, positions = keys.partition, self._layout, self._positions
        # Short blocks keep each call inside the client's socket timeout.
        answer = await self._redis.xread(
            {keys.stream: positions[partition]}, count=ROUND_ENTRIES, block=1000
        )
        entries = read_entries(answer)
        # No await from here to the offer: the positions each event id names are the feed's.
        batch = []
        for entry_id, fields in entries:
            positions[partition] = entry_id
            if not self._subscriptions:
                continue  # nobody to encode it for
            envelope_id = layout.qualify(keys, entry_id)
            body = fields.get("envelope")
            if not isinstance(body, str):
                unreadable(envelope_id, "no envelope")
                continue
            batch.append(Entry(envelope_id, body, partition, layout.cursor(positions)))
        if batch:
            for subscription in list(self._subscriptions):
                subscription.offer(batch)
            if len(entries) < ROUND_ENTRIES:  # else behind: no time to wait
                await asyncio.sleep(ROUND_SECONDS)
