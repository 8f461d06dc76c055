import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from hashlib import sha1
from typing import Any

import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis
from redis import exceptions
from redis.asyncio import Redis
from structlog.testing import capture_logs

from tests.conftest import (
    RedisServer,
    StoreFactory,
    free_port,
    published,
    sample_path,
    stream_entries,
)
from webhook.embedded import EmbeddedRedis
from webhook.errors import StoreUnavailable
from webhook.events import Envelope, JobError, parse_callback
from webhook.jobs import job_view
from webhook.settings import Settings
from webhook.store import Recorded, Store, UnsupportedRedis, failure_kind, script_source

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def envelope(name: str = "dynamic_image_success.json", **changes: object) -> Envelope:
    data = json.loads(sample_path(name).read_text())
    data.update(changes)
    return parse_callback(json.dumps(data).encode(), NOW)


@pytest.fixture
def store_for(make_store: StoreFactory) -> Callable[..., Store]:
    """Stores with this module's defaults (prefix "t", a 1,000-entry stream), closed after."""

    def build(redis: Redis, **options: Any) -> Store:
        store: Store = make_store(redis, **({"prefix": "t", "stream_maxlen": 1000} | options))
        return store

    return build


async def test_job_outcome_is_stored_streamed_and_published(
    redis_client: Redis, store_for: Callable[..., Store]
) -> None:
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
    assert job["event_time"] == "2017-03-20T07:49:17Z"
    assert 3500 < await redis_client.ttl(f"t:job:{job_id}") <= 3600


async def test_failed_job_records_its_error(
    redis_client: Redis, store_for: Callable[..., Store]
) -> None:
    store = store_for(redis_client)
    await store.record(envelope("dynamic_image_fail.json"))
    job = await store.job("c2f8b4d6a0e1f2a3b4c5d6e7f8a9b0c1")
    assert job is not None
    assert job["status"] == "fail"
    assert job["error_code"] == "InvalidParameter.Seek"
    assert "file_url" not in job


async def test_outcome_is_recorded_once_whatever_the_resent_event_time(
    redis_client: Redis, store_for: Callable[..., Store]
) -> None:
    store = store_for(redis_client)
    first = await store.record(envelope())
    again = await store.record(envelope(EventTime="2017-03-20T07:49:20Z"))
    assert again.duplicate
    assert again.id == first.id
    assert await redis_client.xlen("t:stream") == 1


async def test_concurrent_deliveries_fan_out_once(
    redis_client: Redis, store_for: Callable[..., Store]
) -> None:
    store = store_for(redis_client)
    results = await asyncio.gather(*(store.record(envelope()) for _ in range(20)))
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.id for r in results}) == 1
    assert await redis_client.xlen("t:stream") == 1


async def test_other_events_dedup_on_their_identity(
    redis_client: Redis, store_for: Callable[..., Store]
) -> None:
    store = store_for(redis_client)
    first = await store.record(envelope("ai_media_audit.json"))
    again = await store.record(envelope("ai_media_audit.json"))
    other = await store.record(envelope("ai_media_audit.json", MediaId="another"))
    assert again.duplicate
    assert again.id == first.id
    assert not other.duplicate
    assert await redis_client.xlen("t:stream") == 2
    marker = store.shared.seen(envelope("ai_media_audit.json").fingerprint())
    assert await redis_client.get(marker) == first.id
    assert 0 < await redis_client.ttl(marker) <= 3600


def stream_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id as (ms, seq), which compares as Redis orders ids."""
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


async def test_stream_ids_increase_and_the_stream_is_capped(
    redis_client: Redis, store_for: Callable[..., Store]
) -> None:
    store = store_for(redis_client, stream_maxlen=10)
    ids = [
        (await store.record(envelope("ai_media_audit.json", MediaId=f"m{i}"))).id
        for i in range(300)
    ]
    as_tuples = [stream_id(entry_id) for entry_id in ids]
    assert as_tuples == sorted(as_tuples)
    assert len(set(ids)) == 300
    # Approximate trimming drops whole macro-nodes only: at most one node more than 10 remains.
    config = await redis_client.config_get("stream-node-max-entries")
    node = int(config["stream-node-max-entries"] or 0)
    assert 10 <= await redis_client.xlen("t:stream") <= 10 + node


async def test_ids_continue_after_the_newest_entry_was_deleted(
    redis_client: Redis, store_for: Callable[..., Store]
) -> None:
    store = store_for(redis_client)
    first = await store.record(envelope("ai_media_audit.json", MediaId="a"))
    await redis_client.xdel("t:stream", first.id)
    second = await store.record(envelope("ai_media_audit.json", MediaId="b"))
    # Redis refuses an id at or below the deleted one's: the next must still be greater.
    assert stream_id(second.id) > stream_id(first.id)
    assert await redis_client.xlen("t:stream") == 1


async def test_script_is_reloaded_after_redis_forgets_it(
    redis_client: Redis, store_for: Callable[..., Store]
) -> None:
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


SUBMITTED_AT = datetime(2017, 3, 20, 7, 49, 10, tzinfo=UTC)
JOB = "b1e7a3c59e2f4d6f8a0b1c2d3e4f5a6b"
SUBMISSION: dict[str, object] = {"template_id": "tpl", "tags": {"k": "v"}}


async def submit(store: Store, job_id: str = JOB) -> Recorded | None:
    return await store.record_submission(
        job_id, "3d97d4aa1e5c4fb8a2f1c0b9e4d213dd", SUBMISSION, SUBMITTED_AT
    )


async def test_outcome_after_submission_is_correlated(
    redis_client: Redis, store_for: Callable[..., Store]
) -> None:
    store = store_for(redis_client)
    await submit(store)
    assert [job_id for job_id, _ in await store.pending_jobs()] == [JOB]
    assert (await store.job(JOB) or {})["status"] == "submitted"

    pubsub = redis_client.pubsub()
    await pubsub.subscribe(f"t:jobs:{JOB}")
    recorded = await store.record(envelope())
    [message] = await published(pubsub, 2, within=1)
    await pubsub.aclose()
    out = Envelope.model_validate_json(message["data"])
    assert out.id == recorded.id
    assert out.submission is not None
    assert out.submission["template_id"] == "tpl"
    assert out.submission["tags"] == {"k": "v"}
    # EventTime 07:49:17 minus submission at 07:49:10.
    assert out.submission["latency_ms"] == 7000
    assert await store.pending_jobs() == []
    assert (await store.job(JOB) or {})["correlated"] == "1"


async def test_outcome_before_submission_yields_exactly_one_correlated_envelope(
    redis_client: Redis,
    store_for: Callable[..., Store],
) -> None:
    store = store_for(redis_client)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(f"t:jobs:{JOB}")
    first = await store.record(envelope())
    late = await submit(store)
    again = await submit(store)
    messages = [
        Envelope.model_validate_json(m["data"]) for m in await published(pubsub, 3, within=1)
    ]
    await pubsub.aclose()
    assert [m.submission is not None for m in messages] == [False, True]
    assert messages[0].id == first.id
    assert late is not None
    assert messages[1].id == late.id
    assert again is None
    assert messages[1].submission is not None
    assert messages[1].submission["latency_ms"] == 7000
    assert await store.pending_jobs() == []
    stored = Envelope.model_validate_json((await store.job(JOB) or {})["envelope"])
    assert stored == messages[1]
    # The job's outcome is still recorded once: a re-sent callback is a duplicate.
    assert (await store.record(envelope())).duplicate


async def test_a_real_outcome_supersedes_a_timed_out_verdict_once(
    redis_client: Redis, store_for: Callable[..., Store]
) -> None:
    store = store_for(redis_client)
    await submit(store)
    verdict = Envelope(
        event_type="DynamicImageComplete",
        status="timed_out",
        job_id=JOB,
        received_at=NOW,
        source="reconcile",
        error=JobError(code="CallbackTimeout", message="no callback"),
        payload={},
    )
    assert not (await store.record(verdict)).duplicate
    assert (await store.record(verdict)).duplicate
    real = await store.record(envelope())
    assert not real.duplicate
    assert (await store.record(envelope())).duplicate
    job = await store.job(JOB) or {}
    assert job["status"] == "success"
    assert job["source"] == "callback"
    # Nothing of the guess survives next to the real outcome.
    assert "error_code" not in job
    assert "error_message" not in job
    assert job_view(JOB, job)["error"] is None


async def test_pending_jobs_are_listed_oldest_first_and_by_age(
    redis_client: Redis, store_for: Callable[..., Store]
) -> None:
    store = store_for(redis_client)
    for number, minute in ((1, 30), (2, 10), (3, 20)):
        at = SUBMITTED_AT.replace(minute=minute)
        await store.record_submission(f"job-{number}", "v", SUBMISSION, at)
    assert [job for job, _ in await store.pending_jobs()] == ["job-2", "job-3", "job-1"]
    cutoff = int(SUBMITTED_AT.replace(minute=25).timestamp() * 1000)
    assert [job for job, _ in await store.pending_jobs(submitted_before_ms=cutoff)] == [
        "job-2",
        "job-3",
    ]
    assert await store.video_ids(["job-1", "missing"]) == ["v", None]


async def test_redis_older_than_7_is_refused_by_name(store_for: Callable[..., Store]) -> None:
    # No Redis 6 can run here: fakeredis emulates its refusal of SET with both NX and GET.
    old = FakeRedis(server=FakeServer(version=(6, 2)), decode_responses=True)
    store = store_for(old)
    with pytest.raises(UnsupportedRedis, match=r"Redis 7\.0 or newer is required"):
        await store.ensure_ready()
    await old.aclose()


async def test_ready_means_a_write_would_be_stored(own_redis: RedisServer) -> None:
    admin = Redis.from_url(own_redis.url, decode_responses=True)
    settings = Settings(_env_file=None, redis_url=own_redis.url, allow_unsigned=True)
    store = Store.from_settings(settings)
    await store.ensure_ready()
    await admin.config_set("maxmemory-policy", "noeviction")
    await admin.config_set("maxmemory", "1")
    with pytest.raises(StoreUnavailable, match="maxmemory"):
        await store.ensure_ready()
    await admin.config_set("maxmemory", "0")
    await store.ensure_ready()
    await store.close()
    await admin.aclose()


async def test_a_script_call_ends_at_its_deadline_however_slow_redis_is(
    own_redis: RedisServer,
) -> None:
    # A socket timeout longer than the pause: only the call's own deadline ends it.
    slow = Redis.from_url(own_redis.url, decode_responses=True, socket_timeout=30)
    admin = Redis.from_url(own_redis.url, decode_responses=True)
    store = Store(
        slow, prefix="t", stream_maxlen=10, dedup_ttl_seconds=60, call_deadline_seconds=0.5
    )
    await store.ensure_ready()
    await admin.client_pause(10_000, all=False)  # writes (and scripts) wait
    try:
        with pytest.raises(StoreUnavailable, match="TimeoutError"):
            await store.record(envelope())
    finally:
        await admin.client_unpause()
        await admin.aclose()
        await store.close()


async def test_a_refusal_that_will_not_pass_is_logged_as_an_error(
    redis_client: Redis, store_for: Callable[..., Store]
) -> None:
    store = store_for(redis_client)
    await redis_client.set("t:stream", "not a stream")  # the script's XADD now always fails
    with capture_logs() as logs, pytest.raises(StoreUnavailable):
        await store.record(envelope(name="ai_media_audit.json"))
    [failure] = [log for log in logs if log["event"] == "redis_command_failed"]
    assert "WRONGTYPE" in failure["error"]
    assert failure["log_level"] == "error"


async def test_refusals_that_pass_are_not_errors(
    own_redis: RedisServer, store_for: Callable[..., Store]
) -> None:
    redis = Redis.from_url(own_redis.url, decode_responses=True)
    store = store_for(redis)
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.config_set("maxmemory", "1")
    with capture_logs() as logs, pytest.raises(StoreUnavailable):
        await store.record(envelope())
    assert not [log for log in logs if log["event"] == "redis_command_failed"]
    await redis.aclose()


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (exceptions.OutOfMemoryError("OOM command not allowed"), "out_of_memory"),
        (exceptions.BusyLoadingError("LOADING Redis is loading the dataset"), "busy"),
        (exceptions.ResponseError("BUSY Redis is busy running a script"), "busy"),
        (exceptions.TryAgainError("TRYAGAIN"), "busy"),
        (exceptions.TimeoutError("Timeout reading from socket"), "timeout"),
        (TimeoutError(), "timeout"),  # the call's own deadline
        (exceptions.ConnectionError("Connection refused"), "connection"),
        (ConnectionResetError(), "connection"),
        (exceptions.ReadOnlyError("READONLY You can't write against a read only replica"), "other"),
        (exceptions.ResponseError("MISCONF snapshots failing"), "other"),
    ],
)
def test_redis_failures_are_told_apart_by_kind(error: Exception, kind: str) -> None:
    assert failure_kind(error) == kind  # type: ignore[arg-type]
