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
"""

from __future__ import annotations

from webhook.events import DYNAMIC_IMAGE_COMPLETE

DEFAULT_PREFIX = "vod"


class Keys:
    """Names of every key and channel under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
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
