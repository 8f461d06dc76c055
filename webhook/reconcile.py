"""Recovering outcomes whose callback never came: VOD drops a callback for good after a few
failed attempts, so overdue jobs are looked up with ListDynamicImage (VOD 2017-03-21 has no
GetDynamicImageJob) and recorded like a callback, with source "reconcile"."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import structlog

from webhook.errors import StoreUnavailable
from webhook.events import (
    DYNAMIC_IMAGE_COMPLETE,
    DynamicImageJobInfo,
    Envelope,
    JobError,
    parse_event_time,
)
from webhook.settings import Settings
from webhook.stats import count_reconcile_pass
from webhook.store import Store, unavailable
from webhook.vod import DynamicImage, Vod, VodError

logger = structlog.get_logger("webhook.reconcile")


@dataclass(frozen=True)
class ReconcileOptions:
    """How often reconciliation runs, and when it looks a job up or times it out."""

    interval_seconds: float
    grace_seconds: float
    deadline_seconds: float

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        interval_seconds: float | None = None,
        grace_seconds: float | None = None,
        deadline_seconds: float | None = None,
    ) -> ReconcileOptions:
        """The RECONCILE_* settings, each overridden by the value given unless that is None."""

        def given(value: float | None, setting: float) -> float:
            return setting if value is None else value

        return cls(
            given(interval_seconds, settings.reconcile_interval_seconds),
            given(grace_seconds, settings.reconcile_grace_seconds),
            given(deadline_seconds, settings.reconcile_deadline_seconds),
        )


@dataclass
class ReconcileReport:
    overdue: int = 0
    recovered: int = 0
    timed_out: int = 0
    still_pending: int = 0
    lookups: int = 0
    lookup_errors: int = 0


async def reconcile_once(
    store: Store,
    vod: Vod,
    *,
    grace_seconds: float,
    deadline_seconds: float,
    interval_seconds: float | None = None,
) -> ReconcileReport:
    """One pass over the jobs pending longer than `grace_seconds`, one lookup per video; counted
    in the reconcile stats (with `interval_seconds`, the loop's that runs it, if any)."""
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    report = ReconcileReport()
    overdue = await store.pending_jobs(submitted_before_ms=now_ms - int(grace_seconds * 1000))
    report.overdue = len(overdue)
    by_video: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for (job_id, submitted_ms), video_id in zip(
        overdue, await store.video_ids([job_id for job_id, _ in overdue]), strict=True
    ):
        if video_id is None:
            await store.forget_pending(job_id)  # its record expired; nothing left to recover
        else:
            by_video[video_id].append((job_id, submitted_ms))

    for video_id, jobs in by_video.items():
        report.lookups += 1
        try:
            listed = {image.job_id: image for image in await vod.list_dynamic_image(video_id)}
        except VodError as exc:
            report.lookup_errors += 1
            logger.warning("reconcile_lookup_failed", video_id=video_id, error=str(exc))
            listed = {}
            if exc.code not in {"InvalidVideo.NotFound", "NoSuchResource"}:
                report.still_pending += len(jobs)
                continue  # try again next pass; a deleted video falls through to the deadline
        for job_id, submitted_ms in jobs:
            if job_id in listed:
                recorded = await store.record(_recovered(listed[job_id], now))
                report.recovered += not recorded.duplicate
            elif now_ms - submitted_ms >= deadline_seconds * 1000:
                await store.record(_timed_out(job_id, video_id, now, deadline_seconds))
                report.timed_out += 1
            else:
                report.still_pending += 1
    with unavailable():
        await count_reconcile_pass(
            store.redis,
            store.shared,
            recovered=report.recovered,
            timed_out=report.timed_out,
            at_ms=now_ms,
            interval_seconds=interval_seconds,
        )
    if report.overdue:
        logger.info("reconcile_pass", **asdict(report))
    return report


async def run_reconciler(
    store: Store,
    vod: Vod,
    *,
    interval_seconds: float,
    grace_seconds: float,
    deadline_seconds: float,
) -> None:
    """Reconcile every `interval_seconds` until cancelled; one process at a time does a pass."""
    token = uuid.uuid4().hex
    while True:
        try:
            if await store.take_turn("reconcile", token, interval_seconds):
                await reconcile_once(
                    store,
                    vod,
                    grace_seconds=grace_seconds,
                    deadline_seconds=deadline_seconds,
                    interval_seconds=interval_seconds,
                )
        except StoreUnavailable as exc:
            logger.warning("reconcile_skipped", detail=exc.detail)
        except Exception:
            # A pass that fails for any other reason must not end reconciliation for good.
            logger.exception("reconcile_failed")
        await asyncio.sleep(interval_seconds)


def _recovered(image: DynamicImage, now: datetime) -> Envelope:
    try:
        completed: datetime | None = parse_event_time(image.raw.get("CreationTime"))
    except ValueError:
        completed = None
    return Envelope(
        event_type=DYNAMIC_IMAGE_COMPLETE,
        status="success",
        job_id=image.job_id,
        video_id=image.video_id,
        event_time=completed,
        received_at=now,
        source="reconcile",
        verified=True,  # VOD's own listing
        result=DynamicImageJobInfo.model_validate(image.raw).to_result(),
        payload=image.raw,
    )


def _timed_out(job_id: str, video_id: str, now: datetime, deadline_seconds: float) -> Envelope:
    return Envelope(
        event_type=DYNAMIC_IMAGE_COMPLETE,
        status="timed_out",
        job_id=job_id,
        video_id=video_id,
        received_at=now,
        source="reconcile",
        error=JobError(
            code="CallbackTimeout",
            message=f"no callback, and not listed by ListDynamicImage, {deadline_seconds:g} s "
            "after submission (failed, or still running)",
        ),
        payload={},
    )
