"""The state of a deployment as Redis holds it, for `vod-webhook status` and the gauges /metrics
reads at scrape time: one snapshot in one pipeline (for `status`, the consumers of each group in
a second), what in it needs an operator's attention, and how both read on a terminal or as JSON.
On Redis Cluster the snapshot adds up every partition's state, and says where each one lives.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ResponseError

from webhook.keys import Keys, entry_order
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
    """Entries delivered to its consumers and not acknowledged yet (in every partition, as
    the counts below)."""
    lag: int | None
    """Entries not delivered to it yet; None when Redis cannot tell (entries were deleted)."""
    last_delivered_id: str
    """The latest any partition's stream delivered (`<id>@<n>` with several partitions)."""
    redriven: int = 0
    """Dead letters redriven to it (`vod-webhook deadletter redrive`) and not acknowledged yet:
    its own stream beside the shared one, outside `lag` and `pending`."""
    members: tuple[Consumer, ...] | None = None
    """Its consumers, when read (by `status`, not by /metrics)."""


@dataclass(frozen=True)
class Partition:
    """One partition's share of the state (one on plain Redis, VOD_WEBHOOK_PARTITIONS on a
    cluster)."""

    number: int
    stream_length: int
    dead_letters: int
    pending_jobs: int
    slot: int | None = None
    """On a cluster: the hash slot all its keys are in."""
    master: str | None = None
    """On a cluster: the master serving that slot (host:port) when the snapshot was read."""


@dataclass(frozen=True)
class Status:
    now_ms: int
    """Redis's clock when the snapshot was read (stream ids and the limiter use it too)."""
    stream_length: int
    oldest_entry_id: str | None
    """Of every partition's stream (`<id>@<n>` with several partitions)."""
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
    partitions: tuple[Partition, ...] = ()

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
    """The snapshot of every partition, in one round trip (on a cluster, one per master; one
    more when there are consumer groups: what was redriven to each and, with `consumers`, its
    consumers, as `status` shows them); StoreUnavailable when Redis does not answer within the
    call deadline."""
    layout = store.layout
    with unavailable():
        async with asyncio.timeout(CALL_DEADLINE_SECONDS):
            async with store.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(layout.shared.limiter_stats)
                pipe.hgetall(layout.shared.reconcile_stats)
                for keys in layout.keys:
                    _read_partition(pipe, keys)
                (seconds, micros), replies = await _with_clock(store, pipe)
            limiter, passes, *per_partition = (_answer(reply) for reply in replies)
            reads = [
                _PartitionRead(
                    keys, *per_partition[n * _PARTITION_READS : (n + 1) * _PARTITION_READS]
                )
                for n, keys in enumerate(layout.keys)
            ]
            groups = [[_group(g, layout.qualify(read.keys, "")) for g in read.groups or []]
                      for read in reads]  # fmt: skip
            if any(groups):
                groups = await _with_details(store, groups, consumers=consumers)
    firsts = (
        layout.qualify(read.keys, read.first_entry_id) for read in reads if read.first_entry_id
    )
    oldest_entry = min(firsts, key=_order, default=None)
    oldest_job = min((read.oldest[0] for read in reads if read.oldest),
                     key=lambda job: job[1], default=None)  # fmt: skip
    return Status(
        now_ms=seconds * 1000 + micros // 1000,
        stream_length=sum(read.stream_length for read in reads),
        oldest_entry_id=oldest_entry,
        groups=_merged(groups),
        dead_letters=sum(read.dead for read in reads),
        pending_jobs=sum(read.pending for read in reads),
        oldest_pending_job=oldest_job[0] if oldest_job else None,
        oldest_submitted_ms=int(oldest_job[1]) if oldest_job else None,
        held_outcomes=sum(read.held for read in reads),
        quotas=tuple(quota_uses(limiter, seconds * 1_000_000 + micros)),
        submissions=tuple(submission_counts(_summed(read.submitted for read in reads))),
        reconcile=reconcile_passes(passes),
        partitions=tuple(_partition(store, read) for read in reads),
    )


async def _with_clock(
    store: Store, pipe: Pipeline | ClusterPipeline
) -> tuple[tuple[int, int], list[Any]]:
    """Redis's clock and the pipeline's replies: TIME in the pipeline on one server; beside it
    on a cluster, whose pipelines refuse a command without a key to route it by."""
    if isinstance(pipe, ClusterPipeline):
        now, replies = await asyncio.gather(store.redis.time(), pipe.execute(raise_on_error=False))
        return now, replies
    pipe.time()
    *replies, now = await pipe.execute(raise_on_error=False)
    return now, replies


# How many replies `_read_partition` queues.
_PARTITION_READS = 7


def _read_partition(pipe: Pipeline | ClusterPipeline, keys: Keys) -> None:
    """Queue the reads of one partition's state, as `_PartitionRead` takes their replies. Its
    submission stats are among them: partition 0's hash holds the counts no job owns (refused
    and failed calls) beside its jobs' submissions."""
    pipe.xinfo_stream(keys.stream)
    pipe.xinfo_groups(keys.stream)
    pipe.xlen(keys.dead_letter)
    pipe.zcard(keys.pending)
    pipe.zrange(keys.pending, 0, 0, withscores=True)
    pipe.zcard(keys.verify_queue)
    pipe.hgetall(keys.submission_stats)


@dataclass(frozen=True)
class _PartitionRead:
    """One partition's replies (None for XINFO on a stream not created yet)."""

    keys: Keys
    stream: dict[str, Any] | None
    groups: list[dict[str, Any]] | None
    dead: int
    pending: int
    oldest: list[tuple[str, float]]
    held: int
    submitted: dict[str, str]

    @property
    def stream_length(self) -> int:
        return int((self.stream or {}).get("length", 0))

    @property
    def first_entry_id(self) -> str | None:
        first = (self.stream or {}).get("first-entry")
        return str(first[0]) if first else None


def _partition(store: Store, read: _PartitionRead) -> Partition:
    """A partition's part of the snapshot; on a cluster, where it lives."""
    slot = master = None
    if isinstance(store.redis, RedisCluster):
        slot = store.redis.keyslot(read.keys.stream)
        node = store.redis.get_node_from_key(read.keys.stream)
        master = node.name if node is not None else None
    return Partition(
        number=read.keys.partition,
        stream_length=read.stream_length,
        dead_letters=read.dead,
        pending_jobs=read.pending,
        slot=slot,
        master=master,
    )


def _summed(hashes: Iterable[dict[str, str]]) -> dict[str, str]:
    """Counter hashes added up field by field (a field that is no count is left out)."""
    totals: Counter[str] = Counter()
    for fields in hashes:
        totals.update({field: int(value) for field, value in fields.items() if value.isdigit()})
    return {field: str(count) for field, count in totals.items()}


def _answer(reply: Any) -> Any:
    """A reply of the pipeline; None for XINFO on a stream not created yet."""
    if isinstance(reply, ResponseError):
        if "no such key" in str(reply).lower():
            return None
        raise reply
    return reply


def _group(info: dict[str, Any], suffix: str) -> Group:
    """A group of XINFO GROUPS, of the partition whose ids end in `suffix` (Layout.qualify)."""
    return Group(
        name=str(info["name"]),
        consumers=int(info["consumers"]),
        pending=int(info["pending"]),
        lag=None if info.get("lag") is None else int(info["lag"]),
        last_delivered_id=str(info["last-delivered-id"]) + suffix,
    )


def _order(envelope_id: str) -> tuple[int, ...]:
    """An id's place in time, whichever partition it names."""
    return entry_order(envelope_id.partition("@")[0])


async def _with_details(
    store: Store, groups: list[list[Group]], *, consumers: bool
) -> list[list[Group]]:
    """Each partition's groups (`groups[n]`: partition n's) with what was redriven to each in
    that partition and, if asked, their consumers there."""
    pairs = [
        (keys, group)
        for keys, mine in zip(store.layout.keys, groups, strict=True)
        for group in mine
    ]
    async with store.redis.pipeline(transaction=False) as pipe:
        for keys, group in pairs:
            pipe.xlen(keys.redrive(group.name))
            if consumers:
                pipe.xinfo_consumers(keys.stream, group.name)
        replies = iter(await pipe.execute(raise_on_error=False))
    result: list[list[Group]] = [[] for _ in groups]
    for keys, group in pairs:
        group = replace(group, redriven=_answer(next(replies)))
        if consumers:
            # A group destroyed between the two reads has no consumers left to show.
            reply = next(replies)
            members = [] if isinstance(reply, ResponseError) else reply
            read = (Consumer(str(c["name"]), int(c["pending"]), int(c["idle"]) / 1000)
                    for c in members)  # fmt: skip
            group = replace(group, members=tuple(read))
        result[keys.partition].append(group)
    return result


def _merged(groups: list[list[Group]]) -> tuple[Group, ...]:
    """Each group once, over every partition's stream: its counts added up. A consumer reads
    every partition under one name (see `webhook.client.consume`), so a group has as many
    consumers as the partition with the most (as many as there are names, when they were
    read), and a consumer is shown once, its pending entries added up and idle since it last
    read any partition."""
    by_name: dict[str, Group] = {}
    for group in (group for mine in groups for group in mine):
        seen = by_name.get(group.name)
        by_name[group.name] = group if seen is None else _added(seen, group)
    return tuple(by_name.values())


def _added(one: Group, other: Group) -> Group:
    """Two partitions' views of one group, as one."""
    members = None
    if one.members is not None and other.members is not None:
        merged: dict[str, Consumer] = {c.name: c for c in one.members}
        for c in other.members:
            seen = merged.get(c.name)
            merged[c.name] = (
                c
                if seen is None
                else Consumer(
                    c.name, seen.pending + c.pending, min(seen.idle_seconds, c.idle_seconds)
                )
            )
        members = tuple(merged.values())
    lag = None if one.lag is None or other.lag is None else one.lag + other.lag
    return Group(
        name=one.name,
        consumers=len(members) if members is not None else max(one.consumers, other.consumers),
        pending=one.pending + other.pending,
        lag=lag,
        last_delivered_id=max(one.last_delivered_id, other.last_delivered_id, key=_order),
        redriven=one.redriven + other.redriven,
        members=members,
    )


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
        "partitions": [asdict(partition) for partition in status.partitions],
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
    if status.partitions and (len(status.partitions) > 1 or status.partitions[0].slot is not None):
        for partition in status.partitions:  # on plain Redis, the one partition is the totals
            row("partition", _partition_line(partition))
    problems = needs_attention(status, settings)
    lines.append("needs attention:" if problems else "nothing needs attention")
    lines.extend(f"  - {problem}" for problem in problems)
    return lines


def _partition_line(partition: Partition) -> str:
    where = f", slot {partition.slot} on {partition.master}" if partition.slot is not None else ""
    return (
        f"{partition.number}: {partition.stream_length} entries, {partition.pending_jobs} "
        f"pending jobs, {partition.dead_letters} dead letters{where}"
    )


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
