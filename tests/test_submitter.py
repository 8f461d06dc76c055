"""Submitting, correlating and reconciling against the emulator, through the official SDK."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.conftest import (
    AUTH_KEY,
    Receiver,
    RedisServer,
    ServeApp,
    eventually,
    job_callback,
    vod_headers,
)
from tests.processes import ACCESS_KEY_ID, ACCESS_KEY_SECRET
from webhook.client import wait_for
from webhook.emulator import EmulatorOptions, create_emulator_app
from webhook.errors import StoreUnavailable
from webhook.limiter import RateLimiter
from webhook.reconcile import reconcile_once
from webhook.settings import Settings
from webhook.status import read_status
from webhook.store import Store
from webhook.submitter import (
    InvalidJob,
    JobSpec,
    LineResult,
    Submitter,
    job_from_options,
    parse_tags,
    read_override_params,
)
from webhook.vod import RetryPolicy, Vod, VodError

FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.05, max_delay=0.2)


class WholeBackoff(RetryPolicy):
    """The retry schedule without its jitter: each wait is its whole cap, so whether a test's
    attempts suffice does not depend on chance."""

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * 2.0**attempt)


@dataclass
class World:
    """The receiver, the emulator posting to it, and the submitter's side, all real."""

    receiver: str
    emulator: str
    settings: Settings
    store: Store
    vod: Vod

    @property
    def submitter(self) -> Submitter:
        return Submitter(self.vod, self.store)

    async def emulator_jobs(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as client:
            jobs: list[dict[str, Any]] = (
                await client.get(f"{self.emulator}/_emulator/state")
            ).json()["jobs"]
            return jobs


StartWorld = Callable[..., Awaitable[World]]


@pytest.fixture
async def start_world(
    start_receiver: Receiver,
    serve_app: ServeApp,
    make_settings: Callable[..., Settings],
    redis_client: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[StartWorld]:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET)
    stores: list[Store] = []

    async def start(submit_qps: float = 30, **emulator: Any) -> World:
        receiver = await start_receiver(self_registered=True)
        options = EmulatorOptions(
            access_keys={ACCESS_KEY_ID: ACCESS_KEY_SECRET},
            callback_url=f"{receiver}/callbacks/vod",
            auth_key=AUTH_KEY,
            **{"delay": 0.1, **emulator},
        )
        emulator_url = await serve_app(lambda _: create_emulator_app(options))
        settings = make_settings(vod_endpoint=emulator_url, submit_qps=submit_qps)
        store = Store.from_settings(settings)
        stores.append(store)
        client, access_key_id = Vod.sdk_client(settings)
        assert access_key_id == ACCESS_KEY_ID
        limiter = RateLimiter(store.redis, store.shared, access_key_id, submit_qps)
        return World(receiver, emulator_url, settings, store, Vod(client, limiter, FAST_RETRY))

    yield start
    for store in stores:
        await store.close()


async def test_submitted_job_gets_one_correlated_envelope(start_world: StartWorld) -> None:
    world = await start_world()
    spec = JobSpec(
        video_id="video-1",
        template_id="tpl-1",
        override_params={"Video": {"Width": 320}},
        tags={"campaign": "spring"},
    )
    submitted = await world.submitter.submit(spec)
    assert len(submitted.job_id) == 32
    envelope = await wait_for(world.store.redis, submitted.job_id, timeout=10)
    assert envelope.status == "success"
    assert envelope.source == "callback"
    assert envelope.result is not None
    assert envelope.result.width == 320
    assert envelope.submission is not None
    assert envelope.submission["tags"] == {"campaign": "spring"}
    assert envelope.submission["template_id"] == "tpl-1"
    assert envelope.submission["request_id"] == submitted.request_id
    assert 0 <= envelope.submission["latency_ms"] < 10_000
    assert await world.store.pending_jobs() == []
    # Waiting after the fact returns the same recorded outcome.
    assert await wait_for(world.store.redis, submitted.job_id, timeout=1) == envelope


@pytest.mark.parametrize(
    ("video_id", "code", "status"),
    [("notfound-1", "InvalidVideo.NotFound", 404), ("illegal-1", "Forbidden.IllegalStatus", 400)],
)
async def test_permanent_errors_are_reported_at_once_with_vods_details(
    start_world: StartWorld, video_id: str, code: str, status: int
) -> None:
    world = await start_world()
    with pytest.raises(VodError) as caught:
        await world.submitter.submit(JobSpec(video_id=video_id, template_id="tpl"))
    assert caught.value.code == code
    assert caught.value.status_code == status
    assert caught.value.request_id
    assert not caught.value.transient
    assert await world.store.pending_jobs() == []


async def test_throttling_is_retried_until_every_job_is_in(start_world: StartWorld) -> None:
    # The emulator allows 2 calls a second while this side is told 30: VOD throttles, we retry.
    # Waits of 0.4, 0.8, 1, 1, ... s: the 5 jobs need ~2.5 s of the emulator's quota, and the
    # third retry comes after 2.2 s.
    world = await start_world(qps=2)
    specs = [JobSpec(video_id=f"video-{n}", template_id="tpl") for n in range(5)]
    vod = Vod(
        world.vod._client, world.vod._limiter, WholeBackoff(attempts=8, base_delay=0.2, max_delay=1)
    )
    results = await asyncio.gather(*(Submitter(vod, world.store).submit(s) for s in specs))
    assert len({r.job_id for r in results}) == 5
    assert len(await world.emulator_jobs()) == 5
    # Each call counted: the throttled retries, and the five VOD took.
    counts = {(c.outcome, c.code): c.count for c in (await read_status(world.store)).submissions}
    assert counts[("submitted", "")] == 5
    assert counts[("throttled", "Throttling.User")] >= 3


def test_retry_waits_are_full_jitter_under_a_growing_cap() -> None:
    policy = RetryPolicy(base_delay=0.2, max_delay=1)
    for attempt, cap in [(1, 0.4), (2, 0.8), (3, 1.0), (6, 1.0)]:
        waits = [policy.delay(attempt) for _ in range(200)]
        assert all(0 <= wait <= cap for wait in waits)
        # Spread over the whole range (each bound misses with odds of 0.9**200, ~1e-9).
        assert min(waits) < cap * 0.1
        assert max(waits) > cap * 0.9


async def test_unreachable_vod_is_a_network_error_after_bounded_retries(
    start_world: StartWorld, make_settings: Callable[..., Settings]
) -> None:
    world = await start_world()
    client, _ = Vod.sdk_client(make_settings(vod_endpoint="http://127.0.0.1:9"))
    vod = Vod(client, world.vod._limiter, FAST_RETRY)
    with pytest.raises(VodError) as caught:
        await vod.submit_dynamic_image_job("v", "t", None)
    assert caught.value.code == "NetworkError"
    assert caught.value.transient
    [failed] = (await read_status(world.store)).submissions
    assert (failed.outcome, failed.code, failed.count) == ("failed", "NetworkError", 4)


async def test_batch_reports_bad_lines_and_a_rerun_submits_nothing_again(
    start_world: StartWorld,
) -> None:
    world = await start_world()
    lines = [
        '{"video_id": "v1", "template_id": "t"}',
        "not json",
        '{"video_id": "v2", "template_id": "t", "override_params": {"Video": {"Fps": 99}}}',
        "",
        '{"video_id": "notfound-3", "template_id": "t"}',
        '{"video_id": "v4", "template_id": "t", "tags": {"n": "4"}}',
    ]
    seen: list[LineResult] = []
    first = await world.submitter.submit_batch(lines, seen.append)
    by_line = {r.line: r for r in first.results}
    assert sorted(by_line) == [1, 2, 3, 5, 6]
    assert [by_line[n].status for n in (1, 2, 3, 5, 6)] == [
        "submitted",
        "failed",
        "failed",
        "failed",
        "submitted",
    ]
    assert "Invalid JSON" in (by_line[2].error or "")
    assert "OverrideParams.Video.Fps" in (by_line[3].error or "")
    assert "InvalidVideo.NotFound" in (by_line[5].error or "")
    assert len(seen) == 5
    assert len(await world.emulator_jobs()) == 2

    again = await world.submitter.submit_batch(lines)
    rerun = {r.line: r for r in again.results}
    assert rerun[1].status == rerun[6].status == "skipped"
    assert rerun[1].job_id == by_line[1].job_id
    assert rerun[5].status == "failed"  # refused lines are tried again
    assert len(await world.emulator_jobs()) == 2


async def test_two_runs_of_one_batch_at_once_submit_each_line_once(
    start_world: StartWorld,
) -> None:
    world = await start_world()
    lines = [f'{{"video_id": "v{n}", "template_id": "t"}}' for n in range(8)]
    runs = await asyncio.gather(
        world.submitter.submit_batch(lines), world.submitter.submit_batch(lines)
    )
    jobs = await world.emulator_jobs()
    assert sorted(job["video_id"] for job in jobs) == [f"v{n}" for n in range(8)]
    for line in range(1, 9):
        first, second = (run.results[line - 1] for run in runs)
        # One run submitted the line; the other found it claimed (still being submitted) or
        # already done, and submitted nothing.
        submitted, other = sorted((first, second), key=lambda r: r.status != "submitted")
        assert submitted.status == "submitted", (first, second)
        if other.status == "skipped":
            assert other.job_id == submitted.job_id
        else:
            assert other.status == "failed"
            assert "not submitted: claimed by a run" in (other.error or "")


async def test_callback_before_submission_still_yields_one_correlated_envelope(
    start_world: StartWorld, redis_client: Redis
) -> None:
    world = await start_world(delay=0)

    class CallbackFirst(Vod):
        """Holds the JobId back until the job's callback has been recorded."""

        async def submit_dynamic_image_job(self, *args: Any) -> tuple[str, str]:
            job_id, request_id = await super().submit_dynamic_image_job(*args)
            for _ in range(200):
                if await world.store.job(job_id):
                    break
                await asyncio.sleep(0.02)
            return job_id, request_id

    vod = CallbackFirst(world.vod._client, world.vod._limiter, FAST_RETRY)
    pubsub = redis_client.pubsub()
    await pubsub.psubscribe("vod:jobs:*")
    submitted = await Submitter(vod, world.store).submit(JobSpec(video_id="v", template_id="t"))
    envelopes: list[dict[str, Any]] = []
    while len(envelopes) < 2:
        message = await pubsub.get_message(timeout=5)
        if message is not None and message["type"] == "pmessage":
            envelopes.append(json.loads(message["data"]))
    await pubsub.aclose()
    assert [e["submission"] is not None for e in envelopes] == [False, True]
    assert {e["job_id"] for e in envelopes} == {submitted.job_id}
    waited = await wait_for(world.store.redis, submitted.job_id, timeout=1)
    assert waited.submission is not None
    assert await world.store.pending_jobs() == []


async def test_reconciliation_recovers_dropped_callbacks_with_one_lookup_per_video(
    start_world: StartWorld,
) -> None:
    world = await start_world(drop_rate=1)
    jobs = [
        await world.submitter.submit(JobSpec(video_id=video, template_id="t"))
        for video in ("shared", "shared", "shared", "other")
    ]
    await eventually(lambda: _all_done(world), 10, "the emulator to finish the jobs")
    assert len(await world.store.pending_jobs()) == 4

    report = await reconcile_once(world.store, world.vod, grace_seconds=0, deadline_seconds=60)
    assert (report.overdue, report.recovered, report.lookups) == (4, 4, 2)
    for job in jobs:
        envelope = await wait_for(world.store.redis, job.job_id, timeout=1)
        assert envelope.source == "reconcile"
        assert envelope.status == "success"
        assert envelope.result is not None
        assert envelope.result.file_url.startswith("http")
        assert envelope.submission is not None
        assert envelope.submission["video_id"] == job.spec.video_id
    assert await world.store.pending_jobs() == []
    assert (
        await reconcile_once(world.store, world.vod, grace_seconds=0, deadline_seconds=60)
    ).overdue == 0


async def test_jobs_neither_called_back_nor_listed_time_out_and_a_late_result_still_counts(
    start_world: StartWorld,
) -> None:
    world = await start_world(drop_rate=1, fail_rate=1)
    job = await world.submitter.submit(JobSpec(video_id="v", template_id="t"))
    await eventually(lambda: _all_done(world), 10, "the job to fail")

    early = await reconcile_once(world.store, world.vod, grace_seconds=0, deadline_seconds=600)
    assert (early.still_pending, early.timed_out) == (1, 0)
    late = await reconcile_once(world.store, world.vod, grace_seconds=0, deadline_seconds=0)
    assert late.timed_out == 1
    envelope = await wait_for(world.store.redis, job.job_id, timeout=1)
    assert envelope.status == "timed_out"
    assert envelope.error is not None
    assert envelope.error.code == "CallbackTimeout"
    assert await world.store.pending_jobs() == []

    # VOD's own outcome, arriving after the verdict: it replaces the guess.
    callback_url = f"{world.receiver}/callbacks/vod"
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            callback_url,
            json=job_callback(job.job_id, "fail"),
            headers=vod_headers(url=callback_url),
        )
    assert answer.json()["status"] == "accepted"
    record = await world.store.job(job.job_id)
    assert record is not None
    assert record["status"] == "fail"
    assert record["envelope_id"] == answer.json()["id"]


async def _all_done(world: World) -> bool:
    return all(job["status"] != "running" for job in await world.emulator_jobs())


@pytest.fixture
async def submitter_losing_redis(
    start_world: StartWorld, make_settings: Callable[..., Settings], own_redis: RedisServer
) -> AsyncIterator[tuple[World, Submitter]]:
    """A submitter whose Redis dies right after VOD accepts each job, before it can be recorded."""
    world = await start_world()
    store = Store.from_settings(make_settings(redis_url=own_redis.url, redis_timeout_seconds=1))

    class RedisDiesMeanwhile(Vod):
        async def submit_dynamic_image_job(self, *args: Any) -> tuple[str, str]:
            answer = await super().submit_dynamic_image_job(*args)
            own_redis.stop()
            return answer

    vod = RedisDiesMeanwhile(
        world.vod._client, RateLimiter(store.redis, store.shared, "q", 30), FAST_RETRY
    )
    yield world, Submitter(vod, store)
    await store.close()


async def test_a_job_vod_accepted_is_named_when_it_cannot_be_recorded(
    submitter_losing_redis: tuple[World, Submitter],
) -> None:
    world, submitter = submitter_losing_redis
    with pytest.raises(StoreUnavailable) as caught:
        await submitter.submit(JobSpec(video_id="v", template_id="t"))
    [job] = await world.emulator_jobs()
    assert f"job {job['job_id']} was submitted" in caught.value.detail


async def test_a_batch_line_vod_accepted_is_reported_with_its_job_when_redis_dies(
    submitter_losing_redis: tuple[World, Submitter],
) -> None:
    world, submitter = submitter_losing_redis
    summary = await submitter.submit_batch(['{"video_id": "v", "template_id": "t"}'])
    [job] = await world.emulator_jobs()
    [result] = summary.results
    assert (result.status, result.job_id) == ("submitted", job["job_id"])
    assert f"job {job['job_id']} was submitted" in (result.error or "")


async def test_a_batch_line_vod_accepted_stays_claimed_when_it_cannot_be_recorded(
    start_world: StartWorld, redis_client: Redis
) -> None:
    world = await start_world()

    class RedisRefusesWritesMeanwhile(Vod):
        async def submit_dynamic_image_job(self, *args: Any) -> tuple[str, str]:
            answer = await super().submit_dynamic_image_job(*args)
            await redis_client.config_set("maxmemory", 1)  # noeviction: every write refused
            return answer

    vod = RedisRefusesWritesMeanwhile(world.vod._client, world.vod._limiter, FAST_RETRY)
    lines = ['{"video_id": "v", "template_id": "t"}']
    try:
        first = await Submitter(vod, world.store).submit_batch(lines)
    finally:
        await redis_client.config_set("maxmemory", 0)
    [job] = await world.emulator_jobs()
    [result] = first.results
    assert (result.status, result.job_id) == ("submitted", job["job_id"])
    assert "could not be recorded" in (result.error or "")

    again = await world.submitter.submit_batch(lines)
    [rerun] = again.results
    assert rerun.status == "failed"
    assert "not submitted: claimed by a run" in (rerun.error or "")
    assert len(await world.emulator_jobs()) == 1


def test_tags_are_given_as_key_equals_value() -> None:
    assert parse_tags(["team=ads", "note=", "query=a=b", "team=video"]) == {
        "team": "video",
        "note": "",
        "query": "a=b",
    }
    assert parse_tags([]) == {}
    for pair in ("novalue", "=v"):
        with pytest.raises(ValueError, match=f"^--tag '{pair}' is not K=V$"):
            parse_tags([pair])


def test_override_params_are_given_as_json_or_read_from_a_file(tmp_path: Path) -> None:
    given = '{"Video": {"Width": 256}}'
    assert read_override_params(given) == given
    assert read_override_params(None) is None
    (tmp_path / "overrides.json").write_text(given)
    assert read_override_params(f"@{tmp_path / 'overrides.json'}") == given
    with pytest.raises(FileNotFoundError, match="No such file"):
        read_override_params(f"@{tmp_path / 'missing.json'}")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tags": ["novalue"]}, "--tag 'novalue' is not K=V"),
        ({"override_params": "[1]"}, "override_params: OverrideParams must be a JSON object"),
        ({"override_params": '{"Video": {"Fps": 0}}'},
         "override_params: OverrideParams.Video.Fps: Input should be greater than 0"),
        ({"override_params": "@/nonexistent"}, "[Errno 2] No such file or directory: '/nonexistent'"),
    ],
)  # fmt: skip
def test_a_job_from_options_says_precisely_what_is_wrong(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidJob, match=f"^{re.escape(message)}$"):
        job_from_options("v", "t", **options)


def test_a_job_from_options_keeps_what_was_given() -> None:
    spec = job_from_options(
        "v", "t", override_params='{"Video": {"Width": 256}}', tags=["team=ads"]
    )
    assert spec == JobSpec(
        video_id="v",
        template_id="t",
        override_params={"Video": {"Width": 256}},
        tags={"team": "ads"},
    )
    assert job_from_options("v", "t") == JobSpec(video_id="v", template_id="t")
