"""Operations over every partition on a real Redis Cluster (3 masters, 3 partitions): dead
letters listed together, shown, redriven and purged by their qualified ids, a redrive delivered
again to its group in its own partition; `status` summing every partition and showing where
each one lives. The CLI runs as real subprocesses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import eventually
from tests.processes import env_for, run
from tests.test_client import job_event
from tests.topologies import HOST, LocalCluster, ask
from webhook.client import ConsumerOptions, consume
from webhook.connection import RedisClient, connect
from webhook.deadletters import (
    DeadLetter,
    UnknownDeadLetters,
    dead_letter,
    dead_letters,
    purge_dead_letters,
    redrive_dead_letters,
)
from webhook.events import Envelope
from webhook.keys import Layout
from webhook.stats import count_submission
from webhook.store import Store

PARTITIONS = 3
LAYOUT = Layout("vod", PARTITIONS, sharded=True)
FAST = ConsumerOptions(
    start="beginning", claim_idle_seconds=0.1, max_deliveries=2, block_seconds=0.1
)


def job_in(partition: int, name: str = "job") -> str:
    """A job id whose keys are in `partition`."""
    return next(
        job_id for n in range(1000) if LAYOUT.of_job(job_id := f"{name}-{n}").partition == partition
    )


# One job of each partition.
JOBS = [job_in(n) for n in range(PARTITIONS)]


@pytest.fixture
async def store(cluster_url: str) -> AsyncIterator[Store]:
    redis = connect(cluster_url, timeout=5, max_connections=50)
    store = Store(
        redis, prefix="vod", stream_maxlen=1000, dedup_ttl_seconds=3600, partitions=PARTITIONS
    )
    await store.ensure_ready()  # records the partitions, as a receiver does
    yield store
    await store.close()


class Consumer:
    """Group `g`'s consumer "worker-1" over every partition, failing the jobs in `failing`."""

    def __init__(self, redis: RedisClient, failing: set[str]) -> None:
        self.redis = redis
        self.failing = failing
        self.handled: list[str | None] = []
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(
            consume(redis, "g", "worker-1", self.handle, partitions=PARTITIONS, options=FAST,
                    stop=self.stop)
        )  # fmt: skip

    async def handle(self, envelope: Envelope) -> None:
        if envelope.job_id in self.failing:
            raise RuntimeError(f"cannot handle {envelope.job_id}")
        self.handled.append(envelope.job_id)

    async def finish(self) -> None:
        self.stop.set()
        async with asyncio.timeout(10):
            await self.task


async def letters_when(redis: RedisClient, count: int) -> list[DeadLetter]:
    found: list[DeadLetter] = []

    async def enough() -> bool:
        found[:] = [letter async for letter in dead_letters(redis)]
        return len(found) >= count

    await eventually(enough, 10, f"{count} dead letters")
    return found


async def dead_lettered(store: Store, *job_ids: str) -> list[DeadLetter]:
    """Record each job's outcome and have group g give up on each."""
    for job_id in job_ids:
        await store.record(job_event(job_id))
    consumer = Consumer(store.redis, set(job_ids))
    letters = await letters_when(store.redis, len(job_ids))
    await consumer.finish()
    return letters


async def test_dead_letters_of_every_partition_are_listed_together_oldest_first(
    store: Store,
) -> None:
    letters = await dead_lettered(store, *JOBS)
    assert sorted(letter.job_id or "" for letter in letters) == sorted(JOBS)
    for letter in letters:
        partition = LAYOUT.of_job(letter.job_id or "").partition
        assert letter.id.endswith(f"@{partition}")
        assert letter.original_id.endswith(f"@{partition}")
        assert letter.envelope["id"] == letter.original_id  # type: ignore[index]
        assert await dead_letter(store.redis, letter.id) == letter
    times = [letter.dead_lettered_at for letter in letters]
    assert times == sorted(times)


async def test_redriven_by_qualified_id_each_goes_back_to_its_partition_and_group(
    store: Store,
) -> None:
    letters = await dead_lettered(store, JOBS[0], JOBS[2])
    assert await redrive_dead_letters(store.redis, [letter.id for letter in letters]) == 2
    assert [letter async for letter in dead_letters(store.redis)] == []
    # Each waits in its own partition's redrive stream (a script touches one slot).
    lengths = [await store.redis.xlen(keys.redrive("g")) for keys in LAYOUT.keys]
    assert lengths == [1, 0, 1]

    consumer = Consumer(store.redis, failing=set())

    async def handled() -> bool:
        return sorted(j for j in consumer.handled if j) == sorted([JOBS[0], JOBS[2]])

    await eventually(handled, 10, "the redriven envelopes handled")
    await consumer.finish()
    assert [await store.redis.xlen(keys.redrive("g")) for keys in LAYOUT.keys] == [0, 0, 0]


async def test_ids_naming_no_dead_letter_in_any_partition_change_nothing(store: Store) -> None:
    letters = await dead_lettered(store, JOBS[0], JOBS[1])
    ids = [letter.id for letter in letters]
    unqualified = ids[0].partition("@")[0]
    asked = [ids[0], "1-0@2", unqualified, "1-0@7", ids[1]]
    for operation, action in ((redrive_dead_letters, "redriven"), (purge_dead_letters, "purged")):
        with pytest.raises(UnknownDeadLetters) as raised:
            await operation(store.redis, asked)
        assert raised.value.ids == [unqualified, "1-0@7", "1-0@2"]
        assert str(raised.value) == (
            f"no dead letter {unqualified}, 1-0@7, 1-0@2; nothing was {action} (ids name "
            "their partition, as in <id>@<n>, n from 0 to 2)"
        )
    assert [letter async for letter in dead_letters(store.redis)] == letters
    assert await purge_dead_letters(store.redis, ids) == 2
    assert [letter async for letter in dead_letters(store.redis)] == []


# The CLI, as real subprocesses.


def cli(url: str, *args: str) -> Any:
    """Run `vod-webhook ARGS --json` on the cluster's 3 partitions: its output, read."""
    result = run(*args, "--json", env=env_for(redis_url=url, partitions=str(PARTITIONS)))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_deadletter_commands_cover_every_partition(cluster_url: str, store: Store) -> None:
    letters = await dead_lettered(store, *JOBS)
    env = env_for(redis_url=cluster_url, partitions=str(PARTITIONS))

    listed = cli(cluster_url, "deadletter", "list")
    assert listed == [letter.summary() for letter in letters]
    assert {str(item["id"]).rpartition("@")[2] for item in listed} == {"0", "1", "2"}
    shown = cli(cluster_url, "deadletter", "show", letters[1].id)
    assert (shown["id"], shown["job_id"]) == (letters[1].id, letters[1].job_id)
    assert shown["envelope"]["id"] == shown["original_id"]

    redriven = run("deadletter", "redrive", letters[1].id, env=env)
    assert (redriven.returncode, redriven.stdout) == (0, "redrove 1 dead letter\n"), redriven
    partition = int(letters[1].id.rpartition("@")[2])
    assert await store.redis.xlen(LAYOUT.keys[partition].redrive("g")) == 1
    unknown = run("deadletter", "purge", letters[1].id, env=env)
    assert (unknown.returncode, unknown.stderr) == (
        1,
        f"vod-webhook: no dead letter {letters[1].id}; nothing was purged\n",
    )
    purged = run("deadletter", "purge", "--all", env=env)
    assert (purged.returncode, purged.stdout) == (0, "purged 2 dead letters\n"), purged
    assert cli(cluster_url, "deadletter", "list") == []


async def test_status_adds_up_every_partition_and_shows_where_each_lives(
    cluster_url: str, redis_cluster: LocalCluster, store: Store
) -> None:
    # Jobs submitted in partitions 0 and 1, outcomes recorded in partitions 2 and 0, a refused
    # submission counted in the shared partition's hash.
    other = job_in(0, "other")
    for job_id in JOBS[:2]:
        await store.record_submission(job_id, "v", {"template_id": "t"}, datetime.now(UTC))
    for job_id in (JOBS[2], other):
        await store.record(job_event(job_id))
    await count_submission(store.redis, store.shared, "refused", "InvalidVideo.NotFound")
    consumer = Consumer(store.redis, failing=set())

    async def handled() -> bool:
        return len(consumer.handled) == 2

    await eventually(handled, 10, "both envelopes handled")
    await consumer.finish()

    document = cli(cluster_url, "status")
    assert document["stream"]["length"] == 2
    assert document["pending_jobs"]["count"] == 2
    assert document["pending_jobs"]["oldest_job_id"] == JOBS[0]
    assert document["submissions"] == [
        {"outcome": "submitted", "code": "", "count": 2},
        {"outcome": "refused", "code": "InvalidVideo.NotFound", "count": 1},
    ]
    [group] = document["groups"]
    assert (group["name"], group["lag"], group["pending"], group["redriven"]) == ("g", 0, 0, 0)
    assert [consumer["name"] for consumer in group["consumers"]] == ["worker-1"]
    assert document["attention"] == []

    expected = []
    for keys, (length, pending) in zip(LAYOUT.keys, [(1, 1), (0, 1), (1, 0)], strict=True):
        slot = int(ask(redis_cluster.live()[0], "CLUSTER", "KEYSLOT", keys.stream))
        master = f"{HOST}:{redis_cluster.master_of(keys.stream)}"
        expected.append({"number": keys.partition, "stream_length": length, "dead_letters": 0,
                         "pending_jobs": pending, "slot": slot, "master": master})  # fmt: skip
    assert document["partitions"] == expected
    # Here spread over the 3 masters: slots 7293, 3164 and 15423 fall in each one's range.
    assert len({partition["master"] for partition in expected}) == 3

    text = run("status", env=env_for(redis_url=cluster_url, partitions=str(PARTITIONS)))
    assert text.returncode == 0, text.stderr
    for partition in expected:
        assert (
            f"partition       {partition['number']}: {partition['stream_length']} entries, "
            f"{partition['pending_jobs']} pending jobs, 0 dead letters, slot {partition['slot']} "
            f"on {partition['master']}"
        ) in text.stdout.splitlines()
