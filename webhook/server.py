"""Run the receiver under uvicorn, on Redis or on the embedded store."""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
import uvicorn
from prometheus_client.multiprocess import mark_process_dead
from redis.asyncio.sentinel import MasterNotFoundError, SentinelConnectionPool
from redis.exceptions import (
    AuthenticationError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from starlette.applications import Starlette
from uvicorn.supervisors import Multiprocess

from webhook.app import create_app
from webhook.connection import RedisClient, connect
from webhook.http_limits import ClientLimits, LimitedConfig
from webhook.logs import configure_logging
from webhook.settings import ConfigError, Settings, check_receiver_settings, safe_url
from webhook.vod import Vod

logger = structlog.get_logger("webhook.server")


class AppFactory:
    """Builds the app inside each worker process (picklable, unlike the app itself)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self) -> Starlette:
        configure_logging(self.settings)
        return create_app(self.settings, freeze_gc=True)


def check_redis(url: str, timeout: float) -> None:
    """Stop on a Redis URL that can never work (a wrong password, no such database): every
    callback would get 503 until VOD gives up. One that does not answer yet may: serve, with
    readiness down until it does."""

    async def ping() -> None:
        client = connect(url, timeout=timeout, max_connections=2)
        try:
            await client.ping()
        except MasterNotFoundError:
            await _check_sentinels(client, url)
            raise
        finally:
            await client.aclose()

    try:
        asyncio.run(ping())
    except (RedisError, RedisClusterException, OSError) as exc:
        refusal = _refusal(exc)
        if refusal is not None:
            raise ConfigError(
                f"VOD_WEBHOOK_REDIS_URL: {safe_url(url)} refuses this client: {refusal}"
            ) from None
        logger.warning(
            "redis_unreachable",
            variable="VOD_WEBHOOK_REDIS_URL",
            url=safe_url(url),
            error=str(exc),
            detail="serving anyway: callbacks get 503 and /readyz stays down until it answers",
        )


def _refusal(exc: BaseException) -> BaseException | None:
    """The server's refusal behind `exc` (a wrong password, no such database), if it is one.
    A cluster client wraps what its start-up nodes answered in a RedisClusterException."""
    if isinstance(exc, RedisClusterException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc if isinstance(exc, (AuthenticationError, ResponseError)) else None


async def _check_sentinels(client: RedisClient, url: str) -> None:
    """ConfigError if a Sentinel refuses the URL's sentinel_username / sentinel_password:
    Sentinel's client, asking them for the master in vain, says only that it found none."""
    pool = getattr(client, "connection_pool", None)
    if not isinstance(pool, SentinelConnectionPool):
        return
    for sentinel in pool.sentinel_manager.sentinels:
        try:
            await sentinel.ping()
        except AuthenticationError as exc:
            address = sentinel.connection_pool.connection_kwargs
            raise ConfigError(
                f"VOD_WEBHOOK_REDIS_URL: {safe_url(url)}: the Sentinel at {address['host']}:"
                f"{address['port']} refuses this client (sentinel_username, sentinel_password): "
                f"{exc}"
            ) from None
        except RedisError:
            continue  # down: another one may answer


def server_config(settings: Settings, *, host: str, port: int, workers: int) -> uvicorn.Config:
    return LimitedConfig(
        AppFactory(settings),
        limits=ClientLimits(
            read_timeout=settings.read_timeout_seconds,
            send_timeout=settings.send_timeout_seconds,
        ),
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
        # uvicorn takes whole seconds; rounding down would cut in-flight requests short.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_seconds),
    )


def serve(settings: Settings, *, host: str, port: int, workers: int) -> None:
    check_receiver_settings(settings)
    if settings.calls_vod:
        Vod.sdk_client(settings)  # missing credentials stop start-up here, with exit code 2
    configure_logging(settings)
    if settings.redis_url is not None:
        check_redis(settings.redis_url, settings.redis_timeout_seconds)
    config = server_config(settings, host=host, port=port, workers=workers)
    try:
        sock = config.bind_socket()
    except SystemExit:  # uvicorn logged why (in use, not an address here) and gave up
        raise ConfigError(
            f"--host {host} --port {port}: cannot listen there (see the log line above)"
        ) from None
    embedded = None
    try:
        if settings.redis_url is None:
            from webhook.embedded import EmbeddedRedis  # fakeredis and lupa, only when used

            embedded = EmbeddedRedis(settings.embedded_port)
            embedded.start()
            logger.warning(
                "embedded_store_started",
                url=embedded.url,
                detail="no VOD_WEBHOOK_REDIS_URL: events are kept in this process's memory and "
                "lost when it stops; use Redis in production",
            )
        with metrics_directory(workers):
            if workers > 1:
                MetricsMultiprocess(config, sockets=[sock]).run()
            else:
                uvicorn.Server(config).run(sockets=[sock])
    finally:
        if embedded is not None:
            embedded.stop()
        sock.close()


@contextmanager
def metrics_directory(workers: int) -> Iterator[None]:
    """prometheus-client's multiprocess directory, ready before any worker exists (the workers
    inherit the variable): PROMETHEUS_MULTIPROC_DIR when set, created if missing and its files
    of an earlier run wiped; else, with several workers, a temporary one, removed at the end.
    One worker without the variable keeps its metrics in memory."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        try:
            folder = Path(given)
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob("*.db"):  # the files prometheus-client writes
                stale.unlink()
        except OSError as exc:
            raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR: cannot use {given}: {exc}") from None
        yield
    elif workers > 1:
        with tempfile.TemporaryDirectory(prefix="vod-webhook-metrics-") as temporary:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = temporary
            try:
                yield
            finally:
                del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    else:
        yield


class MetricsMultiprocess(Multiprocess):
    """uvicorn's supervisor of `--workers`, telling prometheus-client of every worker it found
    dead and replaced, so that the live gauges (open /events streams) forget its values."""

    def keep_subprocess_alive(self) -> None:
        before = {process.pid for process in self.processes}
        super().keep_subprocess_alive()
        for pid in before - {process.pid for process in self.processes}:
            mark_process_dead(pid)  # type: ignore[no-untyped-call]
