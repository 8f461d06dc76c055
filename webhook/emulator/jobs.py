"""Dynamic-image jobs: what one makes, its record, its event and listing, and its run to the end."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog

from webhook.emulator.errors import invalid_parameter

# Every module of the emulator logs under one name, the package's.
logger = structlog.get_logger("webhook.emulator")

EVENT_TYPE = "DynamicImageComplete"

JobStatus = Literal["running", "success", "fail"]
CallbackOutcome = Literal[
    "pending", "delivered", "dropped_by_fault", "failed_after_retries", "not_subscribed"
]


@dataclass(frozen=True)
class OutputSpec:
    """The animated image a job makes (the template's defaults, or OverrideParams)."""

    format: str = "gif"
    fps: int = 10
    width: int = 320
    height: int = 180
    duration: float = 3.0


@dataclass(frozen=True)
class Faults:
    fail: bool
    drop: bool
    duplicate: bool


@dataclass(frozen=True)
class DynamicImage:
    dynamic_image_id: str
    file_url: str
    file_size: int
    creation_time: str


@dataclass
class Job:
    job_id: str
    video_id: str
    template_id: str
    spec: OutputSpec
    faults: Faults
    submitted_at: str
    status: JobStatus = "running"
    completed_at: str | None = None
    image: DynamicImage | None = None
    callback: CallbackOutcome = "pending"
    attempts: int = 0
    deliveries: int = 0


def _override_int(section: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = section.get(key, default)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid_parameter("OverrideParams", f"{key} must be an integer from {low} to {high}")
    return value


def _override_section(overrides: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    section = overrides.get(key, {})
    if not isinstance(section, dict):
        raise invalid_parameter("OverrideParams", f"{key} must be a JSON object")
    return section


def parse_override_params(raw: str | None) -> OutputSpec:
    """The output of a job with these OverrideParams (a JSON object, checked like VOD does)."""
    if raw is None:
        return OutputSpec()
    try:
        overrides = json.loads(raw)
    except ValueError:
        raise invalid_parameter("OverrideParams", "it is not JSON") from None
    if not isinstance(overrides, dict):
        raise invalid_parameter("OverrideParams", "it must be a JSON object")
    video = _override_section(overrides, "Video")
    container = _override_section(overrides, "Container")
    default = OutputSpec()
    output_format = container.get("Format", default.format)
    if output_format not in {"gif", "webp"}:
        raise invalid_parameter("OverrideParams", "Container.Format must be gif or webp")
    return OutputSpec(
        format=output_format,
        fps=_override_int(video, "Fps", default.fps, 1, 60),
        width=_override_int(video, "Width", default.width, 128, 4096),
        height=_override_int(video, "Height", default.height, 128, 4096),
    )


def utc_now_text() -> str:
    """Now in VOD's `yyyy-MM-ddTHH:mm:ssZ` UTC format."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dynamic_image_event(job: Job) -> dict[str, str]:
    """The DynamicImageComplete event VOD POSTs for a finished job."""
    event = {
        "EventTime": job.completed_at or utc_now_text(),
        "EventType": EVENT_TYPE,
        "VideoId": job.video_id,
        "Status": job.status,
        "JobId": job.job_id,
    }
    if job.image is None:
        event["ErrorCode"] = "InvalidParameter.ResourceContentBad"
        event["ErrorMessage"] = "The input video could not be decoded (emulated failure)."
    else:
        # VOD sends the job info as a JSON string inside the JSON body, every value a string.
        event["DynamicImageJobInfo"] = json.dumps(
            {
                "JobId": job.job_id,
                "Status": "success",
                "FileURL": job.image.file_url,
                "FileSize": str(job.image.file_size),
                "Fps": str(job.spec.fps),
                "Height": str(job.spec.height),
                "Width": str(job.spec.width),
            },
            separators=(",", ":"),
        )
    return event


def listed_image(job: Job, image: DynamicImage) -> dict[str, str]:
    """One item of ListDynamicImage's DynamicImageList."""
    return {
        "VideoId": job.video_id,
        "JobId": job.job_id,
        "DynamicImageId": image.dynamic_image_id,
        "FileURL": image.file_url,
        "Format": job.spec.format,
        "Fps": str(job.spec.fps),
        "Width": str(job.spec.width),
        "Height": str(job.spec.height),
        "FileSize": str(image.file_size),
        "Duration": f"{job.spec.duration:.3f}",
        "CreationTime": image.creation_time,
    }


class JobRunner:
    """Every job submitted, and the background tasks that end each one `delay` seconds later."""

    def __init__(
        self,
        *,
        delay: float,
        fail_rate: float,
        drop_rate: float,
        duplicate_rate: float,
        seed: int | None,
        on_finished: Callable[[Job], Awaitable[None]],
    ) -> None:
        self.jobs: dict[str, Job] = {}
        self._delay = delay
        self._fail_rate = fail_rate
        self._drop_rate = drop_rate
        self._duplicate_rate = duplicate_rate
        self._random = random.Random(seed)
        # Called back as each job ends (its callback is sent from there).
        self._on_finished = on_finished
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run jobs while inside; cancel those still running on the way out."""
        self._running = True
        try:
            yield
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._running = False

    def submit(self, video_id: str, template_id: str, spec: OutputSpec) -> Job:
        # Drawn at submission, in a fixed order, so a seed gives the same faults in any timing.
        faults = Faults(
            fail=self._random.random() < self._fail_rate,
            drop=self._random.random() < self._drop_rate,
            duplicate=self._random.random() < self._duplicate_rate,
        )
        job = Job(
            job_id=uuid.uuid4().hex,
            video_id=video_id,
            template_id=template_id,
            spec=spec,
            faults=faults,
            submitted_at=utc_now_text(),
        )
        self.jobs[job.job_id] = job
        if not self._running:
            raise RuntimeError("the emulator is not running: serve its app with lifespan on")
        task = asyncio.create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        logger.info("job_submitted", job_id=job.job_id, video_id=video_id)
        return job

    async def _run(self, job: Job) -> None:
        await asyncio.sleep(self._delay)
        job.completed_at = utc_now_text()
        if job.faults.fail:
            job.status = "fail"
        else:
            job.status = "success"
            image_id = uuid.uuid4().hex
            job.image = DynamicImage(
                dynamic_image_id=image_id,
                # Like VOD's, the file is named after the image, not the job.
                file_url=f"https://outin-emulator.oss-cn-shanghai.aliyuncs.com/{job.video_id}"
                f"/dynamic/{image_id[:8]}.{job.spec.format}",
                file_size=job.spec.width * job.spec.height * job.spec.fps // 8,
                creation_time=job.completed_at,
            )
        logger.info("job_completed", job_id=job.job_id, video_id=job.video_id, status=job.status)
        await self._on_finished(job)
