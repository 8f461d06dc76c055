"""The `/events` feed: it survives stream entries it cannot use, and what it holds for each
connection is bounded in bytes as well as in entries."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest
import redis
from redis.asyncio import Redis
from sse_starlette import ServerSentEvent
from structlog.testing import capture_logs

from tests.conftest import Receiver, RedisServer, eventually, wait_for
from tests.processes import serving
from tests.test_api import AUTH, TOKEN, events, take
from tests.test_client import job_event
from webhook.feed import WRITE_BYTES, Ended, Entry, Subscription, encode_event
from webhook.store import Store


async def test_an_entry_without_an_envelope_is_skipped_and_the_feed_goes_on(
    start_receiver: Receiver, http: httpx.AsyncClient, redis_client: Redis, store: Store
) -> None:
    base = await start_receiver(api_token=TOKEN)
    async with events(http, f"{base}/events") as source:
        await redis_client.xadd("vod:stream", {"something": "else"})
        recorded = await store.record(job_event("j1"))
        [(entry_id, envelope)] = await take(source, 1)
    assert entry_id == recorded.id
    assert envelope["job_id"] == "j1"


async def test_filtered_streams_skip_entries_they_cannot_read_live_and_in_replay(
    start_receiver: Receiver, http: httpx.AsyncClient, redis_client: Redis, store: Store
) -> None:
    base = await start_receiver(api_token=TOKEN)
    # A newer receiver's envelope (a `source` this one does not know) still routes by its
    # type and job; garbage cannot be routed at all.
    future = json.loads(job_event("j1").model_dump_json()) | {"source": "from-the-future"}
    with capture_logs() as logs:
        async with (
            events(http, f"{base}/events?job=j1") as one_job,
            events(http, f"{base}/events?type=DynamicImageComplete") as one_type,
        ):
            empty = await redis_client.xadd("vod:stream", {"something": "else"})
            garbage = await redis_client.xadd("vod:stream", {"envelope": "{not json"})
            newer = await redis_client.xadd("vod:stream", {"envelope": json.dumps(future)})
            recorded = await store.record(job_event("j1"))
            expected = [newer, recorded.id]
            assert [entry_id for entry_id, _ in await take(one_job, 2)] == expected
            assert [entry_id for entry_id, _ in await take(one_type, 2)] == expected
        # Reconnecting replays past the garbage instead of ending on it again.
        headers = {"Last-Event-ID": "0"}
        async with events(http, f"{base}/events?job=j1", headers) as replayed:
            assert [entry_id for entry_id, _ in await take(replayed, 2)] == expected
            later = await redis_client.xadd("vod:stream", {"envelope": json.dumps(future)})
            [(live, _)] = await take(replayed, 1)
            assert live == later
        # Unfiltered streams send what is stored as it is, and go on past what is not there.
        async with events(http, f"{base}/events?since=0") as everything, asyncio.timeout(10):
            sent = [(event.id, event.data) for event in [await anext(everything) for _ in "123"]]
            assert sent[0] == (garbage, "{not json")
            assert [entry_id for entry_id, _ in sent[1:]] == expected
    skipped = {log["id"]: log["detail"] for log in logs if log["event"] == "feed_entry_skipped"}
    assert len([log for log in logs if log["event"] == "feed_entry_skipped"]) == 2  # once each
    assert skipped[empty] == "no envelope"
    assert str(skipped[garbage]).startswith("not an envelope: ")


async def test_event_streams_beyond_the_cap_get_503_with_retry_after(
    start_receiver: Receiver, http: httpx.AsyncClient
) -> None:
    base = await start_receiver(api_token=TOKEN, max_event_streams=1)
    async with events(http, f"{base}/events"):
        refused = await http.get(f"{base}/events", headers=AUTH)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "10"
        assert refused.json()["error"] == "too_many_streams"

    # The slot is free again once the server sees the first stream end.
    async def slot_free() -> bool:
        async with http.stream("GET", f"{base}/events", headers=AUTH) as response:
            return response.status_code == 200

    await eventually(slot_free, what="the first stream's slot to be freed")


def entries(first: int, count: int, body_bytes: int) -> list[Entry]:
    return [Entry(f"{n}-0", "x" * body_bytes) for n in range(first, first + count)]


def test_a_queue_counts_its_bytes_and_ends_past_its_byte_limit() -> None:
    async def scenario() -> None:
        subscription = Subscription(1000, max_bytes=300_000)
        first = entries(0, 2, 50_000)
        assert first[0].size > 2 * 50_000  # the text and its SSE encoding
        subscription.offer(first)
        assert subscription.queued_bytes == first[0].size + first[1].size
        assert await subscription.next(max_bytes=60_000) == first[:1]
        assert subscription.queued_bytes == first[1].size
        subscription.offer(entries(2, 1, 50_000))
        assert not subscription.ended
        subscription.offer(entries(3, 1, 50_000))  # 3 x ~100 KB queued: over 300,000
        assert subscription.ended
        assert subscription.queued_bytes == 0  # dropped at once, not when the client reads
        with pytest.raises(Ended):
            await subscription.next()

    asyncio.run(scenario())


def test_an_empty_queue_takes_a_whole_round_so_a_burst_cuts_off_nobody() -> None:
    subscription = Subscription(2, max_bytes=100_000)
    subscription.offer(entries(0, 5, 50_000))
    assert not subscription.ended
    assert subscription.queued == 5


def test_entries_are_handed_out_in_writes_of_at_most_write_bytes_shared_by_connections() -> None:
    async def scenario() -> None:
        round_ = entries(0, 20, 50_000)  # ~1 MB of SSE
        huge = entries(20, 1, 2 * WRITE_BYTES)
        a, b = Subscription(1000, 1 << 30), Subscription(1000, 1 << 30)
        for subscription in (a, b):
            subscription.offer(round_)
            subscription.offer(huge)
        writes = []
        while a.queued:
            writes.append(await a.next())
        assert [entry for write in writes for entry in write] == round_ + huge
        assert all(sum(len(entry.sse) for entry in write) <= WRITE_BYTES for write in writes[:-1])
        assert writes[-1] == huge  # alone: larger than a write, yet sent
        assert len(writes) == 5  # 4 x 5 entries of ~50 KB, then the huge one
        assert (await b.next())[0].sse is round_[0].sse  # encoded once for every connection

    asyncio.run(scenario())


ENVELOPE_BYTES = 64 * 1024


def read_response_to_its_end(sock: socket.socket) -> bytes:
    """What the server sends until it ends the chunked response (bounded by the socket's
    timeout: a stream that never ends fails the test)."""
    received = b""
    while not received.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        received += chunk
    return received


def test_a_client_that_falls_behind_by_bytes_is_cut_off_and_resumes(
    redis_server: RedisServer,
) -> None:
    """Few but large envelopes: far under SSE_QUEUE_SIZE, far over SSE_QUEUE_BYTES."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    with serving(
        redis_url=redis_server.url,
        api_token=TOKEN,
        metrics_token=TOKEN,
        sse_queue_bytes=str(1024 * 1024),
        send_timeout_seconds="120",  # only the queue may cut this client off
    ) as (base, process):
        host, port = base.removeprefix("http://").split(":")
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect((host, int(port)))
            request = f"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            sock.sendall(request.encode())
            assert sock.recv(12) == b"HTTP/1.1 200"

            def cut_off() -> bool:
                return any(
                    line.get("event") == "events_client_behind" for line in process.json_logs()
                )

            ids: list[str] = []
            # Each envelope is added once the previous one reached a client that reads: one
            # round each, so only a queue that stays full can be cut off.
            with (
                httpx.Client(timeout=10) as http,
                http.stream("GET", f"{base}/events", headers=AUTH) as reading,
            ):
                read = reading.iter_lines()
                for n in range(64):  # at most 4 MiB: 4 x the queue's bytes, 1/16 of its entries
                    envelope = json.dumps({"id": "", "n": n, "padding": "x" * ENVELOPE_BYTES})
                    entry_id = client.xadd("vod:stream", {"envelope": envelope})
                    assert isinstance(entry_id, str)
                    ids.append(entry_id)
                    while next(read) != f"id: {ids[-1]}":
                        pass
                    if cut_off():
                        break
            wait_for(cut_off, 10, "the client to be cut off")
            received = read_response_to_its_end(sock)
        assert received.endswith(b"\r\n0\r\n\r\n"), "the stream was not ended"
        lines = received.decode().split("\r\n")
        got = [line.removeprefix("id: ") for line in lines if line.startswith("id: ")]
        assert got == ids[: len(got)]
        assert len(got) < len(ids)
        [behind] = [line for line in process.json_logs() if line["event"] == "events_client_behind"]
        queued, queued_bytes = behind["queued"], behind["queued_bytes"]
        assert isinstance(queued, int)
        assert isinstance(queued_bytes, int)
        assert queued < 1000  # the bytes cut it off, not the entries
        assert queued_bytes > 1024 * 1024

        rest: list[str] = []
        with (
            httpx.Client(timeout=10) as http,
            http.stream(
                "GET", f"{base}/events", headers={**AUTH, "Last-Event-ID": got[-1]}
            ) as resumed,
        ):
            for line in resumed.iter_lines():
                if line.startswith("id: "):
                    rest.append(line.removeprefix("id: "))
                    if len(got) + len(rest) == len(ids):
                        break
        metrics = httpx.get(f"{base}/metrics", headers=AUTH, timeout=10).text
        assert 'vod_webhook_sse_disconnects_total{reason="lagging"} 1.0' in metrics
    client.close()
    assert got + rest == ids


@pytest.mark.parametrize("data", ['{"a": "b"}', "", "two\nlines", "cr\rlf\r\nmixed", "é ☃"])
def test_events_are_encoded_as_sse_starlette_encodes_them(data: str) -> None:
    assert encode_event("1-2", data) == ServerSentEvent(data=data, id="1-2").encode()
