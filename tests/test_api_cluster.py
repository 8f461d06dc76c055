"""The read API on a real Redis Cluster with 3 partitions, over loopback HTTP: one `/events`
stream carries every partition's events, and its ids resume each partition exactly."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from itertools import count
from typing import Any

import httpx
import pytest

from tests.conftest import ServeApp, job_callback
from tests.test_api import AUTH, TOKEN, events, take
from tests.test_app import post
from tests.test_client import job_event
from webhook.app import create_app
from webhook.feed import Entry, Progress
from webhook.keys import Layout
from webhook.settings import Settings
from webhook.store import Store

PARTITIONS = 3
LAYOUT = Layout("vod", PARTITIONS, sharded=True)


def jobs(per_partition: int, tag: str) -> list[str]:
    """Job ids landing in partitions 0, 1, 2, 0, 1, 2, ... (`per_partition` in each)."""
    found: dict[int, list[str]] = {n: [] for n in range(PARTITIONS)}
    for n in count():
        job_id = f"{tag}-{n}"
        found[LAYOUT.of_job(job_id).partition].append(job_id)
        if all(len(ids) >= per_partition for ids in found.values()):
            break
    return [found[p][i] for i in range(per_partition) for p in range(PARTITIONS)]


ClusterApi = Callable[..., Awaitable[tuple[str, Store]]]


@pytest.fixture
async def start_cluster_api(
    make_settings: Callable[..., Settings], serve_app: ServeApp, cluster_url: str
) -> AsyncIterator[ClusterApi]:
    """Serve the receiver with its read API on the cluster, in 3 partitions (and `overrides`);
    returns its base URL and a store on the cluster."""
    stores: list[Store] = []

    async def start(**overrides: Any) -> tuple[str, Store]:
        settings = make_settings(
            redis_url=cluster_url, partitions=PARTITIONS, api_token=TOKEN, **overrides
        )
        base = await serve_app(lambda _: create_app(settings))
        stores.append(Store.from_settings(settings))
        return base, stores[-1]

    yield start
    for store in stores:
        await store.close()


@pytest.fixture
async def cluster_api(start_cluster_api: ClusterApi) -> tuple[str, Store]:
    return await start_cluster_api()


async def record(store: Store, job_ids: list[str]) -> list[str]:
    return [(await store.record(job_event(job_id))).id for job_id in job_ids]


def check_ids(seen: list[tuple[str, dict[str, Any]]]) -> None:
    """Each partition's envelopes in their stream's order, and each event's id a cursor of
    every partition that names its envelope's own position."""
    last = [(0, 0)] * PARTITIONS
    for event_id, envelope in seen:
        keys, entry_id = LAYOUT.split(envelope["id"])
        assert LAYOUT.of_job(envelope["job_id"]) is keys
        order = Entry(entry_id, "").order
        assert order > last[keys.partition]
        last[keys.partition] = order
        assert LAYOUT.positions(event_id)[keys.partition] == entry_id
        assert event_id.count("@") == PARTITIONS


async def test_callbacks_of_jobs_in_every_partition_arrive_on_one_stream(
    cluster_api: tuple[str, Store], http: httpx.AsyncClient
) -> None:
    base, _ = cluster_api
    job_ids = jobs(2, "live")
    async with events(http, f"{base}/events") as source:
        for job_id in job_ids:
            response = await post(http, base, json.dumps(job_callback(job_id)).encode())
            assert response.status_code == 200
        seen = await take(source, len(job_ids))
    assert sorted(envelope["job_id"] for _, envelope in seen) == sorted(job_ids)
    assert {LAYOUT.split(envelope["id"])[0].partition for _, envelope in seen} == {0, 1, 2}
    check_ids(seen)


async def test_since_0_replays_every_partition_then_continues_live(
    cluster_api: tuple[str, Store], http: httpx.AsyncClient
) -> None:
    base, store = cluster_api
    old = await record(store, jobs(1, "old"))
    async with events(http, f"{base}/events?since=0") as source:
        replayed = await take(source, len(old))
        assert [envelope["id"] for _, envelope in replayed] == old  # history: merged by id
        new = await record(store, jobs(1, "new"))
        live = await take(source, len(new))
    assert sorted(envelope["id"] for _, envelope in live) == sorted(new)
    check_ids(replayed + live)


async def test_last_event_id_of_a_middle_event_resumes_exactly_the_rest(
    cluster_api: tuple[str, Store], http: httpx.AsyncClient
) -> None:
    base, store = cluster_api
    recorded = await record(store, jobs(2, "before"))
    async with events(http, f"{base}/events?since=0") as source:
        seen = await take(source, len(recorded))
        recorded += await record(store, jobs(2, "after"))
        seen += await take(source, 6)
    check_ids(seen)
    ids = [envelope["id"] for _, envelope in seen]
    assert sorted(ids) == sorted(recorded)
    markers = iter(jobs(2, "marker"))
    owed: list[str] = []  # what each resumed stream has to give besides the rest of `seen`
    for middle in (2, 8):  # a replayed event, a live one
        headers = {"Last-Event-ID": seen[middle][0]}
        async with events(http, f"{base}/events", headers) as source:
            rest = await take(source, len(seen) - middle - 1 + len(owed))
            assert sorted(envelope["id"] for _, envelope in rest) == sorted(
                ids[middle + 1 :] + owed
            )
            check_ids(seen[: middle + 1] + rest)
            # Nothing else was owed: the next event is the next recorded.
            owed += await record(store, [next(markers)])
            [(_, marker)] = await take(source, 1)
            assert marker["id"] == owed[-1]


@pytest.mark.parametrize(
    ("since", "detail"),
    [
        ("yesterday", "not a stream id (such as 1732476000000-0) or 0: 'yesterday'"),
        ("1-0@3", "'1-0@3' names partition 3, and there are 3"),
        ("1-0@0,1-0@1,1-0@7", "'1-0@7' names partition 7, and there are 3"),
        ("1-0@0,x@1", "not a stream id (such as 1732476000000-0) or 0: '1-0@0,x@1'"),
        (f"{2**64}-0@1", f"a stream id's parts are at most {2**64 - 1}: '{2**64}-0@1'"),
    ],
)
async def test_a_bad_since_or_last_event_id_is_a_400_saying_why(
    cluster_api: tuple[str, Store], http: httpx.AsyncClient, since: str, detail: str
) -> None:
    base, _ = cluster_api
    for headers, params in (({}, {"since": since}), ({"Last-Event-ID": since}, {})):
        response = await http.get(f"{base}/events", params=params, headers={**AUTH, **headers})
        assert response.status_code == 400
        assert response.json() == {
            "error": "invalid_request",
            "detail": f"since / Last-Event-ID: {detail}",
        }


async def test_a_client_cut_off_while_every_partition_is_written_catches_up_losslessly(
    start_cluster_api: ClusterApi, http: httpx.AsyncClient
) -> None:
    """Replays and hand-overs racing the writes, resumed from ids of both kinds each time."""
    base, store = await start_cluster_api(sse_queue_size=1)
    job_ids = jobs(20, "busy")
    recorded: list[str] = []
    got: list[tuple[str, dict[str, Any]]] = []

    async def produce() -> None:
        recorded.extend(await record(store, job_ids))

    async def read_all() -> None:
        while len(got) < len(job_ids):
            headers = {"Last-Event-ID": got[-1][0]} if got else {}
            async with events(http, f"{base}/events?since=0", headers) as source:
                async for event in source:
                    got.append((event.id, json.loads(event.data)))
                    if len(got) == len(job_ids):
                        return

    async with asyncio.timeout(20):
        await asyncio.gather(produce(), read_all())
    assert sorted(envelope["id"] for _, envelope in got) == sorted(recorded)  # none twice
    check_ids(got)


async def test_jobs_endpoint_reads_each_job_from_its_partition(
    cluster_api: tuple[str, Store], http: httpx.AsyncClient
) -> None:
    base, store = cluster_api
    job_ids = jobs(1, "job")
    recorded = await record(store, job_ids)
    for job_id, envelope_id in zip(job_ids, recorded, strict=True):
        response = await http.get(f"{base}/jobs/{job_id}", headers=AUTH)
        assert response.status_code == 200
        assert response.json()["status"] == "success"
        assert response.json()["envelope_id"] == envelope_id
        assert LAYOUT.split(envelope_id)[0] is LAYOUT.of_job(job_id)
    missing = await http.get(f"{base}/jobs/nope", headers=AUTH)
    assert missing.status_code == 404


def test_a_connection_whose_history_read_further_than_the_feed_ids_its_own_events() -> None:
    """The hand-over: live entries the replay sent already are dropped; until the feed's
    positions pass the replay's in every partition, the events carry the connection's."""
    progress = Progress(LAYOUT, ["0", "0", "0"])
    progress.advance(1, "5-0")  # replayed, and the feed has not read it yet
    progress.advance(2, "3-0")
    feed = ["2-0", "0-0", "3-0"]
    live = Entry("2-0@0", "{}", 0, LAYOUT.cursor(feed))
    assert progress.live(live) == b"id: 2-0@0,5-0@1,3-0@2\r\ndata: {}\r\n\r\n"
    assert progress.live(Entry("4-0@1", "{}", 1, LAYOUT.cursor(["2-0", "4-0", "3-0"]))) is None
    assert progress.live(Entry("3-0@2", "{}", 2, LAYOUT.cursor(["2-0", "4-0", "3-0"]))) is None
    caught_up = Entry("6-0@1", "{}", 1, LAYOUT.cursor(["2-0", "6-0", "3-0"]))
    assert progress.live(caught_up) is caught_up.sse
    assert progress.positions is None  # from now on, the feed's shared events
