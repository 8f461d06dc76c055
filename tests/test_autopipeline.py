"""One shared, pipelined connection: replies to the right caller, errors to the right caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.conftest import RedisServer, eventually
from webhook.autopipeline import AutoPipeline, NotReplicated

NAME = "autopipeline-test"


@pytest.fixture
async def named_client(redis_server: RedisServer, redis_client: Redis) -> AsyncIterator[Redis]:
    """A client whose connections Redis lists by name; only the pipeline's connection uses it
    (`redis_client` flushed the database)."""
    client = Redis.from_url(redis_server.url, decode_responses=True, client_name=NAME)
    yield client
    await client.aclose()


async def connections_named(admin: Redis, name: str) -> list[dict[str, str]]:
    return [client for client in await admin.client_list() if client["name"] == name]


async def test_concurrent_commands_share_one_connection_and_get_their_own_replies(
    named_client: Redis, redis_client: Redis
) -> None:
    pipeline = AutoPipeline(named_client, default_timeout=2)
    try:
        replies = await asyncio.gather(
            *(pipeline.execute("ECHO", f"reply {n}") for n in range(500))
        )
        assert replies == [f"reply {n}" for n in range(500)]
        assert len(await connections_named(redis_client, NAME)) == 1
    finally:
        await pipeline.aclose()


async def test_a_refused_command_fails_alone(named_client: Redis) -> None:
    await named_client.set("text", "not a number")
    pipeline = AutoPipeline(named_client, default_timeout=2)
    try:
        replies: list[object] = await asyncio.gather(
            pipeline.execute("INCR", "counter"),
            pipeline.execute("INCR", "text"),
            pipeline.execute("INCR", "counter"),
            return_exceptions=True,
        )
        before, refused, after = replies
        assert (before, after) == (1, 2)
        assert isinstance(refused, ResponseError)
        assert "not an integer" in str(refused)
    finally:
        await pipeline.aclose()


async def test_a_killed_connection_is_replaced_and_the_command_sent_again(
    named_client: Redis, redis_client: Redis
) -> None:
    pipeline = AutoPipeline(named_client, default_timeout=2)
    try:
        assert await pipeline.execute("INCR", "counter") == 1
        [connection] = await connections_named(redis_client, NAME)
        await redis_client.client_kill_filter(_id=connection["id"])
        assert await pipeline.execute("INCR", "counter") == 2
        [replacement] = await connections_named(redis_client, NAME)
        assert replacement["id"] != connection["id"]
    finally:
        await pipeline.aclose()


async def test_a_down_redis_fails_the_command_with_a_connection_error(
    own_redis: RedisServer,
) -> None:
    client = Redis.from_url(own_redis.url, decode_responses=True)
    pipeline = AutoPipeline(client, default_timeout=2)
    try:
        assert await pipeline.execute("PING") == "PONG"
        own_redis.stop()
        with pytest.raises(RedisConnectionError):
            await pipeline.execute("PING")
        own_redis.start()
        assert await pipeline.execute("PING") == "PONG"
    finally:
        await pipeline.aclose()
        await client.aclose()


async def test_a_batch_redis_does_not_answer_in_time_fails_then_the_next_one_goes_out(
    named_client: Redis, redis_client: Redis
) -> None:
    pipeline = AutoPipeline(named_client, default_timeout=0.3)
    try:
        await redis_client.client_pause(5_000, all=False)  # writes wait, reads don't
        with pytest.raises(RedisTimeoutError, match=r"within 0\.3 s"):
            await pipeline.execute("SET", "key", "value")
        await redis_client.client_unpause()
        assert await pipeline.execute("SET", "key", "again") == "OK"
        assert await redis_client.get("key") == "again"
    finally:
        await redis_client.client_unpause()
        await pipeline.aclose()


async def test_a_command_whose_caller_gave_up_before_it_went_out_is_not_sent(
    named_client: Redis, redis_client: Redis
) -> None:
    pipeline = AutoPipeline(named_client, default_timeout=5)
    try:
        await redis_client.client_pause(5_000, all=False)
        in_flight = asyncio.create_task(pipeline.execute("INCR", "sent"))
        await eventually(
            lambda: _blocked_on(redis_client, NAME), what="the first batch to be in flight"
        )
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await pipeline.execute("INCR", "abandoned")
        await redis_client.client_unpause()
        assert await in_flight == 1
        assert await pipeline.execute("INCR", "sent") == 2
        assert await redis_client.get("abandoned") is None
    finally:
        await redis_client.client_unpause()
        await pipeline.aclose()


async def test_closing_fails_what_still_waits(named_client: Redis, redis_client: Redis) -> None:
    pipeline = AutoPipeline(named_client, default_timeout=5)
    await redis_client.client_pause(5_000, all=False)
    try:
        waiting = asyncio.create_task(pipeline.execute("INCR", "counter"))
        await eventually(lambda: _blocked_on(redis_client, NAME), what="the batch in flight")
        await pipeline.aclose()
        with pytest.raises(RedisConnectionError):
            await waiting
    finally:
        await redis_client.client_unpause()
    assert await connections_named(redis_client, NAME) == []


async def _blocked_on(admin: Redis, name: str) -> bool:
    """Whether a connection named `name` waits for Redis (flag b: blocked, here by the pause)."""
    return any(client["flags"] == "b" for client in await connections_named(admin, name))


async def test_with_wait_replicas_writes_are_answered_once_a_replica_has_them(
    tmp_path: Path,
) -> None:
    """Without a replica every command of the batch fails (NotReplicated, the writes stay on
    the master); once a replica follows, writes are answered, and the replica has them."""
    # The full sync starts at once, not after the default 5 s wait for more replicas.
    primary = RedisServer(None, "--repl-diskless-sync-delay", "0")
    # Its copy of the master's data in the test's own directory, not where the suite runs.
    replica = RedisServer(
        None, "--replicaof", "127.0.0.1", str(primary.port), "--dir", str(tmp_path)
    )
    primary.start()
    master = Redis.from_url(primary.url, decode_responses=True)
    follower = Redis.from_url(replica.url, decode_responses=True)
    alone = AutoPipeline(master, default_timeout=2, wait_replicas=1, wait_timeout_ms=100)
    # Generous: a loaded machine may take a while to pass an acknowledgement along.
    pipeline = AutoPipeline(master, default_timeout=5, wait_replicas=1, wait_timeout_ms=3000)
    try:
        with pytest.raises(NotReplicated, match="0 of 1 replicas acknowledged"):
            await alone.execute("SET", "before", "1")
        replica.start()
        # In sync as the master sees it, and done loading what it was sent.
        await eventually(lambda: _online_replicas(master, 1))
        await eventually(lambda: _linked(follower))
        assert await asyncio.gather(*(pipeline.execute("INCR", "n") for _ in range(50))) == list(
            range(1, 51)
        )
        assert await follower.get("n") == "50"  # answered: on the replica already
        assert await follower.get("before") == "1"
    finally:
        await alone.aclose()
        await pipeline.aclose()
        await master.aclose()
        await follower.aclose()
        replica.stop()
        primary.stop()


async def _online_replicas(master: Redis, count: int) -> bool:
    """Whether the master counts `count` replicas in sync (what WAIT waits for)."""
    info = await master.info("replication")
    online = [v for k, v in info.items() if k.startswith("slave") and v["state"] == "online"]
    return len(online) == count


async def _linked(replica: Redis) -> bool:
    info = await replica.info("replication")
    return bool(info.get("master_link_status") == "up")
