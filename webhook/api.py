"""The read API for subscribers over HTTP: `GET /events` (Server-Sent Events) and
`GET /jobs/{job_id}`, behind a bearer token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from webhook.bearer import BearerToken
from webhook.client import matches, stream_position
from webhook.errors import BadRequest, NotFound, TooManyStreams
from webhook.feed import Ended, Entry, Progress, StreamFeed, Subscription, history, order_of
from webhook.jobs import job_view
from webhook.keys import Layout
from webhook.settings import Settings
from webhook.store import Store

logger = structlog.get_logger("webhook.api")

# Entries per read while replaying history: what a replaying connection holds at once (~2 MB
# with the largest envelopes), not a whole 500-entry page per connection.
REPLAY_PAGE = 32
# What Redis takes in a stream id's parts: more is refused by XRANGE, which would end the stream.
MAX_ID = 2**64 - 1


class ReadApi:
    """`GET /events` and `GET /jobs/{job_id}`, each request authorized by the bearer token."""

    def __init__(self, settings: Settings, store: Store, feed: StreamFeed) -> None:
        assert settings.api_token is not None
        self.token = BearerToken(settings.api_token, "VOD_WEBHOOK_API_TOKEN")
        self.store = store
        self.feed = feed
        self.max_event_streams = settings.max_event_streams
        self.heartbeat_seconds = settings.sse_heartbeat_seconds

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/events", self.events, methods=["GET"]),
            Route("/jobs/{job_id}", self.job, methods=["GET"]),
        ]

    async def events(self, request: Request) -> Response:
        self.token.check(request)
        query = EventsQuery.of(request, self.store.layout)
        if self.feed.connections >= self.max_event_streams:
            raise TooManyStreams(
                f"{self.max_event_streams} event streams are open on this process; "
                "retry later, or use the stream in Redis directly"
            )
        return _FeedResponse(self.feed, partial(self.stream, query), self.heartbeat_seconds)

    async def stream(self, query: EventsQuery, live: Subscription) -> AsyncIterator[bytes]:
        """History after `query.after` in every partition, then live entries: what `query`
        wants of each. Each partition's entries come in order, the partitions interleaved."""
        progress = Progress(self.store.layout, query.after)
        # Live entries queue up while history is replayed, so the hand-over loses nothing.
        if query.after is not None:
            try:
                async for entry in history(self.store.redis, progress, REPLAY_PAGE):
                    if query.wants(entry):
                        yield entry.sse
            except (RedisError, OSError) as exc:
                logger.warning("events_replay_interrupted", detail=str(exc))
                live.end("redis_unavailable")
                return  # the client retries from its Last-Event-ID
        while True:
            try:
                batch = await live.next()  # at most WRITE_BYTES of events
            except Ended:
                return  # the client reconnects with Last-Event-ID and catches up
            # One write for up to WRITE_BYTES of events, each encoded once for all clients
            # (but during the hand-over from history).
            chunk = [
                sse
                for entry in batch
                if (sse := progress.live(entry)) is not None and query.wants(entry)
            ]
            if chunk:
                yield b"".join(chunk)  # one item: joined without a copy

    async def job(self, request: Request) -> Response:
        self.token.check(request)
        job_id = request.path_params["job_id"]
        record = await self.store.job(job_id)
        if record is None:
            raise NotFound(f"no job {job_id} is recorded")
        view: dict[str, Any] = job_view(job_id, record)
        return JSONResponse(view)


@dataclass(frozen=True)
class EventsQuery:
    """What an `/events` request asks for: a type, a job, and where to resume."""

    event_type: str | None
    job_id: str | None
    after: list[str] | None  # each partition's stream id: replay what came after it first

    @classmethod
    def of(cls, request: Request, layout: Layout) -> EventsQuery:
        since = request.headers.get("last-event-id") or request.query_params.get("since")
        try:
            after = layout.positions(stream_position(since)) if since is not None else None
            if after is not None and max(part for at in after for part in order_of(at)) > MAX_ID:
                raise ValueError(f"a stream id's parts are at most {MAX_ID}: {since!r}")
        except ValueError as exc:
            raise BadRequest(f"since / Last-Event-ID: {exc}") from None
        return cls(request.query_params.get("type"), request.query_params.get("job"), after)

    def wants(self, entry: Entry) -> bool:
        if self.event_type is None and self.job_id is None:
            return True  # sent as stored, without reading it
        route = entry.route()  # None: not an envelope, skipped (and logged once)
        return route is not None and matches(route, event_type=self.event_type, job_id=self.job_id)


class _FeedResponse(Response):
    """An event stream that is subscribed to the feed before its first byte goes out (so a
    client that has the headers misses nothing), and always unsubscribed after."""

    def __init__(
        self,
        feed: StreamFeed,
        stream: Callable[[Subscription], AsyncIterator[bytes]],
        heartbeat_seconds: float,
    ) -> None:
        self.feed = feed
        self.stream = stream
        self.heartbeat_seconds = heartbeat_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self.feed.subscription() as live:
            response = EventSourceResponse(self.stream(live), ping=self.heartbeat_seconds)
            await response(scope, receive, send)
