"""The Starlette app: its routes, the services beside them (a lifespan), the request id, and
where errors become HTTP answers."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import re
import signal
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from types import FrameType
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from webhook.api import ReadApi
from webhook.errors import StoreUnavailable, WebhookError
from webhook.feed import StreamFeed
from webhook.ingest import MnsIngest, ingest_from_settings
from webhook.metrics import Metrics, ResponseMetrics
from webhook.receiver import CallbackReceiver, json_response
from webhook.reconcile import ReconcileOptions, run_reconciler
from webhook.scrape import MetricsEndpoint
from webhook.settings import ConfigError, Settings, check_receiver_settings, weak_auth_keys
from webhook.store import Store, UnsupportedRedis, unavailable
from webhook.verify import VerifyOptions, drain_held, run_verifier
from webhook.vod import Vod

logger = structlog.get_logger("webhook.app")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def create_app(settings: Settings, *, freeze_gc: bool = False) -> Starlette:
    """The receiver app for `settings`; raises ConfigError for a configuration it must not run.

    `freeze_gc`: once started, keep the cyclic GC off everything start-up made (a server
    process; not an app among many in one process, as in tests)."""
    check_receiver_settings(settings)
    store = Store.from_settings(settings)
    metrics = Metrics(
        callback_path=settings.callback_path, verify_outcomes=settings.verify_outcomes
    )
    # Built now so missing credentials stop start-up rather than the first pass.
    vod = Vod.from_settings(settings, store.redis) if settings.calls_vod else None
    feed = (
        StreamFeed(
            store.redis,
            store.layout,
            queue_size=settings.sse_queue_size,
            queue_bytes=settings.sse_queue_bytes,
            metrics=metrics,
        )
        if settings.api_token is not None
        else None
    )
    # Built now so missing credentials stop start-up; checked against MNS as it starts.
    ingest = (
        ingest_from_settings(settings, store, metrics.mns_message) if settings.mns_queue else None
    )
    receiver = CallbackReceiver(settings, store, metrics.callback)
    routes: list[BaseRoute] = [
        Route(settings.callback_path, receiver.receive, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", Readiness(store).readyz, methods=["GET"]),
    ]
    if feed is not None:
        routes += ReadApi(settings, store, feed).routes()
    if settings.metrics_token is not None:
        scrape = MetricsEndpoint(settings, store, metrics)
        routes.append(Route("/metrics", scrape.metrics, methods=["GET"]))
    return Starlette(
        routes=routes,
        middleware=[Middleware(RequestIdAndMetrics, responses=metrics.responses)],
        exception_handlers={
            WebhookError: _webhook_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        lifespan=Services(settings, store, vod, feed, metrics, ingest, freeze_gc=freeze_gc).run,
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


class Readiness:
    """Ready: the store answers and the process is not shutting down."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def readyz(self, request: Request) -> Response:
        if request.app.state.draining:
            raise StoreUnavailable("shutting down", "shutting_down")
        await self.store.ensure_ready()
        return JSONResponse({"status": "ready"})


class Services:
    """What runs beside the routes, from start-up to shutdown: the store (its failures
    counted), the feed of `/events`, verification (or the drain) of held outcomes,
    reconciliation, MNS ingest, and readiness going down on SIGTERM."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        vod: Vod | None,
        feed: StreamFeed | None,
        metrics: Metrics,
        ingest: MnsIngest | None,
        *,
        freeze_gc: bool,
    ) -> None:
        self.settings = settings
        self.store = store
        self.vod = vod
        self.feed = feed
        self.metrics = metrics
        self.ingest = ingest
        self.freeze_gc = freeze_gc

    @asynccontextmanager
    async def run(self, app: Starlette) -> AsyncIterator[None]:
        app.state.draining = False
        async with AsyncExitStack() as running:  # stopped in reverse order
            running.callback(_count_redis_failures(self.metrics))
            running.push_async_callback(self.store.close)
            await self._open_store()
            self._warn_about_settings()
            end_streams = self.feed.close if self.feed is not None else None
            running.callback(_mark_draining_on_signal(app.state, end_streams))
            if self.freeze_gc:
                _freeze_startup_objects()
            if self.feed is not None:
                self.feed.start()
                running.push_async_callback(self.feed.stop)
            if self.ingest is not None:
                running.push_async_callback(self.ingest.queue.aclose)
                await self._check_queue(self.ingest)
                ingesting = asyncio.create_task(self.ingest.run())
                running.push_async_callback(
                    _stop_ingest, self.ingest, ingesting, self.settings.shutdown_timeout_seconds
                )
            for work in self._background_work():
                running.push_async_callback(_cancel, asyncio.create_task(work))
            yield

    async def _open_store(self) -> None:
        try:
            await self.store.ensure_ready()
            logger.info("store_ready", key_prefix=self.settings.key_prefix)
        except UnsupportedRedis as exc:
            logger.error("redis_unsupported", detail=exc.detail)
            raise
        except StoreUnavailable as exc:  # readiness stays down until it answers
            logger.warning("store_unavailable", detail=exc.detail)

    async def _check_queue(self, ingest: MnsIngest) -> None:
        try:
            await ingest.check()
        except ConfigError as exc:  # a queue MNS refuses: the deployment is wrong, stop
            logger.error("mns_refused", detail=str(exc))
            raise

    def _warn_about_settings(self) -> None:
        if not self.settings.auth_keys:
            logger.warning("signature_check_disabled", reason="ALLOW_UNSIGNED is set")
        if weak := weak_auth_keys(self.settings):
            logger.warning(
                "weak_auth_keys_allowed", reason="ALLOW_WEAK_AUTH_KEYS is set", keys=weak
            )

    def _background_work(self) -> list[Coroutine[Any, Any, None]]:
        settings, store, vod = self.settings, self.store, self.vod
        work: list[Coroutine[Any, Any, None]] = []
        if not settings.verify_outcomes:
            # Outcomes a verifying deployment held (and answered 200 for) must still go out.
            work.append(drain_held(store))
        elif vod is not None:
            work.append(run_verifier(store, vod, VerifyOptions(attempts=settings.verify_attempts)))
            if not settings.reconcile:
                logger.warning(
                    "verify_without_reconcile",
                    reason="outcomes VOD gives up on, or drops while too many are held, are "
                    "recovered only by reconciliation: set VOD_WEBHOOK_RECONCILE=true here or "
                    "run `vod-webhook reconcile`",
                )
        if vod is not None and settings.reconcile:
            options = ReconcileOptions.from_settings(settings)
            work.append(run_reconciler(store, vod, **dataclasses.asdict(options)))
        return work


def _count_redis_failures(metrics: Metrics) -> Callable[[], None]:
    """Count every Redis failure of this process while the app runs; returns what stops it."""
    previous = unavailable.observer
    unavailable.observer = metrics.redis_failed

    def restore() -> None:
        unavailable.observer = previous

    return restore


async def _stop_ingest(ingest: MnsIngest, task: asyncio.Task[None], within: float) -> None:
    """Let the batch in hand be recorded and deleted, for up to `within` seconds."""
    ingest.stop()
    await asyncio.wait({task}, timeout=within)
    await _cancel(task)


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait for its end, cancelling it again while it runs on: redis-py can
    lose a cancellation (seen in a blocking read), and a loop that lost one would hold up
    shutdown for ever."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    with suppress(asyncio.CancelledError):
        await task


class RequestIdAndMetrics:
    """Give every request an id (the caller's X-Request-Id when sane) and echo it back; count
    every response by route and status (a 500 too: Starlette's outermost middleware answers it,
    after the error passed through here). One ASGI layer for both, as each layer costs every
    callback a coroutine per message."""

    def __init__(self, app: Callable[..., Any], responses: ResponseMetrics) -> None:
        self.app = app
        self.responses = responses

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
        responses = self.responses
        answered = False

        async def send_with_id(message: Any) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                responses.count(scope.get("route"), message["status"])
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if not answered:
                responses.count(scope.get("route"), 500)
            raise


# Young collections rarely, and none of them reaching the start-up objects: the hot path makes
# few cycles, and a full collection over ~50k frozen-worthy objects paused it for tens of ms.
_GC_THRESHOLDS = (50_000, 20, 100)


def _freeze_startup_objects() -> None:
    """Move everything start-up made (modules, app, settings) out of the collector's reach."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


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
    return json_response({"error": code, "detail": detail}, status, headers)


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
