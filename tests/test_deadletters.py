"""Dead letters through the subscriber library: given up on by `consume`, read back, redriven to
their group alone and once, dead-lettered again with their history, purged."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.conftest import RedisServer, eventually, stream_entries
from tests.test_client import job_event
from webhook import client
from webhook.client import ConsumerOptions, consume
from webhook.deadletters import (
    DeadLetter,
    UnknownDeadLetters,
    dead_letter,
    dead_letter_id,
    dead_letters,
    purge_all_dead_letters,
    purge_dead_letters,
    redrive_all_dead_letters,
    redrive_dead_letters,
)
from webhook.events import Envelope
from webhook.store import Store

FAST = ConsumerOptions(
    start="beginning", claim_idle_seconds=0.1, max_deliveries=3, block_seconds=0.1
)


class Group:
    """A consumer group's one consumer running in the background, handling with `fails` (a
    job id -> error) until stopped; records each envelope it handled."""

    def __init__(self, redis: Redis, name: str, consumer: str = "a") -> None:
        self.redis = redis
        self.name = name
        self.consumer = consumer
        self.fails: dict[str | None, str] = {}
        self.handled: list[str | None] = []
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def handle(self, envelope: Envelope) -> None:
        if envelope.job_id in self.fails:
            raise RuntimeError(self.fails[envelope.job_id])
        self.handled.append(envelope.job_id)

    def start(self) -> None:
        self.task = asyncio.create_task(
            consume(self.redis, self.name, self.consumer, self.handle, options=FAST, stop=self.stop)
        )

    async def has_handled(self, *job_ids: str) -> None:
        async def handled() -> bool:
            if self.task is not None and self.task.done():
                self.task.result()  # a crash fails the test with its error
            return all(job_id in self.handled for job_id in job_ids)

        await eventually(handled, 10, f"group {self.name} to handle {job_ids}")

    async def finish(self) -> None:
        self.stop.set()
        if self.task is not None:
            async with asyncio.timeout(10):
                await self.task


@pytest.fixture
async def groups(redis_client: Redis) -> AsyncIterator[Callable[..., Group]]:
    """Start consumer groups; each is stopped after the test."""
    started: list[Group] = []

    def start(name: str, consumer: str = "a", fails: dict[str | None, str] | None = None) -> Group:
        group = Group(redis_client, name, consumer)
        group.fails = fails or {}
        group.start()
        started.append(group)
        return group

    yield start
    for group in started:
        await group.finish()


async def letters_when(redis: Redis, count: int, **filters: Any) -> list[DeadLetter]:
    """The dead letters once there are `count` of them (of the group filtered on)."""
    found: list[DeadLetter] = []

    async def enough() -> bool:
        found[:] = [letter async for letter in dead_letters(redis, **filters)]
        return len(found) >= count

    await eventually(enough, 10, f"{count} dead letters")
    return found


async def test_a_dead_letter_tells_where_when_how_often_why_and_what(
    store: Store, redis_client: Redis, groups: Callable[..., Group]
) -> None:
    recorded = await store.record(job_event("poison"))
    before = datetime.now(UTC).replace(microsecond=0)
    groups("g", "worker-1", fails={"poison": "cannot handle this one"})
    [letter] = await letters_when(redis_client, 1)
    assert (letter.group, letter.consumer, letter.original_id) == ("g", "worker-1", recorded.id)
    assert (letter.deliveries, letter.redrives, letter.history) == (3, 0, [])
    assert letter.error == "RuntimeError: cannot handle this one"
    assert before <= letter.dead_lettered_at <= datetime.now(UTC)
    assert letter.summary() == {
        "id": letter.id,
        "group": "g",
        "consumer": "worker-1",
        "original_id": recorded.id,
        "dead_lettered_at": letter.dead_lettered_at.isoformat().replace("+00:00", "Z"),
        "deliveries": 3,
        "redrives": 0,
        "event_type": "DynamicImageComplete",
        "job_id": "poison",
        "error": "RuntimeError: cannot handle this one",
    }
    details = letter.details()
    assert details["envelope"]["id"] == recorded.id
    assert details["envelope"]["job_id"] == "poison"
    assert (details["history"], details["other_fields"]) == ([], {})
    assert await dead_letter(redis_client, letter.id) == letter


async def test_an_entry_that_is_no_envelope_shows_what_it_holds(
    redis_client: Redis, groups: Callable[..., Group]
) -> None:
    await redis_client.xadd("vod:stream", {"envelope": "not json"})
    await redis_client.xadd("vod:stream", {"something": "else"})
    groups("g")
    junk, foreign = await letters_when(redis_client, 2)
    assert (junk.event_type, junk.job_id) == (None, None)
    assert junk.details()["envelope"] == "not json"
    assert foreign.details()["envelope"] is None
    assert foreign.details()["other_fields"] == {"something": "else"}
    # Handed back, each is given up on again at once, its history growing.
    assert await redrive_dead_letters(redis_client, [junk.id, foreign.id]) == 2
    again = await letters_when(redis_client, 2)
    assert [letter.redrives for letter in again] == [1, 1]
    assert [letter.history[0]["dead_letter_id"] for letter in again] == [junk.id, foreign.id]


async def test_listing_filters_by_group(
    store: Store, redis_client: Redis, groups: Callable[..., Group]
) -> None:
    await store.record(job_event("poison"))
    groups("g", fails={"poison": "g cannot"})
    groups("h", fails={"poison": "h cannot"})
    await letters_when(redis_client, 2)
    [of_h] = [letter async for letter in dead_letters(redis_client, group="h")]
    assert (of_h.group, of_h.error) == ("h", "RuntimeError: h cannot")
    assert [letter async for letter in dead_letters(redis_client, group="nobody")] == []


async def test_a_redriven_dead_letter_is_handled_once_by_its_group_alone(
    store: Store, redis_client: Redis, groups: Callable[..., Group]
) -> None:
    await store.record(job_event("poison"))
    g = groups("g", fails={"poison": "not yet"})
    h = groups("h")
    [letter] = await letters_when(redis_client, 1)
    await h.has_handled("poison")
    g.fails.clear()  # fixed: the handler takes it now

    assert await redrive_dead_letters(redis_client, [letter.id]) == 1
    await g.has_handled("poison")
    # Something after it reaches both groups: anything redelivered would have come before.
    await store.record(job_event("after"))
    await g.has_handled("after")
    await h.has_handled("after")
    assert g.handled == ["poison", "after"]
    assert h.handled == ["poison", "after"]
    assert [letter async for letter in dead_letters(redis_client)] == []
    # Acknowledged, the redriven entry is deleted: the redrive stream holds nothing to handle.
    assert await redis_client.xlen("vod:redrive:g") == 0
    assert await redis_client.xlen("vod:redrive:h") == 0


async def test_a_group_that_starts_after_the_redrive_gets_it(
    store: Store, redis_client: Redis, groups: Callable[..., Group]
) -> None:
    await store.record(job_event("poison"))
    g = groups("g", fails={"poison": "not yet"})
    [letter] = await letters_when(redis_client, 1)
    await g.finish()
    await redrive_dead_letters(redis_client, [letter.id], group="g")
    again = groups("g")
    await again.has_handled("poison")
    assert again.handled == ["poison"]


async def test_a_redriven_entry_that_fails_again_comes_back_with_its_history(
    store: Store, redis_client: Redis, groups: Callable[..., Group]
) -> None:
    recorded = await store.record(job_event("poison"))
    groups("g", "worker-1", fails={"poison": "still broken"})
    [first] = await letters_when(redis_client, 1)

    await redrive_dead_letters(redis_client, [first.id])
    [second] = await letters_when(redis_client, 1, group="g")
    assert second.id != first.id
    assert (second.original_id, second.redrives, second.deliveries) == (recorded.id, 1, 3)
    [earlier] = second.history
    assert {k: v for k, v in earlier.items() if k != "redriven_at"} == {
        "dead_letter_id": first.id,
        "dead_lettered_at": first.summary()["dead_lettered_at"],
        "group": "g",
        "consumer": "worker-1",
        "deliveries": 3,
        "error": "RuntimeError: still broken",
    }
    assert first.dead_lettered_at <= datetime.fromisoformat(earlier["redriven_at"])
    assert second.details()["envelope"]["id"] == recorded.id

    await redrive_dead_letters(redis_client, [second.id])

    async def third_time() -> bool:
        letters = [letter async for letter in dead_letters(redis_client)]
        return [letter.redrives for letter in letters] == [2]

    await eventually(third_time, 10, "the second redrive given up on")
    [third] = [letter async for letter in dead_letters(redis_client)]
    assert [earlier["dead_letter_id"] for earlier in third.history] == [first.id, second.id]
    assert await redis_client.xlen("vod:redrive:g") == 0


async def dead_lettered(store: Store, redis: Redis, group: Group, *job_ids: str) -> list[str]:
    """Dead-letter an envelope of each job in `group` (already running, failing them); their
    dead-letter ids, in order."""
    for job_id in job_ids:
        group.fails[job_id] = "broken"
        await store.record(job_event(job_id))
    return [letter.id for letter in await letters_when(redis, len(job_ids))]


async def test_unknown_ids_change_nothing_and_are_named(
    store: Store, redis_client: Redis, groups: Callable[..., Group]
) -> None:
    g = groups("g")
    ids = await dead_lettered(store, redis_client, g, "j1", "j2")
    await g.finish()
    for operation, action in ((redrive_dead_letters, "redriven"), (purge_dead_letters, "purged")):
        with pytest.raises(UnknownDeadLetters) as raised:
            await operation(redis_client, [ids[0], "1-0", ids[1], "2-5"])
        assert raised.value.ids == ["1-0", "2-5"]
        assert str(raised.value) == f"no dead letter 1-0, 2-5; nothing was {action}"
        # Not of the group asked for is as unknown.
        with pytest.raises(UnknownDeadLetters, match=f"^no dead letter {ids[1]} of group h;"):
            await operation(redis_client, [ids[1]], group="h")
    assert [letter.id async for letter in dead_letters(redis_client)] == ids
    assert await redis_client.xlen("vod:redrive:g") == 0
    with pytest.raises(UnknownDeadLetters, match=r"^no dead letter 1-0$"):
        await dead_letter(redis_client, "1-0")


@pytest.mark.parametrize(
    "text", ["1732476000000", "abc", "1-2-3", "18446744073709551616-0", "", "1-0@", "1-0@x", "1@2"]
)
def test_a_dead_letter_id_is_a_complete_stream_id(text: str) -> None:
    with pytest.raises(ValueError, match="not a dead-letter id"):
        dead_letter_id(text)
    assert dead_letter_id("18446744073709551615-0") == "18446744073709551615-0"
    # With several partitions (Redis Cluster), an id names its partition.
    assert dead_letter_id("18446744073709551615-0@2") == "18446744073709551615-0@2"


async def test_the_same_id_twice_is_redriven_once(
    store: Store, redis_client: Redis, groups: Callable[..., Group]
) -> None:
    g = groups("g")
    [letter_id] = await dead_lettered(store, redis_client, g, "j1")
    await g.finish()
    assert await redrive_dead_letters(redis_client, [letter_id, letter_id]) == 1
    assert await redis_client.xlen("vod:redrive:g") == 1


async def test_concurrent_redrives_of_one_dead_letter_put_it_back_once(
    store: Store, redis_client: Redis, redis_server: RedisServer, groups: Callable[..., Group]
) -> None:
    g = groups("g")
    [letter_id] = await dead_lettered(store, redis_client, g, "j1")
    await g.finish()
    clients = [Redis.from_url(redis_server.url, decode_responses=True) for _ in range(8)]
    try:
        outcomes = await asyncio.gather(
            *(redrive_dead_letters(client, [letter_id]) for client in clients),
            return_exceptions=True,
        )
    finally:
        for client in clients:
            await client.aclose()
    assert outcomes.count(1) == 1
    assert all(isinstance(o, UnknownDeadLetters) for o in outcomes if o != 1)
    assert await redis_client.xlen("vod:redrive:g") == 1
    assert await redis_client.xlen("vod:deadletter") == 0


async def test_concurrent_redrives_of_all_put_each_back_once(
    store: Store, redis_client: Redis, redis_server: RedisServer, groups: Callable[..., Group]
) -> None:
    g = groups("g")
    ids = await dead_lettered(store, redis_client, g, *(f"j{n}" for n in range(12)))
    await g.finish()
    clients = [Redis.from_url(redis_server.url, decode_responses=True) for _ in range(3)]
    try:
        counts = await asyncio.gather(
            *(redrive_all_dead_letters(client, page=2) for client in clients)
        )
    finally:
        for client in clients:
            await client.aclose()
    assert sum(counts) == len(ids)
    redriven = await stream_entries(redis_client, "vod:redrive:g")
    assert sorted(json.loads(fields["history"])[0]["dead_letter_id"] for _, fields in redriven) == (
        sorted(ids)
    )


async def test_redrive_all_takes_one_groups_when_asked(
    store: Store, redis_client: Redis, groups: Callable[..., Group]
) -> None:
    await store.record(job_event("poison"))
    groups("g", fails={"poison": "g cannot"})
    groups("h", fails={"poison": "h cannot"})
    await letters_when(redis_client, 2)
    assert await redrive_all_dead_letters(redis_client, group="h") == 1
    assert [letter.group async for letter in dead_letters(redis_client)] == ["g"]


class ArrivingMeanwhile(Redis):
    """A client on which a dead letter arrives as soon as the dead-letter stream is paged."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.arrived: list[str] = []

    async def xrange(self, name: Any, min: Any = "-", max: Any = "+", count: Any = None) -> Any:
        if name == "vod:deadletter" and not self.arrived:
            self.arrived.append(str(await self.xadd(name, {"group": "g", "envelope": "{}"})))
        return await super().xrange(name, min, max, count)


@pytest.mark.parametrize("operation", [purge_all_dead_letters, redrive_all_dead_letters])
async def test_all_means_what_there_is_when_it_starts(
    operation: Callable[..., Any],
    store: Store,
    redis_client: Redis,
    redis_server: RedisServer,
    groups: Callable[..., Group],
) -> None:
    g = groups("g")
    await dead_lettered(store, redis_client, g, "j1", "j2", "j3")
    await g.finish()
    client = ArrivingMeanwhile.from_url(redis_server.url, decode_responses=True)
    assert isinstance(client, ArrivingMeanwhile)
    try:
        assert await operation(client, page=2) == 3
    finally:
        await client.aclose()
    assert [letter.id async for letter in dead_letters(redis_client)] == client.arrived


async def test_purge_by_id_and_all(
    store: Store, redis_client: Redis, groups: Callable[..., Group]
) -> None:
    groups("g", fails={"shared": "g cannot", "j1": "g cannot"})
    groups("h", fails={"shared": "h cannot"})
    await store.record(job_event("shared"))
    await store.record(job_event("j1"))
    await letters_when(redis_client, 3)
    of_g = {letter.job_id: letter.id async for letter in dead_letters(redis_client, group="g")}
    assert await purge_dead_letters(redis_client, [of_g["shared"]]) == 1
    assert await purge_all_dead_letters(redis_client, group="h") == 1
    assert [letter.id async for letter in dead_letters(redis_client)] == [of_g["j1"]]
    assert await purge_all_dead_letters(redis_client) == 1
    assert await purge_all_dead_letters(redis_client) == 0
    assert await purge_dead_letters(redis_client, []) == 0
    assert await redrive_all_dead_letters(redis_client) == 0


class PurgedMeanwhile(Redis):
    """A client on which another operator purges the dead letter `taken` between the reading of
    the dead letters and the script that acts on them."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.taken: str | None = None

    async def evalsha(self, sha: Any, numkeys: Any, *keys_and_args: Any) -> Any:
        if self.taken is not None:
            await self.xdel("vod:deadletter", self.taken)
            self.taken = None
        return await super().evalsha(sha, numkeys, *keys_and_args)


@pytest.fixture
async def purged_meanwhile(redis_server: RedisServer) -> AsyncIterator[PurgedMeanwhile]:
    client = PurgedMeanwhile.from_url(redis_server.url, decode_responses=True)
    assert isinstance(client, PurgedMeanwhile)
    yield client
    await client.aclose()


@pytest.mark.parametrize(
    ("operation", "action"), [(redrive_dead_letters, "redriven"), (purge_dead_letters, "purged")]
)
async def test_ids_gone_between_reading_and_acting_change_nothing(
    operation: Callable[..., Any],
    action: str,
    store: Store,
    redis_client: Redis,
    groups: Callable[..., Group],
    purged_meanwhile: PurgedMeanwhile,
) -> None:
    g = groups("g")
    first, taken, last = await dead_lettered(store, redis_client, g, "j1", "j2", "j3")
    await g.finish()
    purged_meanwhile.taken = taken
    with pytest.raises(UnknownDeadLetters, match=f"^no dead letter {taken}; nothing was {action}$"):
        await operation(purged_meanwhile, [first, taken, last])
    assert [letter.id async for letter in dead_letters(redis_client)] == [first, last]
    assert await redis_client.xlen("vod:redrive:g") == 0


async def test_redrive_all_leaves_what_another_took_meanwhile_to_it(
    store: Store,
    redis_client: Redis,
    groups: Callable[..., Group],
    purged_meanwhile: PurgedMeanwhile,
) -> None:
    g = groups("g")
    first, taken, last = await dead_lettered(store, redis_client, g, "j1", "j2", "j3")
    await g.finish()
    purged_meanwhile.taken = taken
    assert await redrive_all_dead_letters(purged_meanwhile) == 2
    redriven = await stream_entries(redis_client, "vod:redrive:g")
    assert [json.loads(fields["history"])[0]["dead_letter_id"] for _, fields in redriven] == [
        first,
        last,
    ]


def test_subscribers_find_the_dead_letter_operations_in_the_client_module() -> None:
    for name in ("DeadLetter", "UnknownDeadLetters", "dead_letter", "dead_letters",
                 "redrive_dead_letters", "redrive_all_dead_letters", "purge_dead_letters",
                 "purge_all_dead_letters"):  # fmt: skip
        assert getattr(client, name) is globals()[name]
