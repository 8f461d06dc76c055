"""The read API for subscribers over HTTP: `GET /events` (Server-Sent Events) and
`GET /jobs/{job_id}`, behind a bearer token."""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from webhook.client import stream_entries, stream_position
from webhook.errors import BadRequest, NotFound, Unauthorized
from webhook.feed import Ended, StreamFeed
from webhook.settings import Settings
from webhook.store import Store, job_view


def read_api_routes(settings: Settings, store: Store, feed: StreamFeed) -> list[BaseRoute]:
    assert settings.api_token is not None
    token = settings.api_token.get_secret_value().encode()

    def authorize(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
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

        def wanted(body: str) -> bool:
            if event_type is None and job_id is None:
                return True
            envelope = json.loads(body)
            return (event_type is None or envelope["event_type"] == event_type) and (
                job_id is None or envelope["job_id"] == job_id
            )

        async def stream() -> AsyncIterator[ServerSentEvent]:
            # Live entries queue up while history is replayed, so the hand-over loses nothing.
            async with feed.subscription() as live:
                last = (0, -1)
                if after is not None:
                    async for entry_id, body in stream_entries(
                        store.redis, store.keys.stream, after
                    ):
                        last = _order(entry_id)
                        if wanted(body):
                            yield ServerSentEvent(data=body, id=entry_id)
                while True:
                    try:
                        entry_id, body = await live.next()
                    except Ended:
                        return  # the client reconnects with Last-Event-ID and catches up
                    if _order(entry_id) > last and wanted(body):
                        yield ServerSentEvent(data=body, id=entry_id)

        return EventSourceResponse(stream(), ping=settings.sse_heartbeat_seconds)

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


def _order(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)
