"""The fault scenarios: each breaks something real under load and returns its figures and checks.

Every scenario starts its own redis-server and the real `vod-webhook serve` in subprocesses
(the load comes from this process, over loopback), and bounds every loop in count and time.
`make faults` runs them at full scale (bench/faults/__main__.py); tests/test_faults.py runs
them small inside `make test`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.faults.delivery import Ledger, Load, callback_body, new_job_id, post, run_load
from bench.faults.figures import Figures, check_answers, stream_job_counts, tally
from bench.processes import Receiver, RedisProcess

VOD_DEADLINE_SECONDS = 5.0


@dataclass
class Probe:
    """GET /readyz every `every` seconds until stopped: (started, ended, status or None)."""

    url: str
    every: float = 0.05
    samples: list[tuple[float, float, int | None]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event, limit: float = 600) -> None:
        ends_at = time.monotonic() + limit
        async with httpx.AsyncClient() as client:
            while not stop.is_set() and time.monotonic() < ends_at:
                started = time.monotonic()
                try:
                    status: int | None = (await client.get(self.url, timeout=10)).status_code
                except httpx.HTTPError:
                    status = None
                self.samples.append((started, time.monotonic(), status))
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.every)

    def statuses(self, after: float = 0, before: float = float("inf")) -> list[int | None]:
        return [s for started, ended, s in self.samples if started >= after and ended <= before]


def _at_share(share: float, count: int, reached: asyncio.Event) -> Callable[[int], Awaitable[None]]:
    async def progress(n: int) -> None:
        if n >= share * count:
            reached.set()

    return progress


async def _start(process: RedisProcess | Receiver) -> None:
    await asyncio.to_thread(process.start)


@asynccontextmanager
async def _serving(
    workdir: Path, name: str, *, aof: bool = False
) -> AsyncIterator[tuple[RedisProcess, Receiver]]:
    """A redis-server (its data in `workdir/name`) and the receiver on it (its log in
    `workdir/name.log`), both started; both stopped on the way out."""
    redis = RedisProcess(workdir / name, aof=aof)
    redis.directory.mkdir(parents=True, exist_ok=True)
    redis.start()
    receiver = Receiver(redis.url, workdir / f"{name}.log")
    try:
        await _start(receiver)
        yield redis, receiver
    finally:
        receiver.stop()
        redis.stop()


def _audit(figures: Figures, ledger: Ledger, redis: RedisProcess) -> None:
    with redis.client() as client:
        tally(figures, ledger, stream_job_counts(client))
    check_answers(figures)


async def redis_kill(
    workdir: Path, *, callbacks: int = 3000, rate: float = 400, down_seconds: float = 1.5
) -> Figures:
    """kill -9 of Redis (AOF, appendfsync always) a third into the load, restart on the same
    port after `down_seconds`: nothing answered 200 is lost, 503 only while Redis is down,
    /readyz 503 then 200."""
    figures = Figures("redis kill -9 + restart (AOF always)")
    ledger, stop, reached = Ledger(), asyncio.Event(), asyncio.Event()
    window: dict[str, float] = {}
    async with _serving(workdir, "redis-kill", aof=True) as (redis, receiver):
        probe = Probe(f"{receiver.base}/readyz")

        async def chaos() -> None:
            await asyncio.wait_for(reached.wait(), 120)
            window["killing"] = time.monotonic()
            await asyncio.to_thread(redis.kill)
            window["killed"] = time.monotonic()  # dead and reaped
            await asyncio.sleep(down_seconds)
            window["restarting"] = time.monotonic()  # Redis may answer from here on
            await _start(redis)
            window["back"] = time.monotonic()

        probing = asyncio.create_task(probe.run(stop))
        breaking = asyncio.create_task(chaos())
        load = Load(callbacks, concurrency=32, rate=rate, deadline=120)
        await run_load(receiver.callback_url, receiver.callback_url, load, ledger,
                       _at_share(1 / 3, callbacks, reached))  # fmt: skip
        await breaking
        await asyncio.sleep(0.3)  # a few probes after the load
        stop.set()
        await probing
        _audit(figures, ledger, redis)
    killing, killed, back = window["killing"], window["killed"], window["back"]
    outside = [
        a for a in ledger.answers if a.status == 503 and (a.started > back or a.ended < killing)
    ]
    # Down for sure: from its death until its restart began (not until the harness saw it back).
    during = probe.statuses(after=killed, before=window["restarting"])
    after = probe.statuses(after=back)
    figures.extra = {
        "redis_down_s": round(back - killing, 2),
        "503_after_redis_back": sum(1 for a in outside if a.started > back),
        "readyz_during_outage": _summary(during),
        "readyz_after_restart": _summary(after),
    }
    figures.check(
        "503 only while Redis is down",
        not outside,
        f"{len(outside)} answers 503 outside the outage "
        f"({figures.extra['503_after_redis_back']} after Redis answered again)",
    )
    figures.check(
        "/readyz 503 while Redis is down, then 200",
        503 in during and bool(after) and after[-1] == 200 and 200 not in during,
        f"during: {_summary(during)}; after: {_summary(after)}",
    )
    return figures


async def receiver_kills(
    workdir: Path,
    *,
    callbacks: int = 10_000,
    max_kills: int = 12,
    uptime: tuple[float, float] = (1.0, 3.0),
    rate: float = 0,
    seed: int = 11,
) -> Figures:
    """SIGKILL the receiver and restart it, again and again, while VOD delivers `callbacks`:
    every callback answered 200 is in the stream exactly once; what VOD gave up on is counted
    (reconciliation recovers those)."""
    figures = Figures("receiver SIGKILL/restart loop")
    ledger, done, rng = Ledger(), asyncio.Event(), random.Random(seed)
    downtimes: list[float] = []
    async with _serving(workdir, "receiver-kills") as (redis, receiver):

        async def chaos() -> None:
            while len(downtimes) < max_kills and not done.is_set():
                with suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), rng.uniform(*uptime))
                if done.is_set():
                    return
                killed = time.monotonic()
                await asyncio.to_thread(receiver.kill)
                await _start(receiver)
                downtimes.append(time.monotonic() - killed)

        breaking = asyncio.create_task(chaos())
        load = Load(
            callbacks, concurrency=64, rate=rate, duplicate_rate=0.05, deadline=600, seed=seed
        )
        try:
            await run_load(receiver.callback_url, receiver.callback_url, load, ledger)
        finally:
            done.set()
            await breaking
        _audit(figures, ledger, redis)
    figures.extra = {
        "kills": len(downtimes),
        "mean_down_s": round(sum(downtimes) / len(downtimes), 2) if downtimes else 0,
        "vod_gave_up": figures.gave_up,
        "deliveries": ledger.deliveries,
    }
    figures.check(
        "the receiver was killed during the load", bool(downtimes), f"{len(downtimes)} kills"
    )
    return figures


async def client_pause(
    workdir: Path, *, callbacks: int = 1500, rate: float = 300, pause_ms: int = 3000
) -> Figures:
    """`CLIENT PAUSE 3000` on Redis during the load: every answer (callbacks and /readyz)
    comes inside VOD's 5 s deadline."""
    figures = Figures(f"CLIENT PAUSE {pause_ms}")
    ledger, stop, reached = Ledger(), asyncio.Event(), asyncio.Event()
    async with _serving(workdir, "client-pause") as (redis, receiver):
        probe = Probe(f"{receiver.base}/readyz")

        async def chaos() -> None:
            await asyncio.wait_for(reached.wait(), 120)
            client = redis.client()
            try:
                await asyncio.to_thread(client.execute_command, "CLIENT", "PAUSE", pause_ms)
            finally:
                client.close()

        probing = asyncio.create_task(probe.run(stop))
        breaking = asyncio.create_task(chaos())
        # Measured past VOD's 5 s, so a slow answer shows as slow rather than as a time-out.
        load = Load(callbacks, concurrency=32, rate=rate, timeout=15, deadline=120)
        await run_load(receiver.callback_url, receiver.callback_url, load, ledger,
                       _at_share(1 / 3, callbacks, reached))  # fmt: skip
        await breaking
        stop.set()
        await probing
        _audit(figures, ledger, redis)
    probe_max = max((ended - started for started, ended, _ in probe.samples), default=0.0)
    figures.extra = {"readyz_max_s": round(probe_max, 3)}
    slowest = max(figures.max_answer_s, probe_max)
    figures.check(
        "every answer inside 5 s",
        slowest < VOD_DEADLINE_SECONDS and figures.no_answer == 0,
        f"slowest callback {figures.max_answer_s:.2f} s, /readyz {probe_max:.2f} s, "
        f"{figures.no_answer} without an answer",
    )
    return figures


async def concurrent_duplicates(workdir: Path, *, copies: int = 1000) -> Figures:
    """`copies` concurrent deliveries of one callback on a healthy Redis: one stream entry,
    every answer 200."""
    figures = Figures(f"{copies} concurrent copies of one callback")
    ledger = Ledger()
    job_id = new_job_id()
    body = callback_body(job_id, random.Random(1))
    async with _serving(workdir, "duplicates") as (redis, receiver):
        limits = httpx.Limits(max_connections=copies, max_keepalive_connections=copies)
        async with httpx.AsyncClient(limits=limits) as client:
            answers = await asyncio.gather(
                *(post(client, receiver.callback_url, receiver.callback_url, body, ledger,
                       within=30) for _ in range(copies))
            )  # fmt: skip
        ledger.sent.add(job_id)
        if any(a.status == 200 for a in answers):
            ledger.acknowledged.add(job_id)
        with redis.client() as admin:
            counts = stream_job_counts(admin)
        tally(figures, ledger, counts)
        check_answers(figures)
        figures.extra = {"stream_entries": counts[job_id], "errors": _errors(ledger)}
    figures.check(
        "one stream entry",
        figures.extra["stream_entries"] == 1,
        f"{figures.extra['stream_entries']}",
    )
    figures.check(
        "0 x 5xx (503 included) on a healthy Redis",
        figures.unavailable_503 + figures.other_5xx == 0 and figures.ok_200 == copies,
        f"{figures.ok_200} x 200, {figures.unavailable_503} x 503, {figures.other_5xx} other "
        f"5xx, {figures.no_answer} without answer; errors {figures.extra['errors']}",
    )
    return figures


async def redis_oom(workdir: Path) -> Figures:
    """Redis at `maxmemory` with `noeviction`: callbacks get 503 and /readyz answers 503;
    once memory is freed, both answer 200 again."""
    figures = Figures("Redis OOM (maxmemory + noeviction)")
    ledger = Ledger()
    url = ""

    async def send(n: int, client: httpx.AsyncClient) -> list[int | None]:
        rng = random.Random(n)
        jobs = [new_job_id() for _ in range(n)]
        answers = await asyncio.gather(
            *(post(client, url, url, callback_body(job, rng), ledger) for job in jobs)
        )
        ledger.sent.update(jobs)
        ledger.acknowledged.update(
            job for job, a in zip(jobs, answers, strict=True) if a.status == 200
        )
        return [a.status for a in answers]

    async with _serving(workdir, "oom") as (redis, receiver):
        url = receiver.callback_url
        with redis.client() as admin:
            async with httpx.AsyncClient() as client:
                await send(50, client)
                accepted = len(ledger.acknowledged)
                # Below what Redis holds already: with noeviction every write is refused (OOM).
                used = int(admin.info("memory")["used_memory"])
                admin.config_set("maxmemory-policy", "noeviction")
                admin.config_set("maxmemory", used // 2)
                full = await send(20, client)
                readyz_full = [
                    (await client.get(f"{receiver.base}/readyz")).status_code for _ in range(3)
                ]
                admin.config_set("maxmemory", 0)
                after = await send(5, client)
                readyz_after = (await client.get(f"{receiver.base}/readyz")).status_code
        _audit(figures, ledger, redis)
    figures.extra = {
        "accepted_before_full": accepted,
        "maxmemory": used // 2,
        "errors_when_full": _errors(ledger),
        "readyz_when_full": readyz_full,
        "readyz_after_freeing": readyz_after,
    }
    figures.check(
        "callbacks get 503 while Redis refuses writes",
        all(s == 503 for s in full),
        f"answers when full: {_summary(full)}",
    )
    figures.check(
        "/readyz 503 while Redis refuses writes", readyz_full == [503] * 3, f"{readyz_full}"
    )
    figures.check(
        "200 again once memory is freed",
        after == [200] * 5 and readyz_after == 200,
        f"callbacks {_summary(after)}, /readyz {readyz_after}",
    )
    return figures


def _summary(statuses: list[int | None]) -> str:
    counts: dict[str, int] = {}
    for status in statuses:
        counts[str(status)] = counts.get(str(status), 0) + 1
    return ", ".join(f"{n} x {s}" for s, n in sorted(counts.items())) or "none"


def _errors(ledger: Ledger) -> dict[str, int]:
    counts: dict[str, int] = {}
    for answer in ledger.answers:
        if answer.error:
            counts[answer.error] = counts.get(answer.error, 0) + 1
    return counts


Scenario = Callable[[Path], Awaitable[Figures]]
SCENARIOS: dict[str, Scenario] = {
    "redis-kill": redis_kill,
    "receiver-kills": receiver_kills,
    "client-pause": client_pause,
    "duplicates": concurrent_duplicates,
    "redis-oom": redis_oom,
}
