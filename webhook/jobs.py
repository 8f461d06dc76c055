"""Jobs as users see them: one job's record (`jobs show`, `GET /jobs/{job_id}`) and the jobs
still waiting for an outcome (`jobs pending`). The store gives the rows; this shapes them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from webhook.events import Envelope, utc_text
from webhook.store import Store


@dataclass(frozen=True)
class PendingJob:
    job_id: str
    video_id: str | None
    """None once the job's record has expired."""
    age_seconds: float
    """Since its submission, to a tenth of a second."""


async def pending_with_ages(store: Store, now: datetime | None = None) -> list[PendingJob]:
    """Submitted jobs still without an outcome, oldest first, with their video and age."""
    now_ms = (now or datetime.now(UTC)).timestamp() * 1000
    pending = await store.pending_jobs()
    video_ids = await store.video_ids([job_id for job_id, _ in pending])
    return [
        PendingJob(job_id, video_id, round((now_ms - submitted_ms) / 1000, 1))
        for (job_id, submitted_ms), video_id in zip(pending, video_ids, strict=True)
    ]


def job_view(job_id: str, record: dict[str, str]) -> dict[str, Any]:
    """What `jobs show` prints: status, submission, result, source and timings."""
    envelope = Envelope.model_validate_json(record["envelope"]) if "envelope" in record else None
    submission = (
        envelope.submission
        if envelope is not None and envelope.submission is not None
        else json.loads(record.get("submission", "null"))
    )
    return {
        "job_id": job_id,
        "status": record.get("status"),
        "video_id": record.get("video_id"),
        "source": envelope.source if envelope else record.get("source"),
        "submitted_at": submission.get("submitted_at") if submission else None,
        "completed_at": utc_text(envelope.event_time) if envelope else None,
        "received_at": utc_text(envelope.received_at) if envelope else record.get("received_at"),
        "latency_ms": submission.get("latency_ms") if submission else None,
        "submission": submission,
        "result": envelope.result.model_dump() if envelope and envelope.result else None,
        "error": envelope.error.model_dump() if envelope and envelope.error else None,
        "envelope_id": record.get("envelope_id"),
    }
