"""MNS ingest under faults: VOD's events written into an MNS queue (the emulator's) and taken
into Redis (AOF, appendfsync always) by two `vod-webhook ingest-mns` processes, while both are
stopped for a while, one is SIGKILLed and Redis is killed -9.

What it proves: every event the queue accepted is in the stream once, the queue ends empty,
nothing is dead-lettered, ingest stops cleanly on SIGTERM and records nothing while stopped.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mns.account import Account
from mns.queue import QueueMeta

from bench.faults.delivery import callback_body, new_job_id
from bench.faults.figures import Figures, stream_job_times
from bench.processes import ACCESS_KEY, Emulator, Ingester, RedisProcess
from webhook.keys import DEFAULT_PREFIX, Keys
from webhook.mns import MnsError, MnsQueue, static_credentials

QUEUE = "vod-events"
KEYS = Keys(DEFAULT_PREFIX)
DRAIN_SECONDS = 120  # after the last send, for the queue to empty
COPY_WITHIN_SECONDS = 1.0  # how long after an event VOD may write it again


@dataclass
class Sent:
    """What this process wrote into the queue."""

    messages: int = 0
    accepted: int = 0  # messages the queue took
    events: set[str] = field(default_factory=set)  # JobIds
    accepted_events: set[str] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)
    done: float = 0.0  # time.monotonic() when the last send ended


def schedule(
    events: int, rate: float, duplicate_rate: float, seed: int
) -> list[tuple[float, str, str]]:
    """(seconds from the start, JobId, body) of each message in sending order: event n at
    n / rate, a share of them written again within COPY_WITHIN_SECONDS, as VOD sometimes does."""
    rng = random.Random(seed)
    messages = []
    for n in range(events):
        job_id = new_job_id()
        body = callback_body(job_id, rng).decode()
        messages.append((n / rate, job_id, body))
        if rng.random() < duplicate_rate:
            messages.append((n / rate + rng.uniform(0, COPY_WITHIN_SECONDS), job_id, body))
    return sorted(messages, key=lambda message: message[0])


async def send(queue: MnsQueue, messages: list[tuple[float, str, str]], sent: Sent) -> None:
    started = time.monotonic()
    for at, job_id, body in messages:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        sent.messages += 1
        sent.events.add(job_id)
        try:
            await queue.send(body)
        except MnsError as exc:
            sent.errors[exc.code] += 1
            continue
        sent.accepted += 1
        sent.accepted_events.add(job_id)
    sent.done = time.monotonic()


def create_queue(endpoint: str, visibility_timeout: int) -> None:
    """The queue, through the official SDK, as an operator creates it (MNS's other defaults)."""
    meta = QueueMeta()
    meta.set_visibilitytimeout(visibility_timeout)
    account = Account(endpoint, ACCESS_KEY.id, ACCESS_KEY.secret)
    try:
        account.get_queue(QUEUE).create(meta)
    finally:
        account.mns_client.close_connection()  # the SDK keeps it alive otherwise


def recorded(redis: RedisProcess) -> int:
    with redis.client() as client:
        return int(client.xlen(KEYS.stream))


async def until_recorded(redis: RedisProcess, count: float, seconds: float) -> None:
    """Until the stream holds `count` entries, looking every 0.05 s (another process writes
    it: there is no event to wait on)."""
    async with asyncio.timeout(seconds):
        while await asyncio.to_thread(recorded, redis) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def mns_ingest(
    workdir: Path,
    *,
    events: int = 3000,
    rate: float = 100,
    stopped_seconds: float = 30,
    duplicate_rate: float = 0.1,
    visibility_timeout: int = 30,
    redis_down_seconds: float = 1.5,
    seed: int = 5,
) -> Figures:
    """Write `events` DynamicImageComplete into the queue at `rate`, some twice. At 15 % of them
    recorded both ingests get SIGTERM and stay stopped `stopped_seconds` while the writing goes
    on; at 50 % one is SIGKILLed and restarted at once; at 70 % Redis is killed -9 and restarted
    after `redis_down_seconds`. The shares are of ingest's progress, not of the writing: with
    the defaults the writing ends while both are stopped (3000 at 100/s take 30 s), and the later
    faults hit ingest while it drains the backlog."""
    figures = Figures("MNS ingest: stopped, SIGKILL, Redis kill -9")
    sent = Sent()
    window: dict[str, float] = {}
    codes: list[int | None] = []
    lengths: dict[str, int] = {}
    backlog: set[str] = set()
    redis = RedisProcess(workdir / "mns", aof=True)
    redis.directory.mkdir(parents=True, exist_ok=True)
    emulator = Emulator(workdir / "mns-emulator.log")
    ingests = [
        Ingester(redis.url, emulator.base, QUEUE, workdir / f"mns-ingest-{n}.log") for n in (1, 2)
    ]
    queue = MnsQueue(emulator.base, QUEUE, static_credentials(ACCESS_KEY))
    # How long a share of the events may take to be recorded, however the faults fall.
    progress_limit = events / rate + stopped_seconds + visibility_timeout + 60

    async def start_both() -> None:
        await asyncio.gather(*(asyncio.to_thread(ingest.start) for ingest in ingests))

    async def stop_both() -> list[int | None]:
        return list(await asyncio.gather(*(asyncio.to_thread(ingest.stop) for ingest in ingests)))

    async def chaos() -> None:
        await until_recorded(redis, 0.15 * events, progress_limit)
        codes.extend(await stop_both())
        window["stopped"] = time.monotonic()
        lengths["at_stop"] = await asyncio.to_thread(recorded, redis)
        await asyncio.sleep(stopped_seconds)
        lengths["before_restart"] = await asyncio.to_thread(recorded, redis)
        backlog.update(sent.accepted_events)
        window["restarting"], window["restarting_epoch"] = time.monotonic(), time.time()
        await start_both()
        await until_recorded(redis, 0.5 * events, progress_limit)
        await asyncio.to_thread(ingests[0].kill)
        await asyncio.to_thread(ingests[0].start)
        await until_recorded(redis, 0.7 * events, progress_limit)
        killed = time.monotonic()
        await asyncio.to_thread(redis.kill)
        await asyncio.sleep(redis_down_seconds)
        await asyncio.to_thread(redis.start)
        window["redis_down"] = time.monotonic() - killed

    try:
        await asyncio.to_thread(redis.start)
        await asyncio.to_thread(emulator.start)
        await asyncio.to_thread(create_queue, emulator.base, visibility_timeout)
        await start_both()
        breaking = asyncio.create_task(chaos())
        await send(queue, schedule(events, rate, duplicate_rate, seed), sent)
        await breaking
        left = await until_empty(emulator, sent.done + DRAIN_SECONDS)
        empty_after = time.monotonic() - sent.done
        codes.extend(await stop_both())
        with redis.client() as client:
            times = stream_job_times(client)
            dead_letters = int(client.xlen(KEYS.dead_letter))
    finally:
        await queue.aclose()
        for process in (*ingests, emulator, redis):
            process.stop()

    figures.callbacks = len(sent.events)
    figures.requests = sent.messages
    figures.acknowledged = sent.accepted
    figures.lost = sum(1 for job in sent.accepted_events if job not in times)
    figures.duplicates_in_stream = sum(len(ms) - 1 for ms in times.values())
    # When each event of the backlog (accepted before the restart) was first recorded.
    drained = sorted(min(times[job]) / 1000 - window["restarting_epoch"] for job in backlog
                     if job in times) or [0.0]  # fmt: skip
    figures.extra = {
        "stopped_s": round(window["restarting"] - window["stopped"], 2),
        "backlog_drained_s": round(max(0.0, drained[-1]), 2),
        # Without the few a killed ingest held, which wait out the VisibilityTimeout.
        "backlog_99pct_drained_s": round(max(0.0, drained[int(len(drained) * 0.99) - 1]), 2),
        "empty_after_last_send_s": round(empty_after, 2),
        "redis_down_s": round(window["redis_down"], 2),
        "dead_letters": dead_letters,
        "sigterm_exit_codes": codes,
        "send_errors": dict(sent.errors),
    }
    figures.check(
        "every event the queue accepted is in the stream",
        figures.lost == 0,
        f"{figures.lost} of {len(sent.accepted_events)} accepted events missing",
    )
    figures.check(
        "each event is in the stream exactly once",
        figures.duplicates_in_stream == 0,
        f"{figures.duplicates_in_stream} extra entries",
    )
    figures.check(
        "the queue ends empty",
        not any(left.values()),
        f"{left} after {empty_after:.1f} s from the last send",
    )
    figures.check("no dead letters", dead_letters == 0, f"{dead_letters}")
    figures.check("ingest exits 0 on SIGTERM", codes == [0] * 4, f"exit codes {codes}")
    figures.check(
        "nothing recorded while both ingests were stopped",
        lengths["at_stop"] == lengths["before_restart"],
        f"stream length {lengths['at_stop']} when stopped, {lengths['before_restart']} before "
        "the restart",
    )
    return figures


async def until_empty(emulator: Emulator, deadline: float) -> dict[str, int]:
    """Until the queue holds no message (or `deadline`, monotonic): its last counts."""
    while True:
        counts = await asyncio.to_thread(emulator.queue_counts, QUEUE)
        left = {state: counts[state] for state in ("visible", "invisible", "delayed")}
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.1)


MNS_SCENARIOS = {"mns-ingest": mns_ingest}
