"""The read API over loopback HTTP: `GET /events` (SSE) and `GET /jobs/{job_id}`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse
from redis.asyncio import Redis

from tests.conftest import Receiver, RedisServer, vod_headers
from tests.test_app import SUCCESS, job_body, post
from tests.test_client import job_event, upload_event
from webhook.feed import Ended, Entry, Subscription
from webhook.store import Store

TOKEN = "s3cret-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


Events = AsyncIterator[ServerSentEvent]


@asynccontextmanager
async def events(
    http: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[Events]:
    async with aconnect_sse(http, "GET", url, headers={**AUTH, **(headers or {})}) as source:
        assert source.response.status_code == 200
        yield source.aiter_sse()


async def take(source: Events, count: int) -> list[tuple[str, dict[str, Any]]]:
    """The next `count` events as (id, envelope)."""
    async with asyncio.timeout(10):
        return [
            (event.id, json.loads(event.data))
            for event in [await anext(source) for _ in range(count)]
        ]


async def test_read_api_is_off_without_a_token(
    start_receiver: Receiver, http: httpx.AsyncClient
) -> None:
    base = await start_receiver()
    for path in ("/events", "/jobs/j1"):
        response = await http.get(f"{base}{path}", headers=AUTH)
        assert response.status_code == 404


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ],
)
async def test_read_api_requires_the_bearer_token(
    start_receiver: Receiver, http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    base = await start_receiver(api_token=TOKEN)
    for path in ("/events", "/jobs/j1"):
        response = await http.get(f"{base}{path}", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"


async def test_jobs_endpoint_returns_the_record_or_404(
    start_receiver: Receiver, http: httpx.AsyncClient, store: Store
) -> None:
    base = await start_receiver(api_token=TOKEN)
    recorded = await store.record(job_event("j1"))
    job = await http.get(f"{base}/jobs/j1", headers=AUTH)
    assert job.status_code == 200
    assert job.json()["status"] == "success"
    assert job.json()["envelope_id"] == recorded.id
    assert job.json()["result"]["width"] == 640
    missing = await http.get(f"{base}/jobs/nope", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json() == {"error": "not_found", "detail": "no job nope is recorded"}


async def test_events_replay_history_then_continue_live(
    start_receiver: Receiver, http: httpx.AsyncClient, store: Store
) -> None:
    base = await start_receiver(api_token=TOKEN)
    first = await store.record(job_event("j1"))
    second = await store.record(upload_event("v1"))
    async with events(http, f"{base}/events?since=0") as source:
        history = await take(source, 2)
        assert [entry_id for entry_id, _ in history] == [first.id, second.id]
        assert [e["id"] for _, e in history] == [first.id, second.id]
        live = await store.record(job_event("j2"))
        [(entry_id, envelope)] = await take(source, 1)
        assert entry_id == live.id
        assert envelope["job_id"] == "j2"


async def test_events_without_since_are_live_only_and_filterable(
    start_receiver: Receiver, http: httpx.AsyncClient, store: Store
) -> None:
    base = await start_receiver(api_token=TOKEN)
    await store.record(job_event("old"))
    async with (
        events(http, f"{base}/events") as everything,
        events(http, f"{base}/events?type=FileUploadComplete") as uploads,
        events(http, f"{base}/events?job=j2") as one_job,
    ):
        for envelope in (job_event("j1"), upload_event("v1"), job_event("j2")):
            await store.record(envelope)
        assert [e.get("job_id") or e.get("video_id") for _, e in await take(everything, 3)] == [
            "j1",
            "v1",
            "j2",
        ]
        assert [e["video_id"] for _, e in await take(uploads, 1)] == ["v1"]
        assert [e["job_id"] for _, e in await take(one_job, 1)] == ["j2"]


async def test_last_event_id_resumes_exactly_after_what_was_seen(
    start_receiver: Receiver, http: httpx.AsyncClient, store: Store
) -> None:
    base = await start_receiver(api_token=TOKEN)
    ids = [(await store.record(job_event(f"j{n}"))).id for n in range(3)]
    async with events(http, f"{base}/events?since=0") as source:
        seen = await take(source, 2)
    ids += [(await store.record(job_event(f"j{n}"))).id for n in range(3, 5)]
    async with events(http, f"{base}/events?since=0", {"Last-Event-ID": seen[-1][0]}) as source:
        resumed = await take(source, 3)
    assert [entry_id for entry_id, _ in resumed] == ids[2:]


async def test_open_streams_go_on_after_redis_restarts(
    start_receiver: Receiver, http: httpx.AsyncClient, own_redis: RedisServer
) -> None:
    base = await start_receiver(redis_url=own_redis.url, api_token=TOKEN)
    async with events(http, f"{base}/events") as source:
        assert (await post(http, base, job_body(1))).status_code == 200
        [(_, before)] = await take(source, 1)
        own_redis.stop()  # the feed's read fails; it retries until Redis is back
        own_redis.start()
        assert (await post(http, base, job_body(2))).status_code == 200
        [(_, after)] = await take(source, 1)
    assert [before["job_id"], after["job_id"]] == [f"{1:032x}", f"{2:032x}"]


async def test_a_replay_redis_cannot_serve_ends_the_stream_for_the_client_to_retry(
    start_receiver: Receiver, http: httpx.AsyncClient, own_redis: RedisServer
) -> None:
    base = await start_receiver(redis_url=own_redis.url, api_token=TOKEN)
    assert (await post(http, base, job_body(1))).status_code == 200
    own_redis.stop()
    async with events(http, f"{base}/events?since=0") as source:
        async with asyncio.timeout(10):
            assert [event async for event in source] == []  # ended, not hanging
    own_redis.start()
    assert (await post(http, base, job_body(2))).status_code == 200
    async with events(http, f"{base}/events?since=0") as source:
        [(_, envelope)] = await take(source, 1)  # Redis kept nothing of job 1
    assert envelope["job_id"] == f"{2:032x}"


async def test_resuming_from_an_entry_the_cap_trimmed_gives_what_is_retained(
    start_receiver: Receiver, http: httpx.AsyncClient, store: Store, redis_client: Redis
) -> None:
    base = await start_receiver(api_token=TOKEN)
    ids = [(await store.record(job_event(f"j{n}"))).id for n in range(5)]
    await redis_client.xtrim("vod:stream", maxlen=2, approximate=False)  # as the cap would
    async with events(http, f"{base}/events", {"Last-Event-ID": ids[0]}) as source:
        resumed = await take(source, 2)
    assert [entry_id for entry_id, _ in resumed] == ids[3:]


async def test_bad_since_is_a_400(start_receiver: Receiver, http: httpx.AsyncClient) -> None:
    base = await start_receiver(api_token=TOKEN)
    response = await http.get(f"{base}/events?since=yesterday", headers=AUTH)
    assert response.status_code == 400
    assert "since" in response.json()["detail"]


async def test_idle_streams_get_heartbeats(
    start_receiver: Receiver, http: httpx.AsyncClient
) -> None:
    base = await start_receiver(api_token=TOKEN, sse_heartbeat_seconds=0.2)
    async with http.stream("GET", f"{base}/events", headers=AUTH) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async with asyncio.timeout(5):
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    break  # a comment line: the heartbeat


async def test_a_client_that_falls_behind_is_cut_off_and_catches_up_losslessly(
    start_receiver: Receiver, http: httpx.AsyncClient, store: Store
) -> None:
    base = await start_receiver(api_token=TOKEN, sse_queue_size=1)
    ids = []
    got: list[str] = []

    async def produce() -> None:
        for n in range(60):
            ids.append((await store.record(job_event(f"j{n}"))).id)

    async def read_all() -> None:
        while len(got) < 60:
            headers = {"Last-Event-ID": got[-1]} if got else {}
            async with events(http, f"{base}/events?since=0", headers) as source:
                async for event in source:
                    got.append(event.id)
                    if len(got) == 60:
                        return

    async with asyncio.timeout(20):
        await asyncio.gather(produce(), read_all())
    assert got == ids  # nothing lost, nothing twice, in order, however often it was cut off


def test_a_subscription_that_overflows_ends_instead_of_blocking() -> None:
    async def scenario() -> None:
        subscription = Subscription(2, max_bytes=1 << 20)
        for n in range(5):
            subscription.offer([Entry(f"{n}-0", "{}")])
        assert subscription.ended
        with pytest.raises(Ended):
            await subscription.next()

    asyncio.run(scenario())


async def test_the_receiver_keeps_answering_while_a_stream_reader_stalls(
    start_receiver: Receiver, http: httpx.AsyncClient
) -> None:
    base = await start_receiver(api_token=TOKEN, sse_queue_size=5)

    async with (
        http.stream("GET", f"{base}/events", headers=AUTH) as stalled,  # not read meanwhile
        httpx.AsyncClient() as other,
    ):
        for n in range(30):
            body = SUCCESS.replace(b"b1e7a3c59e2f4d6f8a0b1c2d3e4f5a6b", f"job-{n}".encode())
            response = await other.post(
                f"{base}/callbacks/vod", content=body, headers=vod_headers()
            )
            assert response.status_code == 200
        # Small envelopes fit the socket's buffers, so the stream was never cut off (that is
        # test_http_limits' flood): the reader, resuming, finds all 30 in order.
        ids: list[str] = []
        async with asyncio.timeout(10):
            async for line in stalled.aiter_lines():
                if line.startswith("id: "):
                    ids.append(line.removeprefix("id: "))
                if len(ids) == 30:
                    break
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert len(set(ids)) == 30
