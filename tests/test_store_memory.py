"""What one recorded event costs in Redis memory (MEMORY USAGE, every field counted)."""

from redis.asyncio import Redis

from tests.test_store import envelope, store_for


async def test_a_dedup_marker_takes_at_most_150_bytes(redis_client: Redis) -> None:
    store = store_for(redis_client, prefix="vod")  # the default prefix
    await store.record(envelope("ai_media_audit.json"))
    marker = store.keys.seen(envelope("ai_media_audit.json").fingerprint())
    used = await redis_client.memory_usage(marker, samples=0)
    assert used is not None
    assert used <= 150
