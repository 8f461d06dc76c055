"""The Starlette app: the VOD callback route, probes, and where errors become HTTP answers."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import orjson
import structlog
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from webhook.api import read_api_routes
from webhook.errors import (
    BadRequest,
    PayloadError,
    PayloadTooLarge,
    RequestIncomplete,
    StoreUnavailable,
    WebhookError,
)
from webhook.events import parse_callback
from webhook.feed import StreamFeed
from webhook.reconcile import run_reconciler
from webhook.settings import Settings, check_receiver_settings, weak_auth_keys
from webhook.signature import verify_signature
from webhook.store import Store, UnsupportedRedis
from webhook.verify import VerifyOptions, drain_held, run_verifier
from webhook.vod import Vod

logger = structlog.get_logger("webhook.app")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def create_app(settings: Settings, *, freeze_gc: bool = False) -> Starlette:
    """The receiver app for `settings`; raises ConfigError for a configuration it must not run.

    `freeze_gc`: once started, keep the cyclic GC off everything start-up made (a server
    process; not an app among many in one process, as in tests)."""
    check_receiver_settings(settings)
    auth_keys = [key.get_secret_value() for key in settings.auth_keys]
    store = Store.from_settings(settings)
    # Built now so missing credentials stop start-up rather than the first pass.
    vod = Vod.from_settings(settings, store.redis) if settings.calls_vod else None
    feed = (
        StreamFeed(
            store.redis,
            store.keys.stream,
            queue_size=settings.sse_queue_size,
            queue_bytes=settings.sse_queue_bytes,
        )
        if settings.api_token is not None
        else None
    )

    async def receive_callback(request: Request) -> Response:
        started = time.perf_counter()
        log = logger.bind(request_id=request.scope["state"]["request_id"])
        try:
            received_at = datetime.now(UTC)
            _check_content_length(request, settings.max_body_bytes)
            if auth_keys:
                verify_signature(
                    timestamp=request.headers.get("x-vod-timestamp"),
                    signature=request.headers.get("x-vod-signature"),
                    callback_url=settings.callback_url or "",
                    auth_keys=auth_keys,
                    now=time.time(),
                    max_skew_seconds=settings.max_skew_seconds,
                )
            body = await _read_body(request, settings.max_body_bytes)
            envelope = parse_callback(body, received_at)
            log = log.bind(event_type=envelope.event_type, job_id=envelope.job_id)
            # VOD does not sign the body: with VERIFY_OUTCOMES a job outcome is held, stored,
            # until ListDynamicImage confirms it (webhook/verify.py).
            hold = settings.verify_outcomes and envelope.is_job_outcome and bool(envelope.job_id)
            recorded = await (store.hold(envelope) if hold else store.record(envelope))
        except WebhookError as exc:
            log.warning(
                "callback_rejected",
                status=exc.status_code,
                error=exc.code,
                detail=exc.detail,
                duration_ms=_ms_since(started),
            )
            raise
        outcome = "duplicate" if recorded.duplicate else "held" if hold else "accepted"
        log.info(f"callback_{outcome}", id=recorded.id, status=200, duration_ms=_ms_since(started))
        return _json_response(
            {
                "status": outcome,
                "duplicate": recorded.duplicate,
                "id": recorded.id,
                "event_type": envelope.event_type,
                "job_id": envelope.job_id,
            }
        )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if request.app.state.draining:
            raise StoreUnavailable("shutting down", "shutting_down")
        await store.ensure_ready()
        return JSONResponse({"status": "ready"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.draining = False
        try:
            await store.ensure_ready()
            logger.info("store_ready", key_prefix=settings.key_prefix)
        except UnsupportedRedis as exc:
            logger.error("redis_unsupported", detail=exc.detail)
            raise
        except StoreUnavailable as exc:
            logger.warning("store_unavailable", detail=exc.detail)
        if not auth_keys:
            logger.warning("signature_check_disabled", reason="ALLOW_UNSIGNED is set")
        if weak := weak_auth_keys(settings):
            logger.warning(
                "weak_auth_keys_allowed", reason="ALLOW_WEAK_AUTH_KEYS is set", keys=weak
            )
        restore_signals = _mark_draining_on_signal(app.state, feed.close if feed else None)
        if freeze_gc:
            _freeze_startup_objects()
        if feed is not None:
            feed.start()
        reconciler = verifier = None
        if vod is not None and settings.verify_outcomes:
            verifier = asyncio.create_task(
                run_verifier(store, vod, VerifyOptions(attempts=settings.verify_attempts))
            )
            if not settings.reconcile:
                logger.warning(
                    "verify_without_reconcile",
                    reason="outcomes VOD gives up on, or drops while too many are held, are "
                    "recovered only by reconciliation: set VOD_WEBHOOK_RECONCILE=true here or "
                    "run `vod-webhook reconcile`",
                )
        elif not settings.verify_outcomes:
            # Outcomes a verifying deployment held (and answered 200 for) must still go out.
            verifier = asyncio.create_task(drain_held(store))
        if vod is not None and settings.reconcile:
            reconciler = asyncio.create_task(
                run_reconciler(
                    store,
                    vod,
                    interval_seconds=settings.reconcile_interval_seconds,
                    grace_seconds=settings.reconcile_grace_seconds,
                    deadline_seconds=settings.reconcile_deadline_seconds,
                )
            )
        try:
            yield
        finally:
            for task in (reconciler, verifier):
                if task is not None:
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task
            if feed is not None:
                await feed.stop()
            restore_signals()
            await store.close()

    routes: list[BaseRoute] = [
        Route(settings.callback_path, receive_callback, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    if feed is not None:
        routes += read_api_routes(settings, store, feed)
    app = Starlette(
        routes=routes,
        exception_handlers={
            WebhookError: _webhook_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )
    app.add_middleware(_RequestIdMiddleware)
    return app


class _RequestIdMiddleware:
    """Give every request an id (the caller's X-Request-Id when sane) and echo it back."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:  # no dict of every header per request
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
                break
        if not _REQUEST_ID.fullmatch(request_id):
            request_id = os.urandom(16).hex()  # as random as uuid4, in a fraction of its time
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)


# Young collections rarely, and none of them reaching the start-up objects: the hot path makes
# few cycles, and a full collection over ~50k frozen-worthy objects paused it for tens of ms.
_GC_THRESHOLDS = (50_000, 20, 100)


def _freeze_startup_objects() -> None:
    """Move everything start-up made (modules, app, settings) out of the collector's reach."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


def _check_content_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise BadRequest("Content-Length must be a non-negative integer")
    if int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the {limit}-byte limit")


async def _read_body(request: Request, limit: int) -> bytes:
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


def _mark_draining_on_signal(
    state: State, end_streams: Callable[[], None] | None
) -> Callable[[], None]:
    """Flag readiness down and end event streams as soon as SIGTERM/SIGINT arrives, then let
    the server drain as usual.

    uvicorn stops listening on the signal; this covers probes already connected, and event
    streams that would otherwise hold the drain up until its timeout.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    loop = asyncio.get_running_loop()

    def on_signal(sig: int, frame: FrameType | None) -> None:
        state.draining = True
        if end_streams is not None:
            loop.call_soon_threadsafe(end_streams)
        handler = previous[signal.Signals(sig)]
        if callable(handler):
            handler(sig, frame)
        elif handler == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    for sig in previous:
        signal.signal(sig, on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def _error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    return _json_response({"error": code, "detail": detail}, status, headers)


def _json_response(
    content: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """JSONResponse's compact JSON, rendered by orjson."""
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


async def _webhook_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WebhookError)
    return _error_response(exc.status_code, exc.code, exc.detail, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    response = _error_response(exc.status_code, code, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("request_failed", path=request.url.path)
    return _error_response(500, "internal_error", "internal error; see the server log")


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
