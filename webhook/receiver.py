"""The VOD callback endpoint: verify, read, parse, record, answer (the hot path)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from webhook.errors import (
    BadRequest,
    PayloadError,
    PayloadTooLarge,
    RequestIncomplete,
    WebhookError,
)
from webhook.events import parse_callback
from webhook.metrics import CallbackMetrics
from webhook.settings import Settings
from webhook.signature import verify_signature
from webhook.store import Store

logger = structlog.get_logger("webhook.receiver")


class CallbackReceiver:
    """Receives VOD's callbacks at `settings.callback_path`; a 200 only for what is stored."""

    def __init__(self, settings: Settings, store: Store, metrics: CallbackMetrics) -> None:
        self.store = store
        self.metrics = metrics
        self.auth_keys = [key.get_secret_value() for key in settings.auth_keys]
        self.callback_url = settings.callback_url or ""
        self.max_body_bytes = settings.max_body_bytes
        self.max_skew_seconds = settings.max_skew_seconds
        self.verify_outcomes = settings.verify_outcomes

    async def receive(self, request: Request) -> Response:
        started = time.perf_counter()
        log = logger.bind(request_id=request.scope["state"]["request_id"])
        event_type: str | None = None  # until the body is parsed
        try:
            received_at = datetime.now(UTC)
            check_content_length(request, self.max_body_bytes)
            if self.auth_keys:
                verify_signature(
                    timestamp=request.headers.get("x-vod-timestamp"),
                    signature=request.headers.get("x-vod-signature"),
                    callback_url=self.callback_url,
                    auth_keys=self.auth_keys,
                    now=time.time(),
                    max_skew_seconds=self.max_skew_seconds,
                )
            body = await read_body(request, self.max_body_bytes)
            envelope = parse_callback(body, received_at)
            event_type = envelope.event_type
            log = log.bind(event_type=event_type, job_id=envelope.job_id)
            recorded, hold = await self.store.accept(envelope, verify_outcomes=self.verify_outcomes)
        except WebhookError as exc:
            seconds = time.perf_counter() - started
            self.metrics.failed(event_type, exc, seconds)
            log.warning(
                "callback_rejected",
                status=exc.status_code,
                error=exc.code,
                detail=exc.detail,
                duration_ms=_ms(seconds),
            )
            raise
        outcome = "duplicate" if recorded.duplicate else "held" if hold else "accepted"
        seconds = time.perf_counter() - started
        self.metrics.stored(envelope.event_type, outcome, seconds)
        log.info(f"callback_{outcome}", id=recorded.id, status=200, duration_ms=_ms(seconds))
        return json_response(
            {
                "status": outcome,
                "duplicate": recorded.duplicate,
                "id": recorded.id,
                "event_type": envelope.event_type,
                "job_id": envelope.job_id,
            }
        )


def check_content_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise BadRequest("Content-Length must be a non-negative integer")
    if int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the {limit}-byte limit")


async def read_body(request: Request, limit: int) -> bytes:
    """Read at most `limit` bytes; a longer body is refused as soon as it passes the limit."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body exceeds the {limit}-byte limit")
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestIncomplete(
            f"the connection ended after {size} bytes of the body, before its end"
        ) from None
    if size == 0:
        raise PayloadError("body is empty; expected a JSON VOD event", "invalid_json")
    return b"".join(chunks)


def json_response(
    content: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """JSONResponse's compact JSON, rendered by orjson."""
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
