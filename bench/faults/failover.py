"""Failover scenarios: a master killed (kill -9, AOF on) under load on Redis Cluster and on
Sentinel, its replica promoted. The receiver runs with REDIS_WAIT_REPLICAS=1 (what the README's
"Scaling" asks for there); a consumer group reads all along.

What they prove: 503 only during the failover, no other 5xx, nothing answered 200 lost or
stored twice, and the consumer still receives every acknowledged outcome. The topologies are
tests/topologies.py's (LocalCluster, LocalSentinel); `make faults` starts its own.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import cast

from bench.faults.delivery import Ledger, Load, run_load
from bench.faults.figures import Figures, check_answers, tally
from bench.faults.scenarios import _at_share
from bench.processes import Receiver
from tests.topologies import LocalCluster, LocalSentinel
from webhook.client import ConsumerOptions, consume
from webhook.connection import RedisClient, connect
from webhook.events import Envelope
from webhook.keys import Layout
from webhook.streams import StreamEntries

# After the topology settles, how long the receiver may still answer 503 (it reads the new
# topology on the next call after a failure; a cluster client may also be mid-refresh).
SETTLE_SECONDS = 1.0


async def cluster_failover(
    workdir: Path,
    cluster: LocalCluster,
    *,
    callbacks: int = 3000,
    rate: float = 300,
    partitions: int = 3,
) -> Figures:
    """Kill the master of partition 0 a third into the load; its replica takes over."""

    def kill() -> None:
        killed = cluster.kill_master_of("{vod-0}")
        cluster.wait_for_failover(killed)
        cluster.restart(killed)

    return await _failover(
        workdir, "Redis Cluster failover (kill -9 a master)", cluster.url, kill,
        Layout(partitions=partitions, sharded=True), callbacks=callbacks, rate=rate,
    )  # fmt: skip


async def sentinel_failover(
    workdir: Path, sentinel: LocalSentinel, *, callbacks: int = 3000, rate: float = 300
) -> Figures:
    """Kill the master Sentinel names a third into the load; Sentinel promotes the replica."""

    def kill() -> None:
        killed = sentinel.kill_master()
        sentinel.wait_for_failover(killed)
        sentinel.restart(killed)

    return await _failover(
        workdir, "Sentinel failover (kill -9 the master)", sentinel.url, kill, Layout(),
        callbacks=callbacks, rate=rate,
    )  # fmt: skip


async def _failover(
    workdir: Path,
    name: str,
    url: str,
    kill: Callable[[], None],
    layout: Layout,
    *,
    callbacks: int,
    rate: float,
) -> Figures:
    figures = Figures(name)
    ledger, reached, stop = Ledger(), asyncio.Event(), asyncio.Event()
    window: dict[str, float] = {}
    consumed: Counter[str] = Counter()
    receiver = Receiver(
        url, workdir / f"{name.split()[0].lower()}-failover.log",
        partitions=str(layout.partitions), redis_wait_replicas="1",
        # Generous: on a loaded test machine a replica's acknowledgement can take 500 ms.
        redis_wait_timeout_ms="1500",
    )  # fmt: skip
    redis = connect(url, timeout=2, max_connections=20)

    async def record(envelope: Envelope) -> None:
        consumed[envelope.job_id or ""] += 1

    async def chaos() -> None:
        await asyncio.wait_for(reached.wait(), 120)
        window["killing"] = time.monotonic()
        # The kill, the wait for the promotion and the restart of the old master as a replica.
        await asyncio.to_thread(kill)
        window["settled"] = time.monotonic()

    await asyncio.to_thread(receiver.start)
    consumer = asyncio.create_task(
        consume(redis, "audit", "c1", record, partitions=layout.partitions, stop=stop,
                options=ConsumerOptions(start="beginning", reconnect_seconds=60))
    )  # fmt: skip
    try:
        breaking = asyncio.create_task(chaos())
        load = Load(callbacks, concurrency=32, rate=rate, deadline=180)
        await run_load(receiver.callback_url, receiver.callback_url, load, ledger,
                       _at_share(1 / 3, callbacks, reached))  # fmt: skip
        await breaking
        stored = await _stored_jobs(redis, layout)
        tally(figures, ledger, stored)
        check_answers(figures)
        await _until(lambda: ledger.acknowledged <= set(consumed), 60)
    finally:
        stop.set()
        await consumer
        receiver.stop()
        await redis.aclose()
    killing, settled = window["killing"], window["settled"] + SETTLE_SECONDS
    outside = [
        a for a in ledger.answers if a.status == 503 and (a.started > settled or a.ended < killing)
    ]
    missed = ledger.acknowledged - set(consumed)
    figures.extra = {
        "failover_s": round(window["settled"] - killing, 2),
        "503_outside_failover": len(outside),
        "consumed": len(consumed),
    }
    figures.check(
        "503 only during the failover",
        not outside,
        f"{len(outside)} answers 503 outside it ({figures.unavailable_503} in all)",
    )
    figures.check(
        "the consumer group received every acknowledged outcome",
        not missed,
        f"{len(missed)} of {len(ledger.acknowledged)} missing",
    )
    return figures


async def _stored_jobs(redis: RedisClient, layout: Layout) -> Counter[str]:
    """How many stream entries each JobId has, over every partition."""
    counts: Counter[str] = Counter()
    for keys in layout.keys:
        after = "-"
        while entries := await redis.xrange(keys.stream, min=after, count=5000):
            for entry_id, fields in cast(StreamEntries, entries):
                job_id = Envelope.model_validate_json(fields["envelope"]).job_id
                counts[job_id or ""] += 1
                after = f"({entry_id}"
    return counts


async def _until(done: Callable[[], bool], seconds: float) -> None:
    """Until `done()`, looking every 0.1 s (the consumer's progress has no event to wait on)."""
    ends = time.monotonic() + seconds
    while not done() and time.monotonic() < ends:  # noqa: ASYNC110
        await asyncio.sleep(0.1)


async def _cluster_of_its_own(workdir: Path) -> Figures:
    cluster = LocalCluster()
    await asyncio.to_thread(cluster.start)
    try:
        return await cluster_failover(workdir, cluster)
    finally:
        cluster.stop()


async def _sentinel_of_its_own(workdir: Path) -> Figures:
    sentinel = LocalSentinel()
    await asyncio.to_thread(sentinel.start)
    try:
        return await sentinel_failover(workdir, sentinel)
    finally:
        sentinel.stop()


FAILOVERS = {"cluster-failover": _cluster_of_its_own, "sentinel-failover": _sentinel_of_its_own}
