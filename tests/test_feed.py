"""The `/events` feed survives stream entries it cannot use."""

from __future__ import annotations

import asyncio

import httpx
from redis.asyncio import Redis

from tests.conftest import Receiver
from tests.test_api import AUTH, TOKEN, events, take
from tests.test_client import job_event
from webhook.store import Store


async def test_an_entry_without_an_envelope_is_skipped_and_the_feed_goes_on(
    start_receiver: Receiver, http: httpx.AsyncClient, redis_client: Redis
) -> None:
    store = Store(redis_client, prefix="vod", stream_maxlen=10_000, dedup_ttl_seconds=3600)
    base = await start_receiver(api_token=TOKEN)
    async with events(http, f"{base}/events") as source:
        await redis_client.xadd("vod:stream", {"something": "else"})
        recorded = await store.record(job_event("j1"))
        [(entry_id, envelope)] = await take(source, 1)
    assert entry_id == recorded.id
    assert envelope["job_id"] == "j1"


async def test_event_streams_beyond_the_cap_get_503_with_retry_after(
    start_receiver: Receiver, http: httpx.AsyncClient
) -> None:
    base = await start_receiver(api_token=TOKEN, max_event_streams=1)
    async with events(http, f"{base}/events"):
        refused = await http.get(f"{base}/events", headers=AUTH)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "10"
        assert refused.json()["error"] == "too_many_streams"

    # The slot is free again once the server sees the first stream end.
    async def status() -> int:
        async with http.stream("GET", f"{base}/events", headers=AUTH) as response:
            return response.status_code

    for _ in range(200):
        if await status() == 200:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the first stream's slot was never freed")
