"""The fault suite at small scale (`make faults` runs it at full scale, bench/faults): Redis
killed and restarted, the receiver killed and restarted, Redis paused, a burst of duplicates,
Redis out of memory, MNS ingest stopped and killed. Each runs the real `vod-webhook serve` (or
`emulator` and `ingest-mns`) and its own redis-server in subprocesses, and checks the guarantees
the README's "Guarantees" (and "Receiving through MNS instead") section promises."""

from __future__ import annotations

from pathlib import Path

from bench.faults import mns, scenarios
from bench.faults.figures import Figures


def assert_kept(figures: Figures) -> None:
    broken = [f"{c.guarantee}: {c.detail}" for c in figures.checks if not c.ok]
    assert not broken, f"{figures.scenario}: " + "; ".join(broken) + f" ({figures.as_json()})"


async def test_redis_killed_and_restarted_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """kill -9 of Redis (AOF, appendfsync always) under load: every 200 is in the stream once,
    503 only while Redis is down, /readyz 503 then 200."""
    assert_kept(await scenarios.redis_kill(tmp_path, callbacks=300, rate=100, down_seconds=1.0))


async def test_receiver_killed_and_restarted_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """SIGKILL of the receiver while VOD delivers (3 attempts, some twice): every 200 is in the
    stream exactly once."""
    figures = await scenarios.receiver_kills(
        tmp_path, callbacks=300, rate=100, max_kills=1, uptime=(1.0, 1.0)
    )
    assert_kept(figures)


async def test_redis_paused_every_answer_inside_vods_deadline(tmp_path: Path) -> None:
    """CLIENT PAUSE 3000: every answer comes inside VOD's 5 s."""
    assert_kept(await scenarios.client_pause(tmp_path, callbacks=300, rate=100))


async def test_concurrent_copies_of_one_callback_make_one_entry(tmp_path: Path) -> None:
    """Concurrent copies of one callback on a healthy Redis: one stream entry, every answer 200."""
    assert_kept(await scenarios.concurrent_duplicates(tmp_path, copies=300))


async def test_redis_out_of_memory_answers_503_and_not_ready(tmp_path: Path) -> None:
    """maxmemory + noeviction: callbacks 503, /readyz 503; both 200 once memory is freed."""
    assert_kept(await scenarios.redis_oom(tmp_path))


async def test_mns_ingest_stopped_killed_and_without_redis_loses_nothing(tmp_path: Path) -> None:
    """Both ingests stopped while events are written, one SIGKILLed, Redis killed -9: every
    event the queue accepted is in the stream once, the queue ends empty, SIGTERM exits 0."""
    # A short VisibilityTimeout: what a killed ingest held comes back in 2 s rather than 30.
    figures = await mns.mns_ingest(
        tmp_path, events=150, rate=100, stopped_seconds=2, visibility_timeout=2
    )
    assert_kept(figures)
