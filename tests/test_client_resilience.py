"""The subscriber library when things go wrong: failing handlers, malformed entries, stopping
mid-batch, a consumer group that vanishes with Redis, and quiet pub/sub subscriptions."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from tests.conftest import RedisServer, StoreFactory, eventually, stream_entries
from tests.test_client import job_event
from webhook.client import ConsumerOptions, consume, subscribe, wait_for
from webhook.events import Envelope

FAST = ConsumerOptions(
    start="beginning", claim_idle_seconds=0.1, max_deliveries=3, block_seconds=0.1
)


async def dead_letters(redis: Redis, count: int) -> list[dict[str, str]]:
    async def enough() -> bool:
        return int(await redis.xlen("vod:deadletter")) >= count

    await eventually(enough, 10, f"{count} dead letters")
    return [fields for _, fields in await stream_entries(redis, "vod:deadletter")]


class Strict(BaseModel):
    needed: int


@pytest.mark.parametrize(
    ("job_id", "error"),
    [
        ("key-error", "KeyError: 'thumbnail'"),
        ("validation-error", "ValidationError: 1 validation error for Strict"),
        ("value-error", "ValueError: no"),
    ],
)
async def test_a_handler_error_of_any_type_is_retried_up_to_max_deliveries(
    redis_client: Redis, job_id: str, error: str, make_store: StoreFactory
) -> None:
    await make_store(redis_client).record(job_event(job_id))
    attempts: list[str | None] = []

    async def failing(envelope: Envelope) -> None:
        attempts.append(envelope.job_id)
        if job_id == "key-error":
            raise KeyError("thumbnail")
        if job_id == "validation-error":
            Strict.model_validate({})  # the handler's own model refuses the data
        raise ValueError("no")

    stop = asyncio.Event()
    task = asyncio.create_task(consume(redis_client, "g", "a", failing, options=FAST, stop=stop))
    [dead] = await dead_letters(redis_client, 1)
    stop.set()
    await task
    assert dead["deliveries"] == "3"
    assert error in dead["error"]
    assert attempts == [job_id] * 3


async def test_a_failure_on_an_entry_a_peer_acknowledged_meanwhile_is_not_dead_lettered(
    redis_client: Redis,
    make_store: StoreFactory,
) -> None:
    recorded = await make_store(redis_client).record(job_event("j1"))
    stop = asyncio.Event()

    async def finished_elsewhere(envelope: Envelope) -> None:
        # A peer that took the entry over finishes it while this handler is still failing.
        await redis_client.xack("vod:stream", "g", recorded.id)
        stop.set()
        raise ValueError("too late")

    async with asyncio.timeout(10):
        await consume(redis_client, "g", "a", finished_elsewhere, options=FAST, stop=stop)
    assert await redis_client.xlen("vod:deadletter") == 0


async def consume_until_first(redis: Redis) -> list[str | None]:
    """Consume as "a" of group "g" until one envelope is handled: the job ids handled."""
    handled: list[str | None] = []
    stop = asyncio.Event()

    async def handle(envelope: Envelope) -> None:
        handled.append(envelope.job_id)
        stop.set()

    async with asyncio.timeout(10):
        await consume(redis, "g", "a", handle, options=FAST, stop=stop)
    return handled


async def test_an_entry_that_is_no_envelope_is_dead_lettered_at_once(
    redis_client: Redis, make_store: StoreFactory
) -> None:
    await redis_client.xadd("vod:stream", {"envelope": "not json"})
    await redis_client.xadd("vod:stream", {"something": "else"})
    await make_store(redis_client).record(job_event("good"))
    handled = await consume_until_first(redis_client)
    dead = await dead_letters(redis_client, 2)
    assert handled == ["good"]
    assert [d["deliveries"] for d in dead] == ["1", "1"]
    assert "ValidationError: 1 validation error for Envelope" in dead[0]["error"]
    assert dead[1]["error"] == "KeyError: 'envelope'"
    assert (await redis_client.xpending("vod:stream", "g"))["pending"] == 0


async def test_an_entry_trimmed_from_the_stream_while_pending_is_let_go(
    redis_client: Redis, make_store: StoreFactory
) -> None:
    store = make_store(redis_client)
    lost = await store.record(job_event("lost"))
    stop = asyncio.Event()

    async def crash(envelope: Envelope) -> None:
        stop.set()
        raise ValueError("crashed before acknowledging")

    async with asyncio.timeout(10):
        await consume(redis_client, "g", "a", crash, options=FAST, stop=stop)
    assert (await redis_client.xpending("vod:stream", "g"))["pending"] == 1
    # The stream's cap removes the entry while it waits for this consumer.
    await redis_client.xdel("vod:stream", lost.id)
    await store.record(job_event("next"))
    assert await consume_until_first(redis_client) == ["next"]
    assert (await redis_client.xpending("vod:stream", "g"))["pending"] == 0
    assert await redis_client.xlen("vod:deadletter") == 0


@pytest.mark.parametrize("given_before", [False, True], ids=["fresh", "pending-at-start"])
async def test_stop_takes_effect_after_the_entry_in_hand(
    redis_client: Redis, given_before: bool, make_store: StoreFactory
) -> None:
    store = make_store(redis_client)
    for n in range(5):
        await store.record(job_event(f"j{n}"))
    if given_before:  # delivered to "a" by an earlier run that never acknowledged them
        await redis_client.xgroup_create("vod:stream", "g", id="0")
        await redis_client.xreadgroup("g", "a", {"vod:stream": ">"})
    handled = await consume_until_first(redis_client)
    assert handled == ["j0"]
    pending = await redis_client.xpending_range("vod:stream", "g", min="-", max="+", count=10)
    assert [p["consumer"] for p in pending] == ["a"] * 4

    # Started again under the same name, it handles the rest, in order, and nothing twice.
    rest: list[str | None] = []
    done = asyncio.Event()

    async def handle_rest(envelope: Envelope) -> None:
        rest.append(envelope.job_id)
        if len(rest) == 4:
            done.set()

    options = ConsumerOptions(claim_idle_seconds=3600, block_seconds=0.1)
    async with asyncio.timeout(10):
        await consume(redis_client, "g", "a", handle_rest, options=options, stop=done)
    assert rest == ["j1", "j2", "j3", "j4"]
    assert (await redis_client.xpending("vod:stream", "g"))["pending"] == 0


async def xgroup_creates(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_xgroup|create", {}).get("calls", 0))


@pytest.mark.parametrize("loss", ["restart", "flushall", "destroy"])
async def test_a_vanished_group_is_created_again_and_consuming_goes_on(
    loss: str, own_redis: RedisServer, make_store: StoreFactory
) -> None:
    server = own_redis
    admin = Redis.from_url(server.url, decode_responses=True)
    consumer_redis = Redis.from_url(server.url, decode_responses=True, socket_timeout=2)
    handled: list[str | None] = []
    stop = asyncio.Event()

    async def handle(envelope: Envelope) -> None:
        handled.append(envelope.job_id)

    options = ConsumerOptions(start="beginning", block_seconds=0.2, claim_idle_seconds=3600)
    task = asyncio.create_task(
        consume(consumer_redis, "g", "a", handle, options=options, stop=stop)
    )
    try:
        await make_store(admin).record(job_event("before"))

        async def handled_count(count: int) -> bool:
            if task.done():
                task.result()  # a crash fails the test with its error
            return len(handled) >= count

        await eventually(lambda: handled_count(1), 10, "the first envelope")
        if loss == "restart":  # Redis without persistence comes back empty
            server.stop()
            server.start()
            await admin.aclose()
            admin = Redis.from_url(server.url, decode_responses=True)
        elif loss == "flushall":
            await admin.config_resetstat()
            await admin.flushall()
        else:
            await admin.config_resetstat()
            await admin.xgroup_destroy("vod:stream", "g")
        await make_store(admin).record(job_event("after"))
        await eventually(lambda: handled_count(2), 10, "the envelope after the loss")
        assert handled == ["before", "after"]
        assert not task.done()
        # Created again once (on the stream and on its redrive stream), not in a loop.
        assert await xgroup_creates(admin) == 2
        [group] = await admin.xinfo_groups("vod:stream")
        assert group["name"] == "g"
        await eventually(lambda: _none_pending(admin), 10, "the acknowledgement")
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await asyncio.gather(task, return_exceptions=True)
        await consumer_redis.aclose()
        await admin.aclose()


async def _none_pending(redis: Redis) -> bool:
    return int((await redis.xpending("vod:stream", "g"))["pending"]) == 0


async def subscribers_idle(redis: Redis, count: int, seconds: int) -> bool:
    """Whether `count` subscribed connections have waited `seconds` or more for a message."""
    clients = await redis.client_list()
    return sum(c["cmd"] == "subscribe" and int(c["idle"]) >= seconds for c in clients) >= count


async def test_a_quiet_subscription_outlives_the_socket_timeout(
    redis_client: Redis, redis_server: RedisServer, make_store: StoreFactory
) -> None:
    # redis-py before 8.0.1 applies the socket timeout to pub/sub's blocking read, so a quiet
    # channel ended `listen` and `submit --wait` with a TimeoutError after 2 s.
    quiet = Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=0.2)
    store = make_store(redis_client)
    seen: list[Envelope] = []

    async def follow() -> None:
        async for envelope in subscribe(quiet, job_id="live"):
            seen.append(envelope)

    live = asyncio.create_task(follow())
    waited = asyncio.create_task(wait_for(quiet, "waited", timeout=30))
    try:

        async def idle_and_alive() -> bool:
            for task in (live, waited):
                if task.done():
                    task.result()
            return await subscribers_idle(redis_client, 2, 1)

        await eventually(idle_and_alive, 10, "subscribers idle for five socket timeouts")
        await store.record(job_event("live"))
        await store.record(job_event("waited"))
        async with asyncio.timeout(10):
            assert (await waited).job_id == "waited"

        async def live_delivered() -> bool:
            if live.done():
                live.result()
            return bool(seen)

        await eventually(live_delivered, 10, "the live envelope")
        assert [e.job_id for e in seen] == ["live"]
    finally:
        for task in (live, waited):
            task.cancel()
        await asyncio.gather(live, waited, return_exceptions=True)
        await quiet.aclose()
