"""Stream ids without XINFO STREAM per event: still strictly increasing, whoever wrote last."""

import json

from redis.asyncio import Redis

from tests.conftest import stream_entries
from tests.test_store import envelope
from webhook.events import Envelope
from webhook.store import Store


def job_outcome(job_id: str) -> Envelope:
    info = dict(envelope().payload["DynamicImageJobInfo"], JobId=job_id)
    return envelope(JobId=job_id, DynamicImageJobInfo=json.dumps(info))


async def _xinfo_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_xinfo|stream", stats.get("cmdstat_xinfo", {})).get("calls", 0))


async def test_recording_does_not_read_the_stream_back(redis_client: Redis, store: Store) -> None:
    await store.record(envelope("ai_media_audit.json", MediaId="first"))
    before = await _xinfo_calls(redis_client)
    for i in range(20):
        await store.record(envelope("ai_media_audit.json", MediaId=f"m{i}"))
        await store.record(job_outcome(f"job{i}"))
    assert await _xinfo_calls(redis_client) == before


async def test_ids_stay_ahead_of_entries_another_writer_added(
    redis_client: Redis, store: Store
) -> None:
    first = await store.record(envelope("ai_media_audit.json", MediaId="a"))
    # An older version of the receiver (no kept last id) appends far ahead of the clock.
    ahead = f"{int(first.id.split('-')[0]) + 60_000}-7"
    await redis_client.xadd("vod:stream", {"envelope": "{}"}, id=ahead)
    second = await store.record(envelope("ai_media_audit.json", MediaId="b"))
    assert second.id == f"{ahead.split('-')[0]}-8"
    entry_id, fields = (await stream_entries(redis_client, "vod:stream"))[-1]
    assert entry_id == second.id
    assert fields["envelope"].startswith(f'{{"id":"{second.id}"')


async def test_ids_continue_when_the_kept_last_id_is_gone(
    redis_client: Redis, store: Store
) -> None:
    first = await store.record(job_outcome("one"))
    await redis_client.delete("vod:stream:last-id")
    await redis_client.xadd("vod:stream", {"envelope": "{}"}, id=f"{first.id.split('-')[0]}-5")
    second = await store.record(job_outcome("two"))
    assert tuple(map(int, second.id.split("-"))) > tuple(map(int, first.id.split("-")))
    assert second.id != f"{first.id.split('-')[0]}-5"
