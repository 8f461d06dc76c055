"""Every Redis key and channel name, under one prefix (the scripts in webhook/scripts derive the
same names: see common.lua). Light: subscribers import it with webhook.client.

Layout (prefix configurable):
  {prefix}:job:{JobId}          hash: status, video_id, verified, submitted_ms, completed_ms,
                                correlated, envelope_id (only short values: a compact listpack)
  {prefix}:job:{JobId}:envelope the outcome's envelope (result, error and submission in full)
  {prefix}:job:{JobId}:submission  what was submitted, until an outcome that is no guess
  {prefix}:pending              sorted set: submitted jobs without an outcome, by submission time
  {prefix}:seen:{fingerprint}   dedup marker of a non-job event (holds its envelope id); the
                                fingerprint's first 128 bits, to keep a marker under 150 bytes
  {prefix}:batch:{fingerprint}  a batch file line: claimed, or job:<JobId> once submitted
  {prefix}:stream               capped stream of envelopes (field `envelope`)
  {prefix}:stream:last-id       the last stream id handed out (the scripts read it, not XINFO)
  {prefix}:deadletter           entries consumers gave up on, with the error (and their history)
  {prefix}:redrive:{group}      dead letters redriven to one consumer group, which reads it beside
                                the stream and deletes each entry once acknowledged
  {prefix}:ready                readiness probe: written by every /readyz, expires in 10 s
  {prefix}:held:{fingerprint}   an outcome awaiting verification (VERIFY_OUTCOMES), then a tombstone
  {prefix}:verify               sorted set: held outcomes by when they are next checked
  {prefix}:stats:submissions    hash: SubmitDynamicImageJob calls, field `<outcome>|<VOD code>`
  {prefix}:stats:limiter        hash: per quota, `<quota>|calls`, `<quota>|wait_us`, and its
                                arrival time and interval, `<quota>|tat_us`, `<quota>|interval_us`
  {prefix}:stats:reconcile      hash: passes, recovered, timed_out, last_pass_ms, interval_ms
                                (the stats hashes: counters of the processes Prometheus does not
                                scrape, exported by /metrics and shown by `status`)
  {prefix}:events, {prefix}:events:{EventType}, {prefix}:jobs:{JobId}   pub/sub channels

On Redis Cluster every name above starts with its partition's hash tag instead of the prefix,
`{prefix-N}` (`{vod-0}:stream`, `{vod-1}:job:<JobId>`), so each script's keys share one slot;
the channels are shard channels (SPUBLISH). A job's keys are in the partition its JobId hashes
to, an event's dedup marker in its fingerprint's; what no job owns (quotas, turns, batch lines,
the limiter's and reconciler's stats) is in partition 0's slot. Plain Redis has one partition
and the names above, unchanged. `{prefix}:partitions` holds the number of partitions the
deployment was started with (see `Layout`).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

from webhook.events import DYNAMIC_IMAGE_COMPLETE

DEFAULT_PREFIX = "vod"
STREAM_ID = re.compile(r"\d+(-\d+)?")


class Keys:
    """Names of every key and channel of one partition: under `prefix`, which is the deployment's
    key prefix on plain Redis and the partition's hash tag on a cluster."""

    def __init__(self, prefix: str, partition: int = 0) -> None:
        self.prefix = prefix
        self.partition = partition
        self.stream = f"{prefix}:stream"
        self.pending = f"{prefix}:pending"
        self.dead_letter = f"{prefix}:deadletter"
        self.events_channel = f"{prefix}:events"
        self.verify_queue = f"{prefix}:verify"
        self.ready = f"{prefix}:ready"
        self.submission_stats = f"{prefix}:stats:submissions"
        self.limiter_stats = f"{prefix}:stats:limiter"
        self.reconcile_stats = f"{prefix}:stats:reconcile"

    def redrive(self, group: str) -> str:
        """Where dead letters redriven to `group` wait for its consumers (and no other group's)."""
        return f"{self.prefix}:redrive:{group}"

    def turn(self, task: str) -> str:
        """Whose turn it is to run `task` (one caller per interval, any process)."""
        return f"{self.prefix}:turn:{task}"

    def quota(self, name: str) -> str:
        """A quota's limiter state: `<account>` an account's submission quota,
        `<account>:ListDynamicImage` its ListDynamicImage one."""
        return f"{self.prefix}:quota:{name}"

    def held(self, fingerprint: str) -> str:
        return f"{self.prefix}:held:{fingerprint}"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def job_envelope(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:envelope"

    def job_submission(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:submission"

    def seen(self, fingerprint: str) -> str:
        # 128 bits are plenty against collisions and cut a marker from 168 to 120 bytes.
        return f"{self.prefix}:seen:{fingerprint[:32]}"

    def batch_line(self, fingerprint: str) -> str:
        return f"{self.prefix}:batch:{fingerprint}"

    def type_channel(self, event_type: str) -> str:
        return f"{self.prefix}:events:{event_type}"

    def job_channel(self, job_id: str) -> str:
        return f"{self.prefix}:jobs:{job_id}"

    def job_outcome_channels(self, job_id: str) -> list[str]:
        return [
            self.events_channel,
            self.type_channel(DYNAMIC_IMAGE_COMPLETE),
            self.job_channel(job_id),
        ]


@dataclass(frozen=True)
class Layout:
    """Where a deployment's keys are: one partition on plain Redis (the names of `Keys(prefix)`),
    `partitions` hash-tagged ones on a cluster, whose scripts publish on shard channels."""

    prefix: str = DEFAULT_PREFIX
    partitions: int = 1
    sharded: bool = False
    """On Redis Cluster: hash-tagged names and sharded pub/sub (SPUBLISH, SSUBSCRIBE)."""
    keys: tuple[Keys, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.partitions < 1 or (self.partitions > 1 and not self.sharded):
            raise ValueError("more than one partition needs Redis Cluster")
        names = [f"{{{self.prefix}-{n}}}" if self.sharded else self.prefix
                 for n in range(self.partitions)]  # fmt: skip
        object.__setattr__(self, "keys", tuple(Keys(name, n) for n, name in enumerate(names)))

    @property
    def shared(self) -> Keys:
        """Partition 0's keys, which also hold what no job owns (quotas, turns, batch lines, the
        limiter's and reconciler's stats)."""
        return self.keys[0]

    @property
    def partitions_key(self) -> str:
        """Where the number of partitions the deployment was started with is kept."""
        return f"{self.prefix}:partitions"

    @property
    def publish(self) -> str:
        """The command the scripts publish with."""
        return "SPUBLISH" if self.sharded else "PUBLISH"

    def of_job(self, job_id: str) -> Keys:
        return self.keys[zlib.crc32(job_id.encode()) % self.partitions]

    def of_event(self, fingerprint: str) -> Keys:
        """The partition of an event no job owns, by its fingerprint (hex)."""
        return self.keys[int(fingerprint[:8], 16) % self.partitions]

    def qualify(self, keys: Keys, entry_id: str) -> str:
        """An envelope's id: its stream entry id, with its partition after an `@` when there
        are several (ids are unique across partitions)."""
        return entry_id if self.partitions == 1 else f"{entry_id}@{keys.partition}"

    def split(self, envelope_id: str) -> tuple[Keys, str]:
        """The partition and stream entry id an envelope id names; ValueError if it names none
        of this layout's partitions."""
        entry_id, at, partition = envelope_id.partition("@")
        if not at:
            if self.partitions > 1:
                raise ValueError(f"{envelope_id!r} names no partition (as in <id>@<partition>)")
            return self.keys[0], entry_id
        if not partition.isdigit() or int(partition) >= self.partitions:
            raise ValueError(
                f"{envelope_id!r} names partition {partition}, and there are {self.partitions}"
            )
        return self.keys[int(partition)], entry_id

    def positions(self, since: str) -> list[str]:
        """Where each partition's stream is read after, for `since` as `replay` and `/events`
        take it: `0` or a stream id (a moment: every partition after it), an envelope id
        (`<id>@<n>`: its partition after it, the others after the same moment), or a cursor of
        every partition's (`<id>@0,<id>@1,...`, as `/events` sends them). ValueError saying what
        is wrong."""
        if STREAM_ID.fullmatch(since):
            return [since] * self.partitions
        named: dict[int, str] = {}
        for part in since.split(","):
            keys, entry_id = self.split(part)
            if not STREAM_ID.fullmatch(entry_id):
                raise ValueError(f"{part!r} is not a stream id (such as 1732476000000-0)")
            named[keys.partition] = entry_id
        earliest = min(named.values(), key=entry_order)
        return [named.get(n, earliest) for n in range(self.partitions)]

    def cursor(self, positions: list[str]) -> str:
        """The text naming every partition's position (as `positions` reads it back)."""
        return ",".join(
            self.qualify(keys, at) for keys, at in zip(self.keys, positions, strict=True)
        )


def entry_order(entry_id: str) -> tuple[int, ...]:
    """A stream id's place in time, to compare ids of different partitions."""
    return tuple(int(part) for part in entry_id.split("-"))
