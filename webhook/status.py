"""The state of a deployment as Redis holds it, for `vod-webhook status` and the gauges /metrics
reads at scrape time: one snapshot in one pipeline (for `status`, the consumers of each group in
a second), what in it needs an operator's attention, and how both read on a terminal or as JSON.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import ResponseError

from webhook.settings import Settings
from webhook.stats import (
    QuotaUse,
    ReconcilePasses,
    SubmissionCount,
    quota_uses,
    reconcile_passes,
    submission_counts,
)
from webhook.store import CALL_DEADLINE_SECONDS, Store, unavailable

# A pass is overdue after this many of the reconciler's intervals.
MISSED_PASSES = 3


@dataclass(frozen=True)
class Consumer:
    name: str
    pending: int
    idle_seconds: float
    """Since it last read from the group (or tried to)."""


@dataclass(frozen=True)
class Group:
    """A consumer group over the stream."""

    name: str
    consumers: int
    pending: int
    """Entries delivered to its consumers and not acknowledged yet."""
    lag: int | None
    """Entries not delivered to it yet; None when Redis cannot tell (entries were deleted)."""
    last_delivered_id: str
    redriven: int = 0
    """Dead letters redriven to it (`vod-webhook deadletter redrive`) and not acknowledged yet:
    its own stream beside the shared one, outside `lag` and `pending`."""
    members: tuple[Consumer, ...] | None = None
    """Its consumers, when read (by `status`, not by /metrics)."""


@dataclass(frozen=True)
class Status:
    now_ms: int
    """Redis's clock when the snapshot was read (stream ids and the limiter use it too)."""
    stream_length: int
    oldest_entry_id: str | None
    groups: tuple[Group, ...]
    dead_letters: int
    pending_jobs: int
    oldest_pending_job: str | None
    oldest_submitted_ms: int | None
    held_outcomes: int
    """Outcomes awaiting verification (VERIFY_OUTCOMES)."""
    quotas: tuple[QuotaUse, ...]
    submissions: tuple[SubmissionCount, ...]
    reconcile: ReconcilePasses

    @property
    def oldest_entry_age_seconds(self) -> float | None:
        if self.oldest_entry_id is None:
            return None
        return self._age(int(self.oldest_entry_id.partition("-")[0]))

    @property
    def oldest_pending_age_seconds(self) -> float | None:
        return None if self.oldest_submitted_ms is None else self._age(self.oldest_submitted_ms)

    @property
    def last_pass_age_seconds(self) -> float | None:
        last = self.reconcile.last_pass_ms
        return None if last is None else self._age(last)

    def _age(self, since_ms: int) -> float:
        return max(0, self.now_ms - since_ms) / 1000


async def read_status(store: Store, *, consumers: bool = False) -> Status:
    """The snapshot, in one round trip (two when there are consumer groups: what was redriven
    to each and, with `consumers`, its consumers, as `status` shows them); StoreUnavailable
    when Redis does not answer within the call deadline."""
    keys = store.shared
    with unavailable():
        async with asyncio.timeout(CALL_DEADLINE_SECONDS):
            async with store.redis.pipeline(transaction=False) as pipe:
                pipe.time()
                pipe.xinfo_stream(keys.stream)
                pipe.xinfo_groups(keys.stream)
                pipe.xlen(keys.dead_letter)
                pipe.zcard(keys.pending)
                pipe.zrange(keys.pending, 0, 0, withscores=True)
                pipe.zcard(keys.verify_queue)
                pipe.hgetall(keys.submission_stats)
                pipe.hgetall(keys.limiter_stats)
                pipe.hgetall(keys.reconcile_stats)
                replies = await pipe.execute(raise_on_error=False)
            now, stream, groups, dead, pending, oldest, held, submitted, limiter, passes = (
                _answer(reply) for reply in replies
            )
            group_list = [_group(g) for g in groups or []]
            if group_list:
                group_list = await _with_details(store, group_list, consumers=consumers)
    seconds, micros = now
    first = (stream or {}).get("first-entry")
    return Status(
        now_ms=seconds * 1000 + micros // 1000,
        stream_length=(stream or {}).get("length", 0),
        oldest_entry_id=first[0] if first else None,
        groups=tuple(group_list),
        dead_letters=dead,
        pending_jobs=pending,
        oldest_pending_job=oldest[0][0] if oldest else None,
        oldest_submitted_ms=int(oldest[0][1]) if oldest else None,
        held_outcomes=held,
        quotas=tuple(quota_uses(limiter, seconds * 1_000_000 + micros)),
        submissions=tuple(submission_counts(submitted)),
        reconcile=reconcile_passes(passes),
    )


def _answer(reply: Any) -> Any:
    """A reply of the pipeline; None for XINFO on a stream not created yet."""
    if isinstance(reply, ResponseError):
        if "no such key" in str(reply).lower():
            return None
        raise reply
    return reply


def _group(info: dict[str, Any]) -> Group:
    return Group(
        name=str(info["name"]),
        consumers=int(info["consumers"]),
        pending=int(info["pending"]),
        lag=None if info.get("lag") is None else int(info["lag"]),
        last_delivered_id=str(info["last-delivered-id"]),
    )


async def _with_details(store: Store, groups: list[Group], *, consumers: bool) -> list[Group]:
    """The groups with what was redriven to each and, if asked, their consumers."""
    keys = store.shared
    async with store.redis.pipeline(transaction=False) as pipe:
        for group in groups:
            pipe.xlen(keys.redrive(group.name))
            if consumers:
                pipe.xinfo_consumers(keys.stream, group.name)
        replies = iter(await pipe.execute(raise_on_error=False))
    result = []
    for group in groups:
        group = replace(group, redriven=_answer(next(replies)))
        if consumers:
            # A group destroyed between the two reads has no consumers left to show.
            reply = next(replies)
            members = [] if isinstance(reply, ResponseError) else reply
            read = (Consumer(str(c["name"]), int(c["pending"]), int(c["idle"]) / 1000)
                    for c in members)  # fmt: skip
            group = replace(group, members=tuple(read))
        result.append(group)
    return result


def reconcile_expected(status: Status, settings: Settings) -> bool:
    """Whether a reconciliation pass is due every interval: this Redis has seen one (some
    `reconcile` or `serve` reconciles here), or these settings run it (RECONCILE=true)."""
    return settings.reconcile or status.reconcile.passes > 0


def needs_attention(status: Status, settings: Settings) -> list[str]:
    """What an operator should look at, one sentence each; none when all is well."""
    problems = []
    if status.dead_letters:
        problems.append(
            f"{status.dead_letters} dead-lettered entr{'y' if status.dead_letters == 1 else 'ies'}"
            " (consumers gave up on them)"
        )
    age, deadline = status.oldest_pending_age_seconds, settings.reconcile_deadline_seconds
    if age is not None and age > deadline:
        problems.append(
            f"job {status.oldest_pending_job} has been pending {_duration(age)}, past "
            f"VOD_WEBHOOK_RECONCILE_DEADLINE_SECONDS ({deadline:g} s): is reconciliation running?"
        )
    if reconcile_expected(status, settings):
        interval = status.reconcile.interval_seconds or settings.reconcile_interval_seconds
        since = status.last_pass_age_seconds
        if since is None:
            problems.append("no reconciliation pass yet, though VOD_WEBHOOK_RECONCILE is set")
        elif since > MISSED_PASSES * interval:
            problems.append(
                f"no reconciliation pass for {_duration(since)}, over {MISSED_PASSES} intervals "
                f"of {interval:g} s"
            )
    return problems


def status_document(status: Status, settings: Settings) -> dict[str, Any]:
    """`status --json`: a stable shape (README "Commands"); times in UTC, ages in seconds."""
    passes = status.reconcile
    return {
        "redis_time": _utc(status.now_ms),
        "stream": {
            "length": status.stream_length,
            "oldest_id": status.oldest_entry_id,
            "oldest_age_seconds": status.oldest_entry_age_seconds,
        },
        "groups": [
            {
                "name": group.name,
                "lag": group.lag,
                "pending": group.pending,
                "last_delivered_id": group.last_delivered_id,
                "redriven": group.redriven,
                "consumers": [asdict(consumer) for consumer in group.members or ()],
            }
            for group in status.groups
        ],
        "dead_letters": status.dead_letters,
        "pending_jobs": {
            "count": status.pending_jobs,
            "oldest_job_id": status.oldest_pending_job,
            "oldest_age_seconds": status.oldest_pending_age_seconds,
        },
        "held_outcomes": status.held_outcomes,
        "quotas": [asdict(quota) for quota in status.quotas],
        "submissions": [asdict(count) for count in status.submissions],
        "reconcile": {
            "expected": reconcile_expected(status, settings),
            "passes": passes.passes,
            "recovered": passes.recovered,
            "timed_out": passes.timed_out,
            "last_pass_at": _utc(passes.last_pass_ms) if passes.last_pass_ms else None,
            "last_pass_age_seconds": status.last_pass_age_seconds,
            "interval_seconds": passes.interval_seconds,
        },
        "attention": needs_attention(status, settings),
    }


def status_lines(status: Status, settings: Settings) -> list[str]:
    """`status` for a terminal: a line per item, labels aligned, then what needs attention."""
    lines = []

    def row(label: str, text: str) -> None:
        lines.append(f"{label:<16}{text}")

    oldest, first = status.oldest_entry_age_seconds, status.oldest_entry_id
    since = f", oldest {first} ({_duration(oldest)} old)" if oldest is not None else ""
    row("stream", f"{status.stream_length} entries{since}")
    for group in status.groups:
        lag = "unknown" if group.lag is None else group.lag
        redriven = f", {group.redriven} redriven" if group.redriven else ""
        row("group", f"{group.name}: lag {lag}, {group.pending} pending{redriven}, "
            f"{group.consumers} consumers")  # fmt: skip
        for consumer in group.members or ():
            idle = _duration(consumer.idle_seconds)
            row("  consumer", f"{consumer.name}: {consumer.pending} pending, idle {idle}")
    row("dead letters", str(status.dead_letters))
    age, job = status.oldest_pending_age_seconds, status.oldest_pending_job
    oldest_job = f", oldest {job} ({_duration(age)})" if age is not None else ""
    row("pending jobs", f"{status.pending_jobs}{oldest_job}")
    row("held outcomes", str(status.held_outcomes))
    for quota in status.quotas:
        backlog = quota.backlog_seconds
        now = f"next slot in {_duration(backlog)}" if backlog else "a slot is free now"
        row("quota", f"{quota.name}: {quota.calls} calls at up to {quota.calls_per_second:g}/s, "
            f"{_duration(quota.wait_seconds)} waited in all; {now}")  # fmt: skip
    row("submissions", _submissions(status.submissions))
    row("reconciliation", _reconciliation(status, settings))
    problems = needs_attention(status, settings)
    lines.append("needs attention:" if problems else "nothing needs attention")
    lines.extend(f"  - {problem}" for problem in problems)
    return lines


def _submissions(counts: tuple[SubmissionCount, ...]) -> str:
    if not counts:
        return "none counted"
    by_outcome: dict[str, list[SubmissionCount]] = {}
    for count in counts:
        by_outcome.setdefault(count.outcome, []).append(count)
    parts = []
    for outcome, items in by_outcome.items():
        codes = ", ".join(f"{c.code} {c.count}" for c in items if c.code)
        total = sum(c.count for c in items)
        parts.append(f"{outcome} {total}" + (f" ({codes})" if codes else ""))
    return "; ".join(parts)


def _reconciliation(status: Status, settings: Settings) -> str:
    passes, since = status.reconcile, status.last_pass_age_seconds
    if since is None:
        expected = " (expected: VOD_WEBHOOK_RECONCILE is set)" if settings.reconcile else ""
        return f"no pass yet{expected}"
    every = f", every {passes.interval_seconds:g} s" if passes.interval_seconds else ""
    return (
        f"last pass {_duration(since)} ago{every}; {passes.passes} passes, "
        f"{passes.recovered} recovered, {passes.timed_out} timed out"
    )


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def _utc(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
