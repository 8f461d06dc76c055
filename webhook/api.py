"""The read API for subscribers over HTTP: `GET /events` (Server-Sent Events) and
`GET /jobs/{job_id}`, behind a bearer token."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from webhook.client import matches, stream_position
from webhook.errors import BadRequest, NotFound, TooManyStreams, Unauthorized
from webhook.feed import Ended, Entry, StreamFeed, Subscription, history
from webhook.settings import Settings
from webhook.store import Store, job_view

logger = structlog.get_logger("webhook.api")

# Entries per read while replaying history: what a replaying connection holds at once (~2 MB
# with the largest envelopes), not a whole 500-entry page per connection.
REPLAY_PAGE = 32


def read_api_routes(settings: Settings, store: Store, feed: StreamFeed) -> list[BaseRoute]:
    assert settings.api_token is not None
    # Digests of equal length are compared, so the time taken reveals nothing of the token,
    # not even its length (compare_digest leaks the lengths of what it compares).
    token = hashlib.sha256(settings.api_token.get_secret_value().encode()).digest()

    def authorize(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        offered = hashlib.sha256(given.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(offered, token):
            raise Unauthorized("send Authorization: Bearer <VOD_WEBHOOK_API_TOKEN>")

    async def events(request: Request) -> Response:
        authorize(request)
        event_type = request.query_params.get("type")
        job_id = request.query_params.get("job")
        since = request.headers.get("last-event-id") or request.query_params.get("since")
        try:
            after = stream_position(since) if since is not None else None
        except ValueError as exc:
            raise BadRequest(f"since / Last-Event-ID: {exc}") from None

        if feed.connections >= settings.max_event_streams:
            raise TooManyStreams(
                f"{settings.max_event_streams} event streams are open on this process; "
                "retry later, or use the stream in Redis directly"
            )

        def wanted(entry: Entry) -> bool:
            if event_type is None and job_id is None:
                return True  # sent as stored, without reading it
            route = entry.route()  # None: not an envelope, skipped (and logged once)
            return route is not None and matches(route, event_type=event_type, job_id=job_id)

        async def stream(live: Subscription) -> AsyncIterator[bytes]:
            # Live entries queue up while history is replayed, so the hand-over loses nothing.
            last = (0, -1)
            if after is not None:
                try:
                    async for entry in history(store.redis, store.keys.stream, after, REPLAY_PAGE):
                        last = entry.order
                        if wanted(entry):
                            yield entry.sse
                except (RedisError, OSError) as exc:
                    logger.warning("events_replay_interrupted", detail=str(exc))
                    return  # the client retries from its Last-Event-ID
            while True:
                try:
                    batch = await live.next()  # at most WRITE_BYTES of events
                except Ended:
                    return  # the client reconnects with Last-Event-ID and catches up
                # One write for up to WRITE_BYTES of events, each encoded once for all clients.
                chunk = [entry.sse for entry in batch if entry.order > last and wanted(entry)]
                if chunk:
                    yield b"".join(chunk)  # one item: joined without a copy

        return _FeedResponse(feed, stream, settings.sse_heartbeat_seconds)

    async def job(request: Request) -> Response:
        authorize(request)
        job_id = request.path_params["job_id"]
        record = await store.job(job_id)
        if record is None:
            raise NotFound(f"no job {job_id} is recorded")
        view: dict[str, Any] = job_view(job_id, record)
        return JSONResponse(view)

    return [
        Route("/events", events, methods=["GET"]),
        Route("/jobs/{job_id}", job, methods=["GET"]),
    ]


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
