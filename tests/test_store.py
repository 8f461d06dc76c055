import asyncio
from hashlib import sha1
import json
from collections.abc import Callable
from datetime import UTC, datetime

from redis.asyncio import Redis

from tests.conftest import free_port, published, sample_path, stream_entries
from webhook.embedded import EmbeddedRedis
from webhook.events import Envelope, parse_callback
from webhook.settings import Settings
from webhook.store import Store, script_source

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def envelope(name: str = "dynamic_image_success.json", **changes: object) -> Envelope:
    data = json.loads(sample_path(name).read_text())
    data.update(changes)
    return parse_callback(json.dumps(data).encode(), NOW)


def store_for(redis: Redis, **options: int | str) -> Store:
    settings: dict[str, int | str] = {
        "prefix": "t",
        "stream_maxlen": 1000,
        "dedup_ttl_seconds": 3600,
    }
    settings.update(options)
    return Store(redis, **settings)  # type: ignore[arg-type]


async def test_job_outcome_is_stored_streamed_and_published(redis_client: Redis) -> None:
    store = store_for(redis_client)
    pubsub = redis_client.pubsub()
    job_id = "b1e7a3c59e2f4d6f8a0b1c2d3e4f5a6b"
    await pubsub.subscribe("t:events", "t:events:DynamicImageComplete", f"t:jobs:{job_id}")

    recorded = await store.record(envelope())
    assert not recorded.duplicate

    entries = await stream_entries(redis_client, "t:stream")
    assert [entry_id for entry_id, _ in entries] == [recorded.id]
    streamed = json.loads(entries[0][1]["envelope"])
    assert streamed["id"] == recorded.id
    assert streamed["job_id"] == job_id
    assert streamed["result"]["file_size"] == 1048576

    messages = [(m["channel"], m["data"]) for m in await published(pubsub, 3)]
    assert {channel for channel, _ in messages} == {
        "t:events",
        "t:events:DynamicImageComplete",
        f"t:jobs:{job_id}",
    }
    assert all(data == entries[0][1]["envelope"] for _, data in messages)
    await pubsub.aclose()

    job = await store.job(job_id)
    assert job is not None
    assert job["status"] == "success"
    assert job["video_id"] == "3d97d4aa1e5c4fb8a2f1c0b9e4d213dd"
    assert job["file_url"] == "http://vod.example.com/dynamic/e6b8a1c2.gif"
    assert (job["file_size"], job["fps"], job["width"], job["height"]) == (
        "1048576",
        "15",
        "640",
        "360",
    )
    assert job["envelope_id"] == recorded.id
    assert job["source"] == "callback"
    assert job["event_time"] == "2017-03-20T07:49:17+00:00"
    assert 3500 < await redis_client.ttl(f"t:job:{job_id}") <= 3600


async def test_failed_job_records_its_error(redis_client: Redis) -> None:
    store = store_for(redis_client)
    await store.record(envelope("dynamic_image_fail.json"))
    job = await store.job("c2f8b4d6a0e1f2a3b4c5d6e7f8a9b0c1")
    assert job is not None
    assert job["status"] == "fail"
    assert job["error_code"] == "InvalidParameter.Seek"
    assert "file_url" not in job


async def test_outcome_is_recorded_once_whatever_the_resent_event_time(redis_client: Redis) -> None:
    store = store_for(redis_client)
    first = await store.record(envelope())
    again = await store.record(envelope(EventTime="2017-03-20T07:49:20Z"))
    assert again.duplicate
    assert again.id == first.id
    assert await redis_client.xlen("t:stream") == 1


async def test_concurrent_deliveries_fan_out_once(redis_client: Redis) -> None:
    store = store_for(redis_client)
    results = await asyncio.gather(*(store.record(envelope()) for _ in range(20)))
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.id for r in results}) == 1
    assert await redis_client.xlen("t:stream") == 1


async def test_other_events_dedup_on_their_identity(redis_client: Redis) -> None:
    store = store_for(redis_client)
    first = await store.record(envelope("ai_media_audit.json"))
    again = await store.record(envelope("ai_media_audit.json"))
    other = await store.record(envelope("ai_media_audit.json", MediaId="another"))
    assert again.duplicate
    assert again.id == first.id
    assert not other.duplicate
    assert await redis_client.xlen("t:stream") == 2
    marker = f"t:seen:{envelope('ai_media_audit.json').fingerprint()}"
    assert await redis_client.get(marker) == first.id
    assert 0 < await redis_client.ttl(marker) <= 3600


async def test_stream_ids_increase_and_the_stream_is_capped(redis_client: Redis) -> None:
    store = store_for(redis_client, stream_maxlen=10)
    ids = [
        (await store.record(envelope("ai_media_audit.json", MediaId=f"m{i}"))).id
        for i in range(300)
    ]
    as_tuples = [tuple(int(part) for part in entry_id.split("-")) for entry_id in ids]
    assert as_tuples == sorted(as_tuples)
    assert len(set(ids)) == 300
    # Approximate trimming keeps whole macro-nodes, so a little more than 10 may remain.
    assert await redis_client.xlen("t:stream") < 300


async def test_ids_continue_after_the_newest_entry_was_deleted(redis_client: Redis) -> None:
    store = store_for(redis_client)
    first = await store.record(envelope("ai_media_audit.json", MediaId="a"))
    await redis_client.xdel("t:stream", first.id)
    second = await store.record(envelope("ai_media_audit.json", MediaId="b"))
    assert second.id != first.id
    assert await redis_client.xlen("t:stream") == 1


async def test_script_is_reloaded_after_redis_forgets_it(redis_client: Redis) -> None:
    store = store_for(redis_client)
    await store.ensure_ready()
    await redis_client.script_flush()
    recorded = await store.record(envelope())
    assert not recorded.duplicate
    await redis_client.script_flush()
    await store.ensure_ready()
    shas = [
        sha1(script_source(name).encode()).hexdigest()
        for name in ("record_event", "record_submission")
    ]
    assert (await redis_client.script_exists(*shas)) == [True, True]


async def test_embedded_store_runs_the_same_script(make_settings: Callable[..., Settings]) -> None:
    embedded = EmbeddedRedis(free_port())
    embedded.start()
    try:
        store = Store.from_settings(make_settings(redis_url=embedded.url))
        await store.ensure_ready()
        first = await store.record(envelope())
        again = await store.record(envelope())
        assert not first.duplicate
        assert again.duplicate
        assert again.id == first.id
        job = await store.job("b1e7a3c59e2f4d6f8a0b1c2d3e4f5a6b")
        assert job is not None
        assert job["status"] == "success"
        assert await store.redis.xlen("vod:stream") == 1
        await store.close()
    finally:
        embedded.stop()
