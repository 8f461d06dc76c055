"""What one recorded event costs in Redis memory (MEMORY USAGE, every field counted)."""

import json
from datetime import timedelta

from redis.asyncio import Redis

from tests.test_store import NOW, envelope
from webhook.client import wait_for
from webhook.events import Envelope
from webhook.jobs import job_view
from webhook.store import Store

JOB = "5d3cd7e2a1f84b6b9bd3c0f2e8a00001"
# As long as VOD's OSS URLs are.
LONG_URL = f"https://outin-0123456789abcdef.oss-cn-shanghai.aliyuncs.com/dynamic-image/{JOB}.gif"


def job_outcome(job_id: str, file_url: str) -> Envelope:
    info = dict(envelope().payload["DynamicImageJobInfo"], JobId=job_id, FileURL=file_url)
    return envelope(JobId=job_id, DynamicImageJobInfo=json.dumps(info))


async def test_a_dedup_marker_takes_at_most_150_bytes(redis_client: Redis, store: Store) -> None:
    await store.record(envelope("ai_media_audit.json"))
    marker = store.shared.seen(envelope("ai_media_audit.json").fingerprint())
    used = await redis_client.memory_usage(marker, samples=0)
    assert used is not None
    assert used <= 150


async def test_a_finished_job_record_takes_at_most_1_5_kib(
    redis_client: Redis, store: Store
) -> None:
    await store.record(job_outcome(JOB, LONG_URL))
    used = [
        await redis_client.memory_usage(key, samples=0)
        async for key in redis_client.scan_iter(f"vod:job:{JOB}*")
    ]
    assert len(used) == 2  # the hash and its envelope
    assert sum(size or 0 for size in used) <= 1536


async def test_a_job_record_outliving_its_stream_entry_still_answers(
    redis_client: Redis, store: Store
) -> None:
    submission = {"video_id": "v", "template_id": "t", "submitted_at": "2026-11-24T11:59:00Z"}
    await store.record_submission(JOB, "v", submission, NOW - timedelta(minutes=1))
    recorded = await store.record(job_outcome(JOB, LONG_URL))
    await redis_client.delete("vod:stream")

    record = await store.job(JOB)
    assert record is not None
    assert record["file_url"] == LONG_URL  # as the hash held it before
    view = job_view(JOB, record)
    assert view["result"]["file_url"] == LONG_URL
    assert view["submission"]["template_id"] == "t"
    assert view["latency_ms"] is not None
    assert view["envelope_id"] == recorded.id
    # Every time in one form, as the envelope writes them.
    times = [view[name] for name in ("submitted_at", "completed_at", "received_at")]
    assert all(isinstance(t, str) and t.endswith("Z") for t in times), times
    waited = await wait_for(redis_client, JOB, timeout=5, prefix="vod")
    assert waited.id == recorded.id
    assert waited.submission is not None
