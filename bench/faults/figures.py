"""What a scenario measured and what it proved: figures, checks, and the stream audit."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from bench.faults.delivery import Ledger


@dataclass(frozen=True)
class Check:
    guarantee: str
    ok: bool
    detail: str


@dataclass
class Figures:
    scenario: str
    callbacks: int = 0  # distinct callbacks sent
    requests: int = 0  # HTTP requests (attempts, duplicates)
    ok_200: int = 0
    unavailable_503: int = 0
    other_5xx: int = 0
    rejected_4xx: int = 0
    no_answer: int = 0  # refused, reset or timed out
    acknowledged: int = 0  # callbacks answered 200 at least once
    lost: int = 0  # acknowledged, yet not in the stream
    duplicates_in_stream: int = 0  # stream entries beyond the first of a job
    gave_up: int = 0  # callbacks VOD would have dropped (no 200 in any attempt)
    max_answer_s: float = 0.0
    p99_answer_s: float = 0.0
    malformed_answers: int = 0  # an error without JSON `error`/`detail`, or a traceback
    extra: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.ok for check in self.checks)

    def check(self, guarantee: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(guarantee, ok, detail))

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def stream_job_counts(client: redis.Redis, stream: str = "vod:stream") -> Counter[str]:
    """How many stream entries each JobId has (outcome envelopes only)."""
    return Counter({job: len(ms) for job, ms in stream_job_times(client, stream).items()})


def stream_job_times(client: redis.Redis, stream: str = "vod:stream") -> dict[str, list[int]]:
    """When each JobId's stream entries were added, in ms since the epoch (their ids' first
    part: Redis's clock); outcome envelopes only."""
    times: dict[str, list[int]] = {}
    start = "-"
    while True:
        entries: Any = client.xrange(stream, min=start, count=5000)
        if not entries:
            return times
        for entry_id, fields in entries:
            envelope = json.loads(fields["envelope"])
            if envelope.get("job_id"):
                times.setdefault(envelope["job_id"], []).append(int(entry_id.split("-")[0]))
            start = f"({entry_id}"


def tally(figures: Figures, ledger: Ledger, stream: Counter[str] | None) -> None:
    """Fill in the answer figures from `ledger` and, given the stream's counts, the audit."""
    statuses = [a.status for a in ledger.answers]
    figures.callbacks = len(ledger.sent)
    figures.requests = len(ledger.answers)
    figures.ok_200 = statuses.count(200)
    figures.unavailable_503 = statuses.count(503)
    figures.other_5xx = sum(1 for s in statuses if s is not None and s >= 500 and s != 503)
    figures.rejected_4xx = sum(1 for s in statuses if s is not None and 400 <= s < 500)
    figures.no_answer = statuses.count(None)
    figures.acknowledged = len(ledger.acknowledged)
    figures.gave_up = ledger.gave_up()
    figures.malformed_answers = sum(1 for a in ledger.answers if not a.well_formed)
    times = sorted(a.seconds for a in ledger.answers if a.status is not None)
    if times:
        figures.max_answer_s = round(times[-1], 3)
        figures.p99_answer_s = round(times[max(0, int(len(times) * 0.99) - 1)], 3)
    if stream is not None:
        figures.lost = sum(1 for job in ledger.acknowledged if stream[job] == 0)
        figures.duplicates_in_stream = sum(max(0, n - 1) for n in stream.values())


def check_answers(figures: Figures) -> None:
    """The guarantees every scenario keeps, whatever it breaks."""
    figures.check(
        "every callback answered 200 is in the stream",
        figures.lost == 0,
        f"{figures.lost} of {figures.acknowledged} acknowledged callbacks missing",
    )
    figures.check(
        "each callback is in the stream exactly once",
        figures.duplicates_in_stream == 0,
        f"{figures.duplicates_in_stream} extra entries",
    )
    figures.check(
        "no valid callback rejected (4xx)",
        figures.rejected_4xx == 0,
        f"{figures.rejected_4xx} answers 4xx",
    )
    figures.check("no 5xx but 503", figures.other_5xx == 0, f"{figures.other_5xx} other 5xx")
    figures.check(
        "every error answer is JSON with error and detail, no traceback",
        figures.malformed_answers == 0,
        f"{figures.malformed_answers} malformed",
    )
