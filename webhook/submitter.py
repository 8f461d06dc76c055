"""Submitting dynamic-image jobs: validated, rate limited, retried, and recorded for correlation."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from webhook.errors import StoreUnavailable, explain
from webhook.overrides import InvalidOverrides, check_override_params
from webhook.store import BATCH_CLAIM_SECONDS, Store
from webhook.vod import Vod, VodError

# Batch lines in flight at once; the limiter, not this, sets the pace.
BATCH_CONCURRENCY = 32


class JobSpec(BaseModel):
    """One job to submit; also the schema of a line of a batch file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    video_id: str = Field(min_length=1, max_length=128)
    template_id: str = Field(min_length=1, max_length=128)
    override_params: dict[str, Any] | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("override_params", mode="before")
    @classmethod
    def _check_overrides(cls, value: object) -> object:
        if value is None:
            return None
        try:
            return check_override_params(value)
        except InvalidOverrides as exc:
            raise ValueError(str(exc)) from None

    def submission(self, request_id: str, submitted_at: datetime) -> dict[str, Any]:
        """What the job record keeps of this job's submission (its envelope's `submission`)."""
        return {
            "video_id": self.video_id,
            "template_id": self.template_id,
            "override_params": self.override_params,
            "tags": self.tags,
            "request_id": request_id,
            "submitted_at": submitted_at.isoformat().replace("+00:00", "Z"),
        }

    def fingerprint(self) -> str:
        """Identity of a batch line's content, so a re-run does not submit it again."""
        canonical = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class InvalidJob(ValueError):
    """A job given by `submit`'s options that cannot be submitted; the message says why."""


def job_from_options(
    video_id: str, template_id: str, *, override_params: str | None = None, tags: Iterable[str] = ()
) -> JobSpec:
    """The job of `submit --video-id V --template-id T [--override-params JSON|@FILE]
    [--tag K=V ...]`; InvalidJob says precisely what is wrong, before any quota is spent."""
    try:
        return JobSpec(
            video_id=video_id,
            template_id=template_id,
            override_params=read_override_params(override_params),
            tags=parse_tags(tags),
        )
    except ValidationError as exc:
        raise InvalidJob(explain(exc)) from None
    except (ValueError, OSError) as exc:
        raise InvalidJob(str(exc)) from None


def read_override_params(value: str | None) -> str | None:
    """OverrideParams as given: JSON, or @FILE for the JSON in FILE."""
    if value is None or not value.startswith("@"):
        return value
    return Path(value[1:]).read_text()


def parse_tags(pairs: Iterable[str]) -> dict[str, str]:
    """Tags given as `--tag K=V` (V may be empty, or hold more = signs)."""
    tags = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"--tag {pair!r} is not K=V")
        tags[key] = value
    return tags


class UnrecordedSubmission(StoreUnavailable):
    """VOD accepted the job, but Redis could not record it: the JobId must not get lost."""

    def __init__(self, job_id: str, request_id: str, problem: str) -> None:
        super().__init__(
            f"job {job_id} was submitted (request id {request_id}) but could not be "
            f"recorded: {problem}"
        )
        self.job_id = job_id
        self.request_id = request_id


@dataclass(frozen=True)
class Submitted:
    job_id: str
    request_id: str
    submitted_at: datetime
    spec: JobSpec


@dataclass(frozen=True)
class LineResult:
    line: int
    status: Literal["submitted", "skipped", "failed"]
    job_id: str | None = None
    error: str | None = None
    """Why it failed; for a submitted line, what went wrong after VOD accepted it."""

    def as_json(self) -> str:
        fields = {"line": self.line, "status": self.status, "job_id": self.job_id}
        return json.dumps(fields | ({"error": self.error} if self.error else {}))


@dataclass
class BatchSummary:
    results: list[LineResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(result.status == status for result in self.results)


class Submitter:
    def __init__(self, vod: Vod, store: Store) -> None:
        self.vod = vod
        self.store = store

    async def submit(self, spec: JobSpec) -> Submitted:
        """Submit one job and record it as pending (or correlate it with an early outcome)."""
        overrides = (
            json.dumps(spec.override_params, separators=(",", ":"))
            if spec.override_params is not None
            else None
        )
        job_id, request_id = await self.vod.submit_dynamic_image_job(
            spec.video_id, spec.template_id, overrides
        )
        submitted_at = datetime.now(UTC)
        submission = spec.submission(request_id, submitted_at)
        try:
            await self.store.record_submission(job_id, spec.video_id, submission, submitted_at)
        except StoreUnavailable as exc:
            # VOD has the job: say which, or it is lost to the user as well as to correlation.
            raise UnrecordedSubmission(job_id, request_id, exc.detail) from None
        return Submitted(job_id, request_id, submitted_at, spec)

    async def submit_batch(
        self, lines: Iterable[str], on_result: Callable[[LineResult], None] = lambda _: None
    ) -> BatchSummary:
        """Submit every valid line; bad lines and refusals are reported, not fatal."""
        summary = BatchSummary()
        slots = asyncio.Semaphore(BATCH_CONCURRENCY)

        async def one(number: int, text: str) -> None:
            async with slots:
                result = await self._submit_line(number, text)
            summary.results.append(result)
            on_result(result)

        async with asyncio.TaskGroup() as group:
            for number, text in enumerate(lines, start=1):
                if text.strip():
                    group.create_task(one(number, text))
        summary.results.sort(key=lambda result: result.line)
        return summary

    async def _submit_line(self, number: int, text: str) -> LineResult:
        try:
            spec = JobSpec.model_validate_json(text)
        except ValidationError as exc:
            return LineResult(number, "failed", error=explain(exc))
        fingerprint = spec.fingerprint()
        try:
            earlier = await self.store.claim_batch_line(fingerprint)
        except StoreUnavailable as exc:
            return LineResult(number, "failed", error=f"not submitted: {exc.detail}")
        if earlier is not None:
            if earlier.startswith("job:"):
                return LineResult(number, "skipped", job_id=earlier.removeprefix("job:"))
            return LineResult(
                number,
                "failed",
                error="not submitted: claimed by a run that is still submitting it, was "
                "interrupted, or could not record its job; the claim lapses "
                f"{BATCH_CLAIM_SECONDS} s after it was made",
            )
        try:
            submitted = await self.submit(spec)
        except UnrecordedSubmission as exc:
            # VOD has the job: the line stays claimed, never released, so that a re-run does not
            # submit it again; marked done if Redis answers again by now.
            with contextlib.suppress(StoreUnavailable):
                await self.store.complete_batch_line(fingerprint, exc.job_id)
            return LineResult(number, "submitted", job_id=exc.job_id, error=exc.detail)
        except (VodError, StoreUnavailable) as exc:
            # Refused by VOD, or stopped by the limiter before calling it: nothing was submitted.
            with contextlib.suppress(StoreUnavailable):
                await self.store.release_batch_line(fingerprint)  # else it lapses on its own
            detail = exc.detail if isinstance(exc, StoreUnavailable) else str(exc)
            return LineResult(number, "failed", error=detail)
        # An interruption (BaseException) propagates with the line still claimed: VOD may have
        # taken the job.
        try:
            await self.store.complete_batch_line(fingerprint, submitted.job_id)
        except StoreUnavailable as exc:
            return LineResult(
                number,
                "submitted",
                job_id=submitted.job_id,
                error=f"job {submitted.job_id} was submitted and recorded, but its batch line "
                f"could not be marked done: {exc.detail}",
            )
        return LineResult(number, "submitted", job_id=submitted.job_id)
