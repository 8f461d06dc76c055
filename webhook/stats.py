"""Counters kept in Redis, for work done in processes Prometheus does not scrape: submissions
(`vod-webhook submit`), the shared rate limiter, reconciliation (`vod-webhook reconcile`, or
serve's background reconciler). A hash per concern under the key prefix (webhook/keys.py);
/metrics exports them at scrape time and `status` shows them, both through webhook/status.py.

Counts ride on a call made anyway where there is one: the record_submission script counts a
submission VOD accepted, the gcra script every reservation of a quota. A refused or failed
submission call, and a reconciliation pass, cost one round trip more.
"""

from __future__ import annotations

import re
from contextlib import suppress
from dataclasses import dataclass

from redis.exceptions import RedisError

from webhook.connection import RedisClient
from webhook.keys import Keys

SUBMISSION_OUTCOMES = ("submitted", "throttled", "refused", "failed")
# What VOD's error codes look like (`Throttling.User`): another is counted as "other", so that
# no endpoint can grow the hash, or the metric's series, without bound.
_VOD_CODE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")


def submission_field(outcome: str, code: str = "") -> str:
    """The stats field of a SubmitDynamicImageJob call's outcome and VOD's error code."""
    if code and not _VOD_CODE.fullmatch(code):
        code = "other"
    return f"{outcome}|{code}"


async def count_submission(redis: RedisClient, keys: Keys, outcome: str, code: str) -> None:
    """Count a SubmitDynamicImageJob call VOD refused or that failed. A Redis failure loses the
    count, never the call's own error."""
    with suppress(RedisError, OSError):
        await redis.hincrby(keys.submission_stats, submission_field(outcome, code), 1)


async def count_reconcile_pass(
    redis: RedisClient,
    keys: Keys,
    *,
    recovered: int,
    timed_out: int,
    at_ms: int,
    interval_seconds: float | None,
) -> None:
    """Count one reconciliation pass; `interval_seconds` is the reconciler's, when it runs in a
    loop (`status` then expects a pass within 3 of them)."""
    key = keys.reconcile_stats
    last: dict[str, int] = {"last_pass_ms": at_ms}
    if interval_seconds is not None:
        last["interval_ms"] = round(interval_seconds * 1000)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(key, "passes", 1)
        pipe.hincrby(key, "recovered", recovered)
        pipe.hincrby(key, "timed_out", timed_out)
        pipe.hset(key, mapping=last)  # type: ignore[arg-type]  # redis-py types values as str
        await pipe.execute()


@dataclass(frozen=True)
class SubmissionCount:
    outcome: str
    code: str
    """VOD's error code; "" for a submitted job."""
    count: int


def submission_counts(fields: dict[str, str]) -> list[SubmissionCount]:
    """The submission stats hash as counts, by outcome (in SUBMISSION_OUTCOMES' order) and code;
    a field of another shape is ignored."""
    counts = []
    for field, value in fields.items():
        outcome, separator, code = field.partition("|")
        if separator and outcome in SUBMISSION_OUTCOMES and value.isdigit():
            counts.append(SubmissionCount(outcome, code, int(value)))
    return sorted(counts, key=lambda c: (SUBMISSION_OUTCOMES.index(c.outcome), c.code))


@dataclass(frozen=True)
class QuotaUse:
    """One quota of the limiter: `<account>` for submissions (and callback settings),
    `<account>:ListDynamicImage` for lookups."""

    name: str
    calls_per_second: float
    """The pace the limiter keeps (the quota less its 2 % margin)."""
    calls: int
    wait_seconds: float
    """What all its calls waited for their slots, in all."""
    backlog_seconds: float
    """How long a call made now would wait for its slot (0 when one is free now)."""


def quota_uses(fields: dict[str, str], now_us: int) -> list[QuotaUse]:
    """The limiter stats hash as one QuotaUse per quota, by name; `now_us` is Redis's clock."""
    values: dict[str, dict[str, int]] = {}
    for field, value in fields.items():
        name, _, part = field.rpartition("|")
        if name and value.lstrip("-").isdigit():
            values.setdefault(name, {})[part] = int(value)
    uses = []
    for name, parts in sorted(values.items()):
        interval_us = parts.get("interval_us", 0)
        uses.append(
            QuotaUse(
                name=name,
                calls_per_second=round(1_000_000 / interval_us, 2) if interval_us > 0 else 0.0,
                calls=parts.get("calls", 0),
                wait_seconds=parts.get("wait_us", 0) / 1_000_000,
                backlog_seconds=max(0, parts.get("tat_us", 0) - now_us) / 1_000_000,
            )
        )
    return uses


@dataclass(frozen=True)
class ReconcilePasses:
    passes: int = 0
    recovered: int = 0
    timed_out: int = 0
    last_pass_ms: int | None = None
    interval_seconds: float | None = None
    """The interval of the reconciler that made the last pass, if it runs in a loop."""


def reconcile_passes(fields: dict[str, str]) -> ReconcilePasses:
    numbers = {field: int(value) for field, value in fields.items() if value.isdigit()}
    interval_ms = numbers.get("interval_ms")
    return ReconcilePasses(
        passes=numbers.get("passes", 0),
        recovered=numbers.get("recovered", 0),
        timed_out=numbers.get("timed_out", 0),
        last_pass_ms=numbers.get("last_pass_ms"),
        interval_seconds=interval_ms / 1000 if interval_ms is not None else None,
    )
