"""MNS ingest against the emulator's MNS queue over loopback and a real Redis: what is
recorded, what is deleted, what comes back, what is dead-lettered."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from tests.conftest import (
    RedisServer,
    ServeApp,
    StoreFactory,
    eventually,
    free_port,
    job_callback,
    stream_entries,
)
from webhook.connection import RedisClient, connect
from webhook.deadletters import MNS_GROUP, NotRedrivable, dead_letters, redrive_dead_letters
from webhook.emulator import EmulatorOptions, create_emulator_app
from webhook.errors import PayloadError
from webhook.ingest import MnsIngest, decode_body, retry_delay
from webhook.mns import AccessKey, MnsError, MnsQueue, static_credentials
from webhook.settings import ConfigError
from webhook.store import Store

KEY = AccessKey("LTAI5tIngestKey", "ingest-secret-0123")
QUEUE = "vod-events"


@pytest.fixture
async def mns(serve_app: ServeApp) -> str:
    """The emulator, holding queue `vod-events`; its base URL is the MNS endpoint."""
    options = EmulatorOptions(access_keys={KEY.id: KEY.secret}, mns_queues=(QUEUE,))
    return await serve_app(lambda _: create_emulator_app(options))


Queues = Callable[..., MnsQueue]


@pytest.fixture
async def make_queue(mns: str) -> AsyncIterator[Queues]:
    made: list[MnsQueue] = []

    def make(name: str = QUEUE, key: AccessKey = KEY) -> MnsQueue:
        queue = MnsQueue(mns, name, static_credentials(key))
        made.append(queue)
        return queue

    yield make
    for queue in made:
        await queue.aclose()


async def create_queue(mns: str, name: str, visibility_timeout: int) -> None:
    """Through MNS's CreateQueue, signed as any request."""
    queue = MnsQueue(mns, name, static_credentials(KEY))
    try:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><Queue xmlns="http://mns.aliyuncs.com/doc/v1/">'
            f"<VisibilityTimeout>{visibility_timeout}</VisibilityTimeout></Queue>"
        )
        await queue._call("PUT", f"/queues/{name}", body=body)
    finally:
        await queue.aclose()


def ingest_of(queue: MnsQueue, store: Store, **options: Any) -> MnsIngest:
    options.setdefault("verify_outcomes", False)
    options.setdefault("max_dequeues", 5)
    return MnsIngest(queue, store, wait_seconds=1, **options)


async def queue_counts(mns: str, name: str = QUEUE) -> dict[str, int]:
    async with httpx.AsyncClient() as http:
        state = (await http.get(f"{mns}/_emulator/state")).json()
    counts: dict[str, int] = state["queues"][name]
    return counts


async def envelopes(redis: RedisClient) -> list[dict[str, Any]]:
    entries = await stream_entries(redis, "vod:stream")
    return [json.loads(fields["envelope"]) for _, fields in entries]


async def drain(ingest: MnsIngest, mns: str, name: str = QUEUE) -> None:
    """Poll until the queue holds nothing, visible or not."""

    async def empty() -> bool:
        await ingest.poll_once()
        counts = await queue_counts(mns, name)
        return counts["visible"] == 0 and counts["invisible"] == 0

    await eventually(empty, 15, "an empty queue")


async def test_events_are_recorded_once_with_source_mns_and_deleted(
    make_queue: Queues, store: Store, redis_client: Redis, mns: str
) -> None:
    queue = make_queue()
    first, second = job_callback("job-1"), job_callback("job-2", status="fail")
    await queue.send(json.dumps(first))  # as VOD writes: the JSON itself
    await queue.send(base64.b64encode(json.dumps(second).encode()).decode())  # an SDK's default
    await queue.send(json.dumps(first))  # VOD wrote it twice
    counted: list[str] = []
    await drain(ingest_of(queue, store, count=counted.append), mns)

    recorded = await envelopes(redis_client)
    assert Counter(e["job_id"] for e in recorded) == {"job-1": 1, "job-2": 1}
    assert {e["source"] for e in recorded} == {"mns"}
    assert {e["job_id"]: e["status"] for e in recorded} == {"job-1": "success", "job-2": "fail"}
    assert Counter(counted) == {"accepted": 2, "duplicate": 1}


async def test_a_message_whose_delete_failed_comes_back_and_yields_no_second_envelope(
    make_queue: Queues, store: Store, redis_client: Redis, mns: str
) -> None:
    await create_queue(mns, "short", visibility_timeout=1)

    class LosingDeletes(MnsQueue):
        lost = 0

        async def delete(self, receipt_handles: list[str]) -> list[Any]:
            if not self.lost:
                self.lost += 1
                raise MnsError("NetworkError", "the connection was reset")
            return await super().delete(receipt_handles)

    queue = LosingDeletes(mns, "short", static_credentials(KEY))
    try:
        await queue.send(json.dumps(job_callback("job-late")))
        counted: list[str] = []
        await drain(ingest_of(queue, store, count=counted.append), mns, "short")
    finally:
        await queue.aclose()
    assert counted == ["accepted", "duplicate"]
    assert [e["job_id"] for e in await envelopes(redis_client)] == ["job-late"]


async def test_with_redis_out_of_reach_nothing_is_deleted_and_all_arrives_later(
    make_queue: Queues, make_store: StoreFactory, store: Store, redis_client: Redis, mns: str
) -> None:
    queue = make_queue()
    for n in range(3):
        await queue.send(json.dumps(job_callback(f"job-{n}")))
    dead = connect(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5, max_connections=4)
    down = ingest_of(queue, make_store(dead))
    assert await down.poll_once() == 3
    counts = await queue_counts(mns)
    assert counts["visible"] + counts["invisible"] == 3, "nothing deleted"
    assert await envelopes(redis_client) == []

    await drain(ingest_of(make_queue(), store), mns)  # they come back after 1 s
    assert sorted(e["job_id"] for e in await envelopes(redis_client)) == [
        "job-0",
        "job-1",
        "job-2",
    ]


async def test_running_ingest_pauses_while_redis_is_down_and_resumes_when_it_is_back(
    make_queue: Queues, make_store: StoreFactory, own_redis: RedisServer, mns: str
) -> None:
    redis = connect(own_redis.url, timeout=0.5, max_connections=8)
    ingest = ingest_of(make_queue(), make_store(redis))
    queue = make_queue()
    with capture_logs() as logs:
        running = asyncio.create_task(ingest.run())
        try:
            await queue.send(json.dumps(job_callback("job-before")))
            await eventually(_logged(logs, "message_accepted"), 10, "the first event")
            own_redis.stop()
            for n in range(3):
                await queue.send(json.dumps(job_callback(f"job-{n}")))
            await eventually(_logged(logs, "ingest_paused"), 10, "ingest to pause")
            counts = await queue_counts(mns)
            assert counts["visible"] + counts["invisible"] == 3, "nothing deleted meanwhile"
            own_redis.start()  # empty: it kept nothing on disk
            await eventually(_logged(logs, "ingest_resumed"), 15, "ingest to resume")
            await eventually(_empty(mns), 15, "an empty queue")
        finally:
            ingest.stop()
            await asyncio.wait_for(running, 10)
    assert sorted(e["job_id"] for e in await envelopes(redis)) == ["job-0", "job-1", "job-2"]


def _logged(logs: list[MutableMapping[str, Any]], event: str) -> Callable[[], Awaitable[bool]]:
    async def logged() -> bool:
        return any(log["event"] == event for log in logs)

    return logged


async def test_a_message_that_keeps_failing_is_dead_lettered_and_deleted(
    make_queue: Queues, store: Store, redis_client: Redis, mns: str
) -> None:
    queue = make_queue()
    await queue.send("not an event")
    await queue.send(json.dumps(job_callback("job-fine")))
    counted: list[str] = []
    await drain(ingest_of(queue, store, max_dequeues=2, count=counted.append), mns)

    assert Counter(counted) == {"accepted": 1, "retried": 1, "dead_lettered": 1}
    [letter] = [letter async for letter in dead_letters(redis_client)]
    assert letter.group == MNS_GROUP
    assert letter.consumer == QUEUE
    assert letter.deliveries == 2
    assert "neither a JSON object nor the Base64 of one" in letter.error
    assert letter.entry["mns_body"] == "not an event"
    assert letter.entry["mns_message_id"]
    with pytest.raises(NotRedrivable, match="an MNS message"):
        await redrive_dead_letters(redis_client, [letter.id])
    assert [e["job_id"] for e in await envelopes(redis_client)] == ["job-fine"]


async def test_several_ingests_share_a_queue_and_record_each_event_once(
    make_queue: Queues, store: Store, redis_client: Redis, mns: str
) -> None:
    sender = make_queue()
    await asyncio.gather(*(sender.send(json.dumps(job_callback(f"job-{n}"))) for n in range(60)))
    ingests = [ingest_of(make_queue(), store, pollers=2) for _ in range(3)]
    running = [asyncio.create_task(ingest.run()) for ingest in ingests]
    try:

        async def all_recorded() -> bool:
            return len(await envelopes(redis_client)) >= 60

        await eventually(all_recorded, 20, "every event")
        await eventually(_empty(mns), 10, "an empty queue")
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    assert Counter(e["job_id"] for e in await envelopes(redis_client)) == {
        f"job-{n}": 1 for n in range(60)
    }


async def test_stop_lets_the_batch_in_hand_be_recorded_and_deleted(
    store: Store, redis_client: Redis, mns: str
) -> None:
    class HeldDeletes(MnsQueue):
        """Holds the first delete until released: the batch is in hand when stop comes."""

        entered, released = asyncio.Event(), asyncio.Event()

        async def delete(self, receipt_handles: list[str]) -> list[Any]:
            self.entered.set()
            await self.released.wait()
            return await super().delete(receipt_handles)

    queue = HeldDeletes(mns, QUEUE, static_credentials(KEY))
    try:
        await queue.send(json.dumps(job_callback("job-in-hand")))
        ingest = ingest_of(queue, store)
        running = asyncio.create_task(ingest.run())
        await asyncio.wait_for(queue.entered.wait(), 10)
        ingest.stop()
        queue.released.set()
        await asyncio.wait_for(running, 10)
    finally:
        await queue.aclose()
    assert [e["job_id"] for e in await envelopes(redis_client)] == ["job-in-hand"]
    counts = await queue_counts(mns)
    assert (counts["visible"], counts["invisible"]) == (0, 0), "deleted, not left to come back"


async def test_stop_ends_a_waiting_long_poll_without_taking_what_comes_next(
    make_queue: Queues, store: Store, mns: str
) -> None:
    ingest = MnsIngest(make_queue(), store, verify_outcomes=False, max_dequeues=5, wait_seconds=30)
    running = asyncio.create_task(ingest.run())

    async def polling() -> bool:
        return (await queue_counts(mns))["waiting"] == 1

    await eventually(polling, 10, "a long poll waiting")
    ingest.stop()
    await asyncio.wait_for(running, 5)  # not the 30 s the poll would wait
    await eventually(_no_poll_waiting(mns), 5, "the emulator to see the poll gone")
    await make_queue().send(json.dumps(job_callback("job-next")))
    counts = await queue_counts(mns)
    assert (counts["visible"], counts["invisible"]) == (1, 0), "left for the next receiver"


def _no_poll_waiting(mns: str) -> Callable[[], Awaitable[bool]]:
    async def none_waiting() -> bool:
        return (await queue_counts(mns))["waiting"] == 0

    return none_waiting


def _empty(mns: str) -> Callable[[], Awaitable[bool]]:
    async def empty() -> bool:
        counts = await queue_counts(mns)
        return counts["visible"] == 0 and counts["invisible"] == 0

    return empty


async def test_held_for_verification_as_callbacks_are(
    make_queue: Queues, store: Store, redis_client: Redis, mns: str
) -> None:
    queue = make_queue()
    await queue.send(json.dumps(job_callback("job-held")))
    counted: list[str] = []
    await drain(ingest_of(queue, store, verify_outcomes=True, count=counted.append), mns)
    assert counted == ["held"]
    assert await envelopes(redis_client) == [], "published only once verified"


@pytest.mark.parametrize(
    ("name", "key", "refusal"),
    [
        ("no-such-queue", KEY, "QueueNotExist"),
        (QUEUE, AccessKey(KEY.id, "wrong-secret"), "SignatureDoesNotMatch"),
        (QUEUE, AccessKey("LTAI5tUnknown", KEY.secret), "InvalidAccessKeyId"),
    ],
)
async def test_a_queue_mns_refuses_stops_start_up(
    make_queue: Queues, store: Store, name: str, key: AccessKey, refusal: str
) -> None:
    ingest = ingest_of(make_queue(name, key), store)
    with pytest.raises(ConfigError, match=f"VOD_WEBHOOK_MNS_QUEUE: .*{refusal}"):
        await ingest.check()


async def test_a_refusal_while_running_is_logged_and_polling_goes_on(
    make_queue: Queues, store: Store
) -> None:
    ingest = ingest_of(make_queue("no-such-queue"), store)
    with capture_logs() as logs:
        running = asyncio.create_task(ingest.run())

        async def refused_twice() -> bool:
            return [log["event"] for log in logs].count("mns_unavailable") >= 2

        await eventually(refused_twice, 10, "two refusals")
        assert not running.done()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    refusal = next(log for log in logs if log["event"] == "mns_unavailable")
    assert refusal["log_level"] == "error"
    assert "QueueNotExist" in refusal["error"]


async def test_an_endpoint_that_does_not_answer_is_retried_not_refused(store: Store) -> None:
    queue = MnsQueue(f"http://127.0.0.1:{free_port()}", QUEUE, static_credentials(KEY))
    try:
        await ingest_of(queue, store).check()  # logged; the loop retries
        with pytest.raises(MnsError) as raised:
            await queue.receive(1, 0)
        assert raised.value.code == "NetworkError"
        assert raised.value.transient
    finally:
        await queue.aclose()


@pytest.mark.parametrize(
    ("body", "decoded"),
    [
        ('{"EventType": "X"}', b'{"EventType": "X"}'),
        ('  {"a": 1}\n', b'{"a": 1}'),
        (base64.b64encode(b'{"EventType": "X"}').decode(), b'{"EventType": "X"}'),
    ],
)
def test_decode_body_takes_json_or_its_base64(body: str, decoded: bytes) -> None:
    assert decode_body(body) == decoded


@pytest.mark.parametrize("body", ["", "not an event", "W10=", base64.b64encode(b"[1]").decode()])
def test_decode_body_refuses_anything_else(body: str) -> None:
    with pytest.raises(PayloadError, match="neither a JSON object nor the Base64 of one"):
        decode_body(body)


def test_retry_delay_doubles_up_to_five_minutes() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 8, 9, 50)] == [2, 4, 8, 256, 300, 300]
