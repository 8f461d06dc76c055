"""The status snapshot on a real Redis, what needs attention, and `vod-webhook status` run as a
real subprocess (its output, --json and each exit code)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import redis
from redis.asyncio import Redis

from tests.conftest import RedisServer, StoreFactory, free_port, stream_entries
from tests.processes import env_for, run
from tests.test_client import job_event, upload_event
from webhook.deadletters import redrive_dead_letters
from webhook.errors import StoreUnavailable
from webhook.limiter import RateLimiter
from webhook.settings import Settings
from webhook.stats import (
    ReconcilePasses,
    SubmissionCount,
    count_reconcile_pass,
    count_submission,
)
from webhook.status import (
    Status,
    _with_details,
    needs_attention,
    read_status,
    status_document,
    status_lines,
)
from webhook.store import Store

HOUR = timedelta(hours=1)
SETTINGS = Settings(_env_file=None)  # RECONCILE off, deadline 3600 s, interval 60 s


async def populate(store: Store, redis_client: Redis) -> None:
    """A deployment with a bit of everything: 3 envelopes, a group that read one of them, 2
    dead letters (and 1 redriven to the group), 2 pending jobs (one submitted 2 h ago), an outcome held for verification,
    2 reservations of a quota, submission counts and a reconciliation pass 10 s ago."""
    for n in range(3):
        await store.record(upload_event(f"v{n}"))
    await redis_client.xgroup_create("vod:stream", "thumbnails", id="0")
    await redis_client.xreadgroup("thumbnails", "worker-1", {"vod:stream": ">"}, count=1)
    for n in range(2):
        await redis_client.xadd("vod:deadletter", {"envelope": "{}", "error": f"boom {n}"})
    # A third, of the group, redriven to it: waiting in its own stream, no longer a dead letter.
    redriven = await redis_client.xadd(
        "vod:deadletter", {"envelope": "{}", "error": "boom", "group": "thumbnails"}
    )
    assert await redrive_dead_letters(redis_client, [str(redriven)]) == 1
    now = datetime.now(UTC)
    for job_id, submitted in (("old-job", now - 2 * HOUR), ("new-job", now)):
        await store.record_submission(job_id, "v", {"template_id": "t"}, submitted)
    await store.hold(job_event("held-job"))
    limiter = RateLimiter(redis_client, store.shared, "account-1", 10)
    for _ in range(2):
        await limiter.acquire()
    await count_submission(redis_client, store.shared, "throttled", "Throttling.User")
    await count_submission(redis_client, store.shared, "refused", "InvalidVideo.NotFound")
    at_ms = int(time.time() * 1000) - 10_000
    await count_reconcile_pass(
        redis_client, store.shared, recovered=1, timed_out=2, at_ms=at_ms, interval_seconds=30
    )


async def test_an_empty_redis_is_a_snapshot_of_nothing(store: Store) -> None:
    status = await read_status(store, consumers=True)
    assert (status.stream_length, status.oldest_entry_id, status.groups) == (0, None, ())
    assert (status.dead_letters, status.pending_jobs, status.held_outcomes) == (0, 0, 0)
    assert status.oldest_pending_age_seconds is None
    assert (status.quotas, status.submissions) == ((), ())
    assert status.reconcile == ReconcilePasses()
    assert needs_attention(status, SETTINGS) == []
    assert abs(status.now_ms / 1000 - time.time()) < 5  # Redis's clock


async def test_the_snapshot_holds_every_part_of_the_state(
    store: Store, redis_client: Redis
) -> None:
    await populate(store, redis_client)
    status = await read_status(store, consumers=True)

    [first, *_] = await stream_entries(redis_client, "vod:stream")
    assert status.stream_length == 3
    assert status.oldest_entry_id == first[0]
    assert status.oldest_entry_age_seconds is not None
    assert 0 <= status.oldest_entry_age_seconds < 60
    [group] = status.groups
    assert (group.name, group.consumers, group.pending, group.lag) == ("thumbnails", 1, 1, 2)
    assert group.redriven == 1
    assert group.last_delivered_id == first[0]
    assert group.members is not None
    [consumer] = group.members
    assert (consumer.name, consumer.pending) == ("worker-1", 1)
    assert 0 <= consumer.idle_seconds < 60
    assert status.dead_letters == 2
    assert (status.pending_jobs, status.oldest_pending_job) == (2, "old-job")
    assert status.oldest_pending_age_seconds == pytest.approx(7200, abs=60)
    assert status.held_outcomes == 1
    [quota] = status.quotas
    assert (quota.name, quota.calls, quota.calls_per_second) == ("account-1", 2, 9.8)
    assert quota.wait_seconds == pytest.approx(0.1, abs=0.05)  # the second waited its turn
    assert 0 < quota.backlog_seconds <= 0.11  # the next slot is one interval after the last
    assert list(status.submissions) == [
        SubmissionCount("submitted", "", 2),  # counted as the submissions were recorded
        SubmissionCount("throttled", "Throttling.User", 1),
        SubmissionCount("refused", "InvalidVideo.NotFound", 1),
    ]
    assert (status.reconcile.passes, status.reconcile.recovered) == (1, 1)
    assert (status.reconcile.timed_out, status.reconcile.interval_seconds) == (2, 30)
    assert status.last_pass_age_seconds == pytest.approx(10, abs=5)

    # /metrics reads the same snapshot without the consumers' details.
    assert (await read_status(store)).groups[0].members is None


async def test_redis_out_of_reach_is_store_unavailable(
    make_store: StoreFactory, own_redis: RedisServer
) -> None:
    store = make_store(Redis.from_url(own_redis.url, decode_responses=True))
    own_redis.stop()
    with pytest.raises(StoreUnavailable):
        await read_status(store)


def quiet(**changes: object) -> Status:
    """A status where nothing needs attention, but for `changes`."""
    base = Status(
        now_ms=100_000_000,
        stream_length=0,
        oldest_entry_id=None,
        groups=(),
        dead_letters=0,
        pending_jobs=0,
        oldest_pending_job=None,
        oldest_submitted_ms=None,
        held_outcomes=0,
        quotas=(),
        submissions=(),
        reconcile=ReconcilePasses(),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def passed(seconds_ago: float, interval: float | None = None) -> ReconcilePasses:
    return ReconcilePasses(
        passes=5, last_pass_ms=100_000_000 - int(seconds_ago * 1000), interval_seconds=interval
    )


@pytest.mark.parametrize(
    ("status", "settings", "problem"),
    [
        (quiet(dead_letters=1), SETTINGS, "1 dead-lettered entry"),
        (quiet(dead_letters=3), SETTINGS, "3 dead-lettered entries"),
        # Pending past VOD_WEBHOOK_RECONCILE_DEADLINE_SECONDS (3600 s).
        (
            quiet(
                pending_jobs=1, oldest_pending_job="j1", oldest_submitted_ms=100_000_000 - 3_601_000
            ),
            SETTINGS,
            "job j1 has been pending 1 h 0 min, past VOD_WEBHOOK_RECONCILE_DEADLINE_SECONDS",
        ),
        (
            quiet(
                pending_jobs=1,
                oldest_pending_job="j2",
                oldest_submitted_ms=100_000_000 - 50 * 3_600_000,
            ),
            SETTINGS,
            "job j2 has been pending 2 d 2 h",
        ),
        # Reconciliation expected as these settings run it, and never seen.
        (quiet(), Settings(_env_file=None, reconcile=True), "no reconciliation pass yet"),
        # Expected as this Redis has seen passes: 3 of the reconciler's own intervals missed...
        (quiet(reconcile=passed(91, interval=30)), SETTINGS, "no reconciliation pass for 1 min"),
        # ... or of RECONCILE_INTERVAL_SECONDS, for `reconcile --once` passes (no interval).
        (quiet(reconcile=passed(181)), SETTINGS, "over 3 intervals of 60 s"),
    ],
)
def test_what_needs_attention(status: Status, settings: Settings, problem: str) -> None:
    [said] = needs_attention(status, settings)
    assert problem in said
    assert status_document(status, settings)["attention"] == [said]
    assert status_lines(status, settings)[-2:] == ["needs attention:", f"  - {said}"]


@pytest.mark.parametrize(
    "status",
    [
        quiet(),
        quiet(pending_jobs=1, oldest_pending_job="j1", oldest_submitted_ms=100_000_000 - 3_599_000),
        quiet(reconcile=passed(89, interval=30)),
        quiet(reconcile=passed(179)),
        quiet(held_outcomes=5, stream_length=10, oldest_entry_id="1-0"),
    ],
)
def test_what_does_not_need_attention(status: Status) -> None:
    assert needs_attention(status, SETTINGS) == []
    assert status_lines(status, SETTINGS)[-1] == "nothing needs attention"


async def test_the_json_document_has_a_stable_shape(store: Store, redis_client: Redis) -> None:
    await populate(store, redis_client)
    document = status_document(await read_status(store, consumers=True), SETTINGS)
    assert list(document) == [
        "redis_time", "stream", "groups", "dead_letters", "pending_jobs", "held_outcomes",
        "quotas", "submissions", "reconcile", "partitions", "attention",
    ]  # fmt: skip
    assert document["redis_time"].endswith("Z")
    assert list(document["stream"]) == ["length", "oldest_id", "oldest_age_seconds"]
    [group] = document["groups"]
    assert list(group) == ["name", "lag", "pending", "last_delivered_id", "redriven", "consumers"]
    assert group["redriven"] == 1
    assert list(group["consumers"][0]) == ["name", "pending", "idle_seconds"]
    assert list(document["pending_jobs"]) == ["count", "oldest_job_id", "oldest_age_seconds"]
    assert list(document["quotas"][0]) == [
        "name", "calls_per_second", "calls", "wait_seconds", "backlog_seconds",
    ]  # fmt: skip
    assert document["submissions"][0] == {"outcome": "submitted", "code": "", "count": 2}
    reconcile = document["reconcile"]
    assert list(reconcile) == [
        "expected", "passes", "recovered", "timed_out", "last_pass_at", "last_pass_age_seconds",
        "interval_seconds",
    ]  # fmt: skip
    assert reconcile["expected"] is True  # this Redis has seen a pass
    assert reconcile["last_pass_at"].endswith("Z")
    # Plain Redis: one partition, the totals, in no cluster slot.
    assert document["partitions"] == [
        {"number": 0, "stream_length": 3, "dead_letters": 2, "pending_jobs": 2, "slot": None,
         "master": None},
    ]  # fmt: skip
    assert document["attention"] == [
        "2 dead-lettered entries (consumers gave up on them)",
        "job old-job has been pending 2 h 0 min, past VOD_WEBHOOK_RECONCILE_DEADLINE_SECONDS "
        "(3600 s): is reconciliation running?",
    ]
    json.dumps(document)  # all of it JSON


async def test_the_lines_read_well_on_a_terminal(store: Store, redis_client: Redis) -> None:
    await populate(store, redis_client)
    lines = status_lines(await read_status(store, consumers=True), SETTINGS)
    text = "\n".join(lines)
    assert lines[0].startswith("stream          3 entries, oldest ")
    assert "group           thumbnails: lag 2, 1 pending, 1 redriven, 1 consumers" in text
    assert "  consumer      worker-1: 1 pending, idle " in text
    assert "dead letters    2" in text
    assert "pending jobs    2, oldest old-job (2 h 0 min)" in text
    assert "held outcomes   1" in text
    assert "quota           account-1: 2 calls at up to 9.8/s, " in text
    assert (
        "submissions     submitted 2; throttled 1 (Throttling.User 1); "
        "refused 1 (InvalidVideo.NotFound 1)" in text
    )
    assert "reconciliation  last pass " in text
    assert "ago, every 30 s; 1 passes, 1 recovered, 2 timed out" in text
    assert "partition " not in text  # one partition on plain Redis: the totals above
    assert lines[-3:-1] == [
        "needs attention:",
        "  - 2 dead-lettered entries (consumers gave up on them)",
    ]


# `vod-webhook status` in a subprocess.


def test_status_command_on_a_quiet_deployment_exits_0(redis_url: str) -> None:
    shown = run("status", env=env_for(redis_url=redis_url))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == "stream          0 entries"
    assert shown.stdout.splitlines()[-1] == "nothing needs attention"
    as_json = run("status", "--json", env=env_for(redis_url=redis_url))
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout)["attention"] == []


def test_status_command_exits_1_for_each_thing_that_needs_attention(
    redis_url: str, redis_sync: redis.Redis
) -> None:
    env = env_for(redis_url=redis_url)
    redis_sync.xadd("vod:deadletter", {"envelope": "{}"})
    dead = run("status", "--json", env=env)
    assert dead.returncode == 1
    assert json.loads(dead.stdout)["attention"] == [
        "1 dead-lettered entry (consumers gave up on them)"
    ]
    assert dead.stderr == ""  # the reason is in the output, not an error

    redis_sync.flushall()
    two_hours_ago = int((time.time() - 7200) * 1000)
    redis_sync.zadd("vod:pending", {"stuck-job": two_hours_ago})
    overdue = run("status", env=env)
    assert overdue.returncode == 1
    assert "  - job stuck-job has been pending 2 h 0 min" in overdue.stdout
    # The deadline is the setting's.
    assert (
        run(
            "status", env=env_for(redis_url=redis_url, reconcile_deadline_seconds="9000")
        ).returncode
        == 0
    )

    redis_sync.flushall()
    expected = env_for(redis_url=redis_url, reconcile="true", reconcile_interval_seconds="10")
    never = run("status", env=expected)
    assert never.returncode == 1
    assert "no reconciliation pass yet, though VOD_WEBHOOK_RECONCILE is set" in never.stdout
    redis_sync.hset(
        "vod:stats:reconcile",
        mapping={"passes": 3, "last_pass_ms": int(time.time() * 1000) - 45_000},
    )
    late = run("status", env=expected)
    assert late.returncode == 1
    assert "  - no reconciliation pass for 4" in late.stdout  # 45 s and a bit
    assert " s, over 3 intervals of 10 s" in late.stdout
    redis_sync.hset("vod:stats:reconcile", "last_pass_ms", int(time.time() * 1000))
    assert run("status", env=expected).returncode == 0


def test_status_command_with_redis_out_of_reach_says_so_and_exits_1() -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    result = run("status", "--json", env=env_for(redis_url=unreachable))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("vod-webhook: Redis is unavailable: ")
    assert "Traceback" not in result.stderr
    on_embedded = run("status", env=env_for(embedded_port=str(free_port())))
    assert on_embedded.returncode == 1
    assert "the embedded store lives inside a running `vod-webhook serve`" in on_embedded.stderr


def test_status_help_says_what_it_shows_and_what_its_exit_codes_mean() -> None:
    listed = run("--help")
    assert "status" in listed.stdout
    helped = run("status", "--help")
    assert helped.returncode == 0
    text = " ".join(helped.stdout.split())
    assert "consumer group (lag, pending, consumers and their idle time)" in text
    assert "exit codes: 0 nothing needs attention; 1 something does" in text
    assert "--json" in text


async def test_a_group_destroyed_between_the_two_reads_shows_no_consumers(
    store: Store, redis_client: Redis
) -> None:
    await populate(store, redis_client)
    [group] = (await read_status(store)).groups
    await redis_client.xgroup_destroy("vod:stream", "thumbnails")
    [[gone]] = await _with_details(store, [[group]], consumers=True)
    assert (gone.name, gone.members, gone.redriven) == ("thumbnails", (), 1)


async def test_a_key_of_another_type_where_the_stream_should_be_is_an_error(
    store: Store, redis_client: Redis
) -> None:
    await redis_client.set("vod:stream", "not a stream")
    with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
        await read_status(store)
