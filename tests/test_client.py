"""The subscriber library against real Redis: live, durable, replayed."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from tests.conftest import RedisServer, job_callback, stream_entries
from webhook.client import ConsumerOptions, Handler, consume, parse_since, replay, subscribe
from webhook.events import Envelope, parse_callback
from webhook.store import Store

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def job_event(job_id: str, status: str = "success") -> Envelope:
    return parse_callback(json.dumps(job_callback(job_id, status)).encode(), NOW)


def upload_event(video_id: str) -> Envelope:
    body = {"EventType": "FileUploadComplete", "VideoId": video_id, "Status": "success"}
    return parse_callback(json.dumps(body).encode(), NOW)


async def collect(
    redis: Redis,
    group: str,
    consumer: str,
    count: int,
    options: ConsumerOptions,
    handler: Handler | None = None,
    *,
    peers: tuple[str, ...] = (),
) -> list[Envelope]:
    """Run `consumer` (and `peers`, in the same group) until `count` envelopes are handled."""
    seen: list[Envelope] = []
    done = asyncio.Event()

    async def record(envelope: Envelope) -> None:
        if handler is not None:
            await handler(envelope)
        seen.append(envelope)
        if len(seen) >= count:
            done.set()

    consumers = asyncio.gather(
        *(
            consume(redis, group, name, record, options=options, stop=done)
            for name in (consumer, *peers)
        )
    )
    async with asyncio.timeout(10):
        await consumers
    return seen


async def test_subscribe_filters_by_type_and_job(store: Store, redis_client: Redis) -> None:
    received: dict[str, list[Envelope]] = {"all": [], "type": [], "job": []}
    ready = asyncio.Semaphore(0)

    async def follow(name: str, **filters: Any) -> None:
        async for envelope in subscribe(redis_client, on_subscribed=ready.release, **filters):
            received[name].append(envelope)

    tasks = [
        asyncio.create_task(follow("all")),
        asyncio.create_task(follow("type", event_type="FileUploadComplete")),
        asyncio.create_task(follow("job", job_id="j2")),
    ]
    for _ in tasks:
        await ready.acquire()
    for envelope in (job_event("j1"), upload_event("v1"), job_event("j2")):
        await store.record(envelope)
    for _ in range(100):
        if [len(received[name]) for name in ("all", "type", "job")] == [3, 1, 1]:
            break
        await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    assert [e.job_id or e.video_id for e in received["all"]] == ["j1", "v1", "j2"]
    assert [e.video_id for e in received["type"]] == ["v1"]
    assert [e.job_id for e in received["job"]] == ["j2"]
    assert all(e.id for e in received["all"])


async def test_replay_from_an_id_a_time_and_with_filters(store: Store, redis_client: Redis) -> None:
    ids = [
        (await store.record(e)).id for e in (job_event("j1"), upload_event("v1"), job_event("j2"))
    ]
    everything = [e async for e in replay(redis_client)]
    assert [e.id for e in everything] == ids
    assert [e.id async for e in replay(redis_client, ids[0])] == ids[1:]
    assert [e.job_id async for e in replay(redis_client, event_type="DynamicImageComplete")] == [
        "j1",
        "j2",
    ]
    assert [e.id async for e in replay(redis_client, job_id="j2")] == [ids[2]]
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert [e async for e in replay(redis_client, later)] == []
    assert len([e async for e in replay(redis_client, "0", page=1)]) == 3
    with pytest.raises(ValueError, match="not a stream id"):
        [e async for e in replay(redis_client, "yesterday")]


@pytest.mark.parametrize(
    ("given", "since"),
    [
        ("0", "0"),
        ("1732476000000-0", "1732476000000-0"),
        ("1732476000000", "1732476000000"),
        ("2026-11-24T10:00:00Z", datetime(2026, 11, 24, 10, tzinfo=UTC)),
        ("2026-11-24T11:00:00+01:00", datetime(2026, 11, 24, 10, tzinfo=UTC)),
    ],
)
def test_since_is_a_stream_id_or_a_time_with_its_zone(given: str, since: str | datetime) -> None:
    assert parse_since(given) == since


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("last tuesday", "'last tuesday' is neither a stream id nor an ISO time"),
        ("1732476000000-", "'1732476000000-' is neither a stream id nor an ISO time"),
        ("2026-11-24T10:00:00", "needs a time zone, e.g. 2026-11-24T10:00:00Z"),
        ("2026-11-24", "needs a time zone, e.g. 2026-11-24T10:00:00Z"),
    ],
)
def test_since_that_is_neither_says_why(given: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_since(given)


async def test_replay_skips_and_logs_entries_that_hold_no_envelope(
    store: Store, redis_client: Redis
) -> None:
    first = await store.record(job_event("j1"))
    junk = [
        await redis_client.xadd("vod:stream", {"something": "else"}),
        await redis_client.xadd("vod:stream", {"envelope": "not json"}),
    ]
    last = await store.record(job_event("j2"))
    with capture_logs() as logs:
        assert [e.id async for e in replay(redis_client)] == [first.id, last.id]
    assert [log["id"] for log in logs if log["event"] == "replay_entry_skipped"] == junk


async def test_a_group_gets_each_envelope_once_across_consumers(
    store: Store, redis_client: Redis
) -> None:
    for n in range(10):
        await store.record(job_event(f"j{n}"))
    options = ConsumerOptions(start="beginning", block_seconds=0.1, batch=3)
    handled = await collect(redis_client, "g", "a", 10, options, peers=("b",))
    assert sorted(e.job_id or "" for e in handled) == sorted(f"j{n}" for n in range(10))
    assert (await redis_client.xpending("vod:stream", "g"))["pending"] == 0
    # A group that starts now (here: created at the stream's end, as start="now" does) sees
    # only what comes next.
    await redis_client.xgroup_create("vod:stream", "late", id="$")
    later = asyncio.create_task(
        collect(redis_client, "late", "c", 1, ConsumerOptions(block_seconds=0.1))
    )
    await store.record(job_event("j-new"))
    assert [e.job_id for e in await later] == ["j-new"]


async def test_poison_entries_are_dead_lettered_and_do_not_block_the_group(
    store: Store, redis_client: Redis
) -> None:
    for job_id in ("good-1", "poison", "good-2"):
        await store.record(job_event(job_id))

    handled: list[str | None] = []
    given_up = asyncio.Event()

    async def picky(envelope: Envelope) -> None:
        if envelope.job_id == "poison":
            raise RuntimeError("cannot handle this one")
        handled.append(envelope.job_id)

    async def watch_dead_letters() -> None:
        while not await redis_client.xlen("vod:deadletter"):  # noqa: ASYNC110 - state in Redis
            await asyncio.sleep(0.05)
        given_up.set()

    options = ConsumerOptions(
        start="beginning", claim_idle_seconds=0.1, max_deliveries=3, block_seconds=0.1
    )
    async with asyncio.timeout(10):
        await asyncio.gather(
            consume(redis_client, "g", "a", picky, options=options, stop=given_up),
            watch_dead_letters(),
        )
    assert handled == ["good-1", "good-2"]
    [(_, dead)] = await stream_entries(redis_client, "vod:deadletter")
    assert json.loads(dead["envelope"])["job_id"] == "poison"
    assert dead["error"] == "RuntimeError: cannot handle this one"
    assert dead["deliveries"] == "3"
    assert dead["group"] == "g"
    assert (await redis_client.xpending("vod:stream", "g"))["pending"] == 0


CRASHING_CONSUMER = textwrap.dedent(
    """
    import asyncio, sys
    from redis.asyncio import Redis
    from webhook.client import ConsumerOptions, consume

    async def handle(envelope):
        print(envelope.job_id, flush=True)
        await asyncio.sleep(60)  # killed here, mid-handling

    asyncio.run(consume(Redis.from_url(sys.argv[1], decode_responses=True), "g", "doomed",
                        handle, options=ConsumerOptions(start="beginning")))
    """
)


async def test_a_crashed_consumers_entry_is_redelivered_to_a_peer(
    store: Store, redis_client: Redis, redis_server: RedisServer
) -> None:
    await store.record(job_event("j1"))
    with subprocess.Popen(  # noqa: ASYNC220 - started once, read in a thread
        [sys.executable, "-c", CRASHING_CONSUMER, redis_server.url],
        stdout=subprocess.PIPE,
        text=True,
    ) as doomed:
        assert doomed.stdout is not None
        assert (await asyncio.to_thread(doomed.stdout.readline)).strip() == "j1"
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
    pending = await redis_client.xpending_range("vod:stream", "g", min="-", max="+", count=10)
    assert [p["consumer"] for p in pending] == ["doomed"]

    options = ConsumerOptions(claim_idle_seconds=0.3, block_seconds=0.1)
    [redelivered] = await collect(redis_client, "g", "peer", 1, options)
    assert redelivered.job_id == "j1"
    assert (await redis_client.xpending("vod:stream", "g"))["pending"] == 0


async def test_a_restarted_consumer_first_finishes_what_it_had_been_given(
    store: Store, redis_client: Redis
) -> None:
    await store.record(job_event("j1"))
    await redis_client.xgroup_create("vod:stream", "g", id="0")
    # Delivered to "worker" earlier, never acknowledged: it stopped meanwhile.
    await redis_client.xreadgroup("g", "worker", {"vod:stream": ">"})
    options = ConsumerOptions(claim_idle_seconds=3600, block_seconds=0.1)
    [again] = await collect(redis_client, "g", "worker", 1, options)
    assert again.job_id == "j1"


def test_the_client_loads_nothing_of_the_server_or_the_sdk() -> None:
    # A fresh interpreter: this one has imported everything already.
    code = "import sys, webhook.client, webhook.events, webhook.keys; print(*sorted(sys.modules))"
    loaded = set(subprocess.check_output([sys.executable, "-c", code], text=True).split())
    heavy = {"starlette", "uvicorn", "fakeredis", "lupa", "tqdm", "pydantic_settings", "httpx",
             "sse_starlette", "orjson", "alibabacloud_vod20170321", "alibabacloud_credentials",
             "Tea"}  # fmt: skip
    assert {name.split(".")[0] for name in loaded} & heavy == set()
