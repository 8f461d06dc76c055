"""The `/events` feed survives stream entries it cannot use."""

from __future__ import annotations

import httpx
from redis.asyncio import Redis

from tests.conftest import Receiver
from tests.test_api import TOKEN, events, take
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
