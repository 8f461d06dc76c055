"""Reconciliation when VOD's lookups fail: for a while, for good (the video is gone), or with a
bug; the pending job is kept, timed out, or retried on the next pass."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from structlog.testing import capture_logs

from tests.conftest import eventually
from webhook.limiter import RateLimiter
from webhook.reconcile import ReconcileOptions, reconcile_once, run_reconciler
from webhook.settings import Settings
from webhook.store import Store
from webhook.vod import DynamicImage, Vod, VodError

SUBMITTED = datetime.now(UTC) - timedelta(hours=1)


class FailingLookups(Vod):
    """A VOD whose ListDynamicImage raises what `failures` hands out, then lists nothing."""

    def __init__(self, store: Store, failures: list[Exception]) -> None:
        super().__init__(None, RateLimiter(store.redis, store.shared, "test", 100))
        self.failures = failures
        self.lookups = 0

    async def list_dynamic_image(self, video_id: str) -> list[DynamicImage]:
        self.lookups += 1
        if self.failures:
            raise self.failures.pop(0)
        return []


async def pending(store: Store, job_id: str) -> None:
    submission = {"video_id": "v", "template_id": "t", "submitted_at": SUBMITTED.isoformat()}
    await store.record_submission(job_id, "v", submission, SUBMITTED)


async def test_a_lookup_failing_for_a_while_keeps_the_job_pending_past_its_deadline(
    store: Store,
) -> None:
    await pending(store, "j1")
    vod = FailingLookups(store, [VodError("InternalError", "try again")])
    report = await reconcile_once(store, vod, grace_seconds=0, deadline_seconds=0)
    assert (report.lookup_errors, report.still_pending, report.timed_out) == (1, 1, 0)
    assert [job for job, _ in await store.pending_jobs()] == ["j1"]
    # The next pass, VOD answering, ends it: not listed and past the deadline.
    report = await reconcile_once(store, vod, grace_seconds=0, deadline_seconds=0)
    assert report.timed_out == 1
    assert await store.pending_jobs() == []


async def test_a_video_gone_for_good_times_its_jobs_out(store: Store) -> None:
    await pending(store, "j1")
    vod = FailingLookups(store, [VodError("InvalidVideo.NotFound", "no such video")])
    report = await reconcile_once(store, vod, grace_seconds=0, deadline_seconds=0)
    assert (report.lookup_errors, report.timed_out) == (1, 1)
    record = await store.job("j1")
    assert record is not None
    assert record["status"] == "timed_out"


async def test_the_reconciler_survives_a_pass_that_fails_unexpectedly(
    make_store: Callable[..., Store],
) -> None:
    store = make_store()
    await pending(store, "j1")
    vod = FailingLookups(store, [RuntimeError("a bug in a pass")])

    async def timed_out() -> bool:
        record = await store.job("j1")
        return record is not None and record["status"] == "timed_out"

    with capture_logs() as logs:
        loop = asyncio.create_task(
            run_reconciler(store, vod, interval_seconds=0.05, grace_seconds=0, deadline_seconds=0)
        )
        try:
            await eventually(timed_out, what="a later pass to time the job out")
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
    assert [log["event"] for log in logs if log["event"] == "reconcile_failed"] == [
        "reconcile_failed"
    ]
    assert vod.lookups >= 2


def test_options_come_from_the_settings_unless_given() -> None:
    settings = Settings(
        _env_file=None,
        reconcile_interval_seconds=60,
        reconcile_grace_seconds=300,
        reconcile_deadline_seconds=3600,
    )
    assert ReconcileOptions.from_settings(settings) == ReconcileOptions(60, 300, 3600)
    # 0 is a value given, not one missing.
    given = ReconcileOptions.from_settings(settings, grace_seconds=0, deadline_seconds=5)
    assert given == ReconcileOptions(interval_seconds=60, grace_seconds=0, deadline_seconds=5)
    assert ReconcileOptions.from_settings(settings, interval_seconds=0.5).interval_seconds == 0.5
