"""Jobs as users see them: `jobs show` (and `GET /jobs/{job_id}`) and `jobs pending`."""

from __future__ import annotations

from datetime import timedelta

from tests.test_client import job_event
from tests.test_store import JOB, NOW, SUBMITTED_AT, envelope
from webhook.jobs import PendingJob, job_view, pending_with_ages
from webhook.store import Store


async def test_pending_jobs_come_oldest_first_with_their_video_and_age(store: Store) -> None:
    for job_id, video_id, minutes_ago in (("new", "v2", 1), ("old", "v1", 10), ("gone", "v3", 5)):
        at = NOW - timedelta(minutes=minutes_ago)
        await store.record_submission(job_id, video_id, {"template_id": "t"}, at)
    await store.redis.delete(store.shared.job("gone"))  # its record expired; it is still pending
    assert await pending_with_ages(store, now=NOW + timedelta(milliseconds=260)) == [
        PendingJob("old", "v1", 600.3),
        PendingJob("gone", None, 300.3),
        PendingJob("new", "v2", 60.3),
    ]
    await store.record(job_event("new"))
    assert [job.job_id for job in await pending_with_ages(store)] == ["old", "gone"]


async def test_a_job_is_shown_with_its_submission_then_its_outcome(store: Store) -> None:
    submission = {"video_id": "v", "template_id": "tpl", "submitted_at": "2017-03-20T07:49:10Z"}
    await store.record_submission(JOB, "v", submission, SUBMITTED_AT)
    pending = job_view(JOB, await store.job(JOB) or {})
    assert pending["status"] == "submitted"
    assert pending["submitted_at"] == "2017-03-20T07:49:10Z"
    assert pending["submission"]["template_id"] == "tpl"
    assert (pending["source"], pending["completed_at"], pending["result"]) == (None, None, None)

    recorded = await store.record(envelope())
    done = job_view(JOB, await store.job(JOB) or {})
    assert done["job_id"] == JOB
    assert done["status"] == "success"
    assert done["source"] == "callback"
    assert done["envelope_id"] == recorded.id
    assert done["result"]["file_url"] == "http://vod.example.com/dynamic/e6b8a1c2.gif"
    assert done["error"] is None
    assert done["submission"]["template_id"] == "tpl"
    assert done["received_at"] == "2026-11-24T12:00:00Z"  # times as envelopes write them
    assert done["completed_at"].endswith("Z")
