"""Fixtures: a real throwaway redis-server, settings, and the receiver served over loopback HTTP."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis
import uvicorn
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from starlette.types import ASGIApp

from webhook.app import create_app
from webhook.connection import RedisClient, cluster_supported
from webhook.http_limits import ClientLimits, LimitedConfig
from webhook.sender import signed_headers
from webhook.settings import Settings
from webhook.store import Store

if TYPE_CHECKING:
    from tests.topologies import LocalCluster, LocalSentinel

AUTH_KEY = "TestAuthKey2026abcd"
# Deliberately not the URL tests post to: the signature covers the URL as registered in VOD.
CALLBACK_URL = "https://hooks.example.com/callbacks/vod"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A redis-server subprocess on a free loopback port, keeping nothing on disk."""

    def __init__(self, port: int | None = None, *options: str) -> None:
        self.port = port or free_port()
        self.options = options
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; `make test` installs it")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--loglevel", "warning", *self.options],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start on port {self.port}")
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture(autouse=True)
def _leaks_fail_their_own_test() -> Iterator[None]:
    """Collect garbage as each test ends, so a socket, pipe or client it left open warns (an
    error, see filterwarnings) in that test, not in whichever one runs when the GC does."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, started, which it may stop, restart or misconfigure
    without touching the session's."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_sync(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A synchronous client on the session's Redis, flushed first, for tests without a loop."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def redis_url(redis_sync: redis.Redis, redis_server: RedisServer) -> str:
    """The session's Redis, flushed, for tests that hand its URL to subprocesses."""
    return redis_server.url


# The passwords of the password-protected topologies: URL-reserved characters, to prove the
# product's URLs carry them percent-encoded.
DATA_PASSWORD = "data:p@ss/w0rd"
SENTINEL_PASSWORD = "sentinel:p@ss&w0rd=1"


def _cluster(password: str | None = None) -> Iterator[LocalCluster]:
    # Imported here: tests.topologies imports this module.
    from tests.topologies import LocalCluster

    if not cluster_supported():  # `make floors` runs an older redis-py
        pytest.skip(f"Redis Cluster needs redis-py 8.0 or newer; this is {redis.__version__}")

    cluster = LocalCluster(password)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _sentinel(
    password: str | None = None, sentinel_password: str | None = None
) -> Iterator[LocalSentinel]:
    from tests.topologies import LocalSentinel

    sentinel = LocalSentinel(password, sentinel_password)
    sentinel.start()
    try:
        yield sentinel
    finally:
        sentinel.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A real Redis Cluster (3 masters, 3 replicas) of this worker's own, started by the first
    test that asks for it (a few seconds) and stopped at the session's end."""
    yield from _cluster()


@pytest.fixture
def cluster_url(redis_cluster: LocalCluster) -> str:
    """The cluster's redis+cluster:// URL, healed (3 masters each with a connected replica,
    whatever the last test killed) and flushed."""
    redis_cluster.ensure_healthy()
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[LocalSentinel]:
    """A real Sentinel set (master, replica, 3 sentinels watching "mymaster") of this worker's
    own, started by the first test that asks for it and stopped at the session's end."""
    yield from _sentinel()


@pytest.fixture
def sentinel_url(redis_sentinel: LocalSentinel) -> str:
    """The set's redis+sentinel:// URL, healed (a master with a connected replica, known to
    all 3 sentinels) and flushed."""
    redis_sentinel.ensure_healthy()
    redis_sentinel.flush()
    return redis_sentinel.url


@pytest.fixture(scope="session")
def redis_cluster_auth() -> Iterator[LocalCluster]:
    """As `redis_cluster`, every node asking DATA_PASSWORD; only for the tests that use it."""
    yield from _cluster(DATA_PASSWORD)


@pytest.fixture
def cluster_auth_url(redis_cluster_auth: LocalCluster) -> str:
    """`redis_cluster_auth`'s URL, with its password, healed and flushed."""
    redis_cluster_auth.ensure_healthy()
    redis_cluster_auth.flush()
    return redis_cluster_auth.url


@pytest.fixture(scope="session")
def redis_sentinel_auth() -> Iterator[LocalSentinel]:
    """As `redis_sentinel`, the master and replica asking DATA_PASSWORD and the sentinels
    SENTINEL_PASSWORD; only for the tests that use it."""
    yield from _sentinel(DATA_PASSWORD, SENTINEL_PASSWORD)


@pytest.fixture
def sentinel_auth_url(redis_sentinel_auth: LocalSentinel) -> str:
    """`redis_sentinel_auth`'s URL, with both passwords, healed and flushed."""
    redis_sentinel_auth.ensure_healthy()
    redis_sentinel_auth.flush()
    return redis_sentinel_auth.url


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    await client.flushall()
    yield client
    await client.aclose()


StoreFactory = Callable[..., Store]


@pytest.fixture
async def make_store(redis_client: Redis) -> AsyncIterator[StoreFactory]:
    """Stores on `redis_client` (or the client given), prefix "vod" unless told; each closed,
    with its client, after the test."""
    made: list[Store] = []

    def make(
        redis: Redis | None = None,
        *,
        prefix: str = "vod",
        stream_maxlen: int = 10_000,
        dedup_ttl_seconds: int = 3600,
        **options: Any,
    ) -> Store:
        store = Store(
            redis or redis_client,
            prefix=prefix,
            stream_maxlen=stream_maxlen,
            dedup_ttl_seconds=dedup_ttl_seconds,
            **options,
        )
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> Store:
    return make_store()


@pytest.fixture
def make_settings(redis_server: RedisServer) -> Callable[..., Settings]:
    """Settings for a test from its arguments alone (the environment and .env are ignored)."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_server.url,
            "auth_keys": AUTH_KEY,
            "callback_url": CALLBACK_URL,
            **overrides,
        }
        return Settings(_env_file=None, **values)

    return make


ServeApp = Callable[[Callable[[str], ASGIApp]], Awaitable[str]]
Receiver = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve_app() -> AsyncIterator[ServeApp]:
    """Serve an app with uvicorn on a loopback port, stopped after the test.

    Takes a function from the base URL to the app (so an app may know its own address) and
    returns the base URL.
    """
    running: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(build: Callable[[str], ASGIApp]) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        # The protocol `serve` runs (webhook/http_limits.py), with its default limits.
        config = LimitedConfig(
            build(base), limits=ClientLimits(), log_config=None, access_log=False, lifespan="on"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        running.append((server, task))
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        return base

    yield start
    for server, task in reversed(running):
        server.should_exit = True
        with suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def start_receiver(
    make_settings: Callable[..., Settings], serve_app: ServeApp, redis_sync: redis.Redis
) -> Receiver:
    """Serve the receiver on the session's Redis, flushed first (no test sees another's jobs);
    returns its base URL. With `self_registered=True` its CALLBACK_URL is the URL it is served
    at, as for a VOD (or emulator) that posts where it signs."""

    async def start(*, self_registered: bool = False, **overrides: Any) -> str:
        def build(base: str) -> ASGIApp:
            if self_registered:
                overrides["callback_url"] = (
                    f"{base}{overrides.get('callback_path', '/callbacks/vod')}"
                )
            return create_app(make_settings(**overrides))

        return await serve_app(build)

    return start


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def vod_headers(
    key: str = AUTH_KEY, url: str = CALLBACK_URL, timestamp: int | None = None
) -> dict[str, str]:
    return signed_headers(url, key, timestamp)


def sample_path(name: str) -> Path:
    return Path(__file__).parent / "samples" / name


def job_callback(job_id: str, status: str = "success") -> dict[str, Any]:
    """The documented sample callback, for another job (outside and inside its job info)."""
    data: dict[str, Any] = json.loads(sample_path("dynamic_image_success.json").read_text())
    data["DynamicImageJobInfo"] = data["DynamicImageJobInfo"].replace(data["JobId"], job_id)
    data.update(JobId=job_id, Status=status)
    if status == "fail":
        del data["DynamicImageJobInfo"]
    return data


def wait_for(predicate: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def eventually(
    predicate: Callable[[], Awaitable[bool]], within: float = 5, what: str = "condition"
) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def clean_env() -> dict[str, str]:
    """The environment for CLI subprocesses: this one without VOD_WEBHOOK_* or Alibaba Cloud
    settings, and with the ECS metadata probe off."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("VOD_WEBHOOK_", "ALIBABA_CLOUD_"))
    } | {"ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true"}


async def published(pubsub: PubSub, count: int, within: float = 3) -> list[dict[str, Any]]:
    """The next `count` messages (not subscribe confirmations) on `pubsub`; fewer on timeout."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    while len(messages) < count and (left := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(timeout=left)
        if message is not None and message["type"] in {"message", "pmessage"}:
            messages.append(message)
    return messages


async def stream_entries(redis: RedisClient, key: str) -> list[tuple[str, dict[str, str]]]:
    entries = await redis.xrange(key) or []
    return [
        (str(entry_id), {str(k): str(v) for k, v in (fields or {}).items()})
        for entry_id, fields in entries
    ]
