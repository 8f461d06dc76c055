"""`GET /metrics` over loopback HTTP, parsed with prometheus_client's parser: every family of the
contract in a live scrape, the counts after real callbacks of each outcome, labels that stay
bounded, the token, Redis down, and `serve --workers 2` summing its workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from tests.conftest import (
    AUTH_KEY,
    Receiver,
    RedisServer,
    eventually,
    free_port,
    job_callback,
    vod_headers,
    wait_for,
)
from tests.processes import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    Process,
    emulating,
    emulator_jobs,
    env_for,
    run,
    serving,
    wait_until_answering,
)
from tests.test_app import SUCCESS, post
from tests.test_status import populate, quiet
from webhook.app import RequestIdAndMetrics
from webhook.events import KNOWN_EVENT_TYPES
from webhook.metrics import METRIC_NAMES, Metrics, series_names
from webhook.scrape import RedisFamilies
from webhook.status import Group
from webhook.store import Store

TOKEN = "s3cret-metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Labels = frozenset[tuple[str, str]]


class Scrape:
    """One /metrics answer, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.samples: dict[tuple[str, Labels], float] = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in self.families
            for sample in family.samples
        }

    def exported(self) -> dict[str, str]:
        """Each family's name as queries use it (a counter's with `_total`), and its type."""
        return {
            family.name + ("_total" if family.type == "counter" else ""): family.type
            for family in self.families
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def labels(self, name: str, label: str) -> set[str]:
        return {dict(labels)[label] for sample, labels in self.samples if sample == name}


async def scrape(http: httpx.AsyncClient, base: str) -> Scrape:
    response = await http.get(f"{base}/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return Scrape(response.text)


async def test_every_family_of_the_contract_is_in_a_scrape_before_any_event(
    start_receiver: Receiver, http: httpx.AsyncClient
) -> None:
    """The single source of truth for dashboards and alert rules: METRIC_NAMES is what a live
    scrape shows, names and types, and every series name in it is one `series_names` lists."""
    base = await start_receiver(metrics_token=TOKEN)
    scraped = await scrape(http, base)
    assert scraped.exported() == METRIC_NAMES
    assert {name for name, _ in scraped.samples} <= series_names()
    assert "vod_webhook_callback_duration_seconds_bucket" in series_names()
    assert "vod_webhook_limiter_wait_seconds_count" in series_names()
    assert scraped.value("vod_webhook_ready") == 1
    # Series alerts watch are there at 0 before the first event.
    assert (
        scraped.value(
            "vod_webhook_callbacks_total",
            event_type="unknown",
            outcome="rejected",
            error="signature_mismatch",
        )
        == 0
    )
    assert (
        scraped.value("vod_webhook_http_responses_total", route="/callbacks/vod", status="503") == 0
    )
    assert scraped.value("vod_webhook_submissions_total", outcome="submitted", code="") == 0
    for kind in ("connection", "timeout", "out_of_memory", "busy", "other"):
        assert scraped.value("vod_webhook_redis_errors_total", kind=kind) == 0


async def test_metrics_are_off_without_their_token_and_need_it(
    start_receiver: Receiver, http: httpx.AsyncClient
) -> None:
    off = await start_receiver(api_token="api-token")
    for headers in ({}, AUTH):
        response = await http.get(f"{off}/metrics", headers=headers)
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"

    on = await start_receiver(metrics_token=TOKEN, api_token="api-token")
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer api-token"},  # the read API's token opens the read API only
    ):
        refused = await http.get(f"{on}/metrics", headers=headers)
        assert refused.status_code == 401
        assert refused.json() == {
            "error": "unauthorized",
            "detail": "send Authorization: Bearer <VOD_WEBHOOK_METRICS_TOKEN>",
        }
        assert refused.headers["www-authenticate"] == "Bearer"
    assert (await http.get(f"{on}/events", headers=AUTH)).status_code == 401
    assert (await http.get(f"{on}/metrics", headers=AUTH)).status_code == 200


def callback(event_type: str, **fields: Any) -> bytes:
    return json.dumps({"EventType": event_type, "Status": "success", **fields}).encode()


async def test_callbacks_are_counted_by_event_type_outcome_and_error(
    start_receiver: Receiver, http: httpx.AsyncClient
) -> None:
    base = await start_receiver(metrics_token=TOKEN)
    answers = [
        await post(http, base),  # accepted
        await post(http, base),  # duplicate
        await post(http, base, callback("AIMediaAuditComplete", MediaId="m1")),
        await post(http, base, b"{not json"),
        await post(http, base, callback("DynamicImageComplete")),  # no JobId: invalid_event
        await http.post(  # not signed by VOD
            f"{base}/callbacks/vod", content=SUCCESS, headers=vod_headers(key="WrongKey2026abcdef")
        ),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 400, 400, 401]
    await http.get(f"{base}/healthz")
    await http.get(f"{base}/no/such/path")

    scraped = await scrape(http, base)

    def count(event_type: str, outcome: str, error: str = "") -> float | None:
        labels = {"event_type": event_type, "outcome": outcome, "error": error}
        return scraped.value("vod_webhook_callbacks_total", **labels)

    assert count("DynamicImageComplete", "accepted") == 1
    assert count("DynamicImageComplete", "duplicate") == 1
    assert count("AIMediaAuditComplete", "accepted") == 1
    # A body that was not parsed has no event type to count it under.
    assert count("unknown", "rejected", "invalid_json") == 1
    assert count("unknown", "rejected", "invalid_event") == 1
    assert count("unknown", "rejected", "signature_mismatch") == 1
    durations = "vod_webhook_callback_duration_seconds_count"
    assert scraped.value(durations, outcome="accepted") == 2
    assert scraped.value(durations, outcome="rejected") == 3
    fast = scraped.value(
        "vod_webhook_callback_duration_seconds_bucket", outcome="accepted", le="1.0"
    )
    assert fast == 2

    def responses(route: str, status: str) -> float | None:
        return scraped.value("vod_webhook_http_responses_total", route=route, status=status)

    assert responses("/callbacks/vod", "200") == 3
    assert responses("/callbacks/vod", "400") == 2
    assert responses("/callbacks/vod", "401") == 1
    assert responses("/healthz", "200") == 1
    assert responses("other", "404") == 1
    assert responses("/callbacks/vod", "500") == 0


async def test_labels_stay_bounded_whatever_clients_send(
    start_receiver: Receiver, http: httpx.AsyncClient
) -> None:
    base = await start_receiver(metrics_token=TOKEN)
    junk = [f"Evil{n}" * 20 for n in range(25)] + ["", "DynamicImageComplete ", "é☃\u202e", "{}"]
    for n, event_type in enumerate(junk):
        answer = await post(http, base, callback(event_type, VideoId=f"v{n}"))
        assert answer.status_code in {200, 400}, answer.text
    for n in range(10):
        await http.get(f"{base}/probe/{n}", headers=AUTH)
        await http.post(f"{base}/metrics/{n}")
    scraped = await scrape(http, base)
    event_types = scraped.labels("vod_webhook_callbacks_total", "event_type")
    assert event_types <= KNOWN_EVENT_TYPES | {"other", "unknown"}
    assert "other" in event_types
    assert scraped.labels("vod_webhook_http_responses_total", "route") == {
        "/callbacks/vod",
        "other",
    }
    assert len(scraped.samples) < 100


async def test_held_outcomes_are_counted_as_held(
    start_receiver: Receiver, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET)
    base = await start_receiver(
        metrics_token=TOKEN, verify_outcomes=True, vod_endpoint="http://127.0.0.1:9"
    )
    assert (await post(http, base)).json()["status"] == "held"
    scraped = await scrape(http, base)
    labels = {"event_type": "DynamicImageComplete", "outcome": "held", "error": ""}
    assert scraped.value("vod_webhook_callbacks_total", **labels) == 1
    assert scraped.value("vod_webhook_held_outcomes") == 1


async def test_with_redis_down_a_scrape_answers_200_with_ready_0(
    start_receiver: Receiver, http: httpx.AsyncClient, own_redis: RedisServer
) -> None:
    base = await start_receiver(
        metrics_token=TOKEN, redis_url=own_redis.url, redis_timeout_seconds=1
    )
    own_redis.stop()
    assert (await post(http, base)).status_code == 503
    scraped = await scrape(http, base)
    assert scraped.value("vod_webhook_ready") == 0
    # What this process counted is there; nothing read from Redis is.
    labels = {"event_type": "DynamicImageComplete", "outcome": "unavailable"}
    assert scraped.value("vod_webhook_callbacks_total", error="store_unavailable", **labels) == 1
    assert (
        scraped.value("vod_webhook_http_responses_total", route="/callbacks/vod", status="503") == 1
    )
    errors = scraped.value("vod_webhook_redis_errors_total", kind="connection")
    assert errors is not None
    assert errors >= 2  # the callback's, the scrape's
    assert scraped.value("vod_webhook_stream_length") is None

    own_redis.start()

    async def ready() -> bool:
        return (await scrape(http, base)).value("vod_webhook_ready") == 1

    await eventually(ready, 10, "the cached snapshot to be read again")


async def test_redis_failures_are_counted_by_kind(
    start_receiver: Receiver, http: httpx.AsyncClient, own_redis: RedisServer
) -> None:
    base = await start_receiver(metrics_token=TOKEN, redis_url=own_redis.url)
    admin = Redis.from_url(own_redis.url, decode_responses=True)
    await admin.config_set("maxmemory-policy", "noeviction")
    await admin.config_set("maxmemory", "1")
    assert (await post(http, base)).status_code == 503
    await admin.config_set("maxmemory", "0")
    await admin.aclose()
    scraped = await scrape(http, base)
    assert scraped.value("vod_webhook_redis_errors_total", kind="out_of_memory") == 1


async def test_gauges_and_redis_held_counters_come_from_redis_at_scrape_time(
    start_receiver: Receiver, http: httpx.AsyncClient, store: Store, redis_client: Redis
) -> None:
    base = await start_receiver(metrics_token=TOKEN)
    await populate(store, redis_client)
    scraped = await scrape(http, base)
    assert scraped.value("vod_webhook_stream_length") == 3
    age = scraped.value("vod_webhook_stream_oldest_age_seconds")
    assert age is not None
    assert 0 <= age < 60
    group = {"group": "thumbnails"}
    assert scraped.value("vod_webhook_consumer_group_lag", **group) == 2
    assert scraped.value("vod_webhook_consumer_group_pending", **group) == 1
    assert scraped.value("vod_webhook_consumer_group_consumers", **group) == 1
    assert scraped.value("vod_webhook_consumer_group_redriven", **group) == 1
    assert scraped.value("vod_webhook_deadletter_entries") == 2
    assert scraped.value("vod_webhook_pending_jobs") == 2
    assert scraped.value("vod_webhook_oldest_pending_job_age_seconds") == pytest.approx(
        7200, abs=60
    )
    assert scraped.value("vod_webhook_held_outcomes") == 1
    submissions = "vod_webhook_submissions_total"
    assert scraped.value(submissions, outcome="submitted", code="") == 2
    assert scraped.value(submissions, outcome="throttled", code="Throttling.User") == 1
    assert scraped.value(submissions, outcome="refused", code="InvalidVideo.NotFound") == 1
    assert scraped.value("vod_webhook_limiter_wait_seconds_count") == 2
    waited = scraped.value("vod_webhook_limiter_wait_seconds_sum")
    assert waited == pytest.approx(0.1, abs=0.05)
    assert scraped.value("vod_webhook_reconcile_passes_total") == 1
    assert scraped.value("vod_webhook_reconcile_recovered_total") == 1
    assert scraped.value("vod_webhook_reconcile_timed_out_total") == 2
    last = scraped.value("vod_webhook_reconcile_last_pass_timestamp_seconds")
    assert last is not None
    assert last > 1.7e9

    # Read once every few seconds: a scrape right after shows the same, however Redis changed.
    await redis_client.xadd("vod:deadletter", {"envelope": "{}"})
    assert (await scrape(http, base)).value("vod_webhook_deadletter_entries") == 2


async def test_event_streams_are_counted_while_open_and_when_closed(
    start_receiver: Receiver, http: httpx.AsyncClient
) -> None:
    base = await start_receiver(metrics_token=TOKEN, api_token="api-token")
    streams = "vod_webhook_sse_clients"
    async with http.stream(
        "GET", f"{base}/events", headers={"Authorization": "Bearer api-token"}
    ) as stream:
        assert stream.status_code == 200
        assert (await scrape(http, base)).value(streams) == 1

    async def closed() -> bool:
        scraped = await scrape(http, base)
        gone = scraped.value("vod_webhook_sse_disconnects_total", reason="client_closed")
        return scraped.value(streams) == 0 and gone == 1

    await eventually(closed, 5, "the stream's end to be counted")


async def test_a_stream_the_feed_ends_is_counted_with_its_reason(redis_client: Redis) -> None:
    from webhook.feed import Entry, StreamFeed
    from webhook.keys import Layout

    metrics = Metrics(callback_path="/callbacks/vod", verify_outcomes=False)
    feed = StreamFeed(redis_client, Layout(), queue_size=2, queue_bytes=1 << 20, metrics=metrics)
    feed.start()  # connections subscribe once it follows the stream
    async with feed.subscription() as lagging:
        for n in range(3):
            lagging.offer([Entry(f"{n}-0", "{}")])
        assert metrics.registry.get_sample_value("vod_webhook_sse_clients") == 1
    async with feed.subscription():
        feed.close()
    await feed.stop()
    assert metrics.registry.get_sample_value("vod_webhook_sse_clients") == 0
    for reason, count in (("lagging", 1), ("shutdown", 1), ("client_closed", 0)):
        value = metrics.registry.get_sample_value(
            "vod_webhook_sse_disconnects_total", {"reason": reason}
        )
        assert value == count, reason


# `serve --workers 2`: prometheus-client's multiprocess mode.


def callback_counts(path: Path) -> dict[str, float]:
    """Accepted callbacks each worker's file holds, by file."""
    counts = {}
    for file in path.glob("counter_*.db"):
        merged = MultiProcessCollector.merge([str(file)], accumulate=False)
        counts[file.name] = sum(
            sample.value
            for metric in merged
            for sample in metric.samples
            if sample.name == "vod_webhook_callbacks_total"
            and sample.labels.get("outcome") == "accepted"
        )
    return counts


def job_callbacks(first: int, count: int) -> list[bytes]:
    return [json.dumps(job_callback(f"{n:032x}")).encode() for n in range(first, first + count)]


def workers_of(supervisor: int) -> list[int]:
    """The `--workers` processes of a `serve` (not multiprocessing's resource tracker)."""
    from bench.processes import process_tree

    return [pid for pid in process_tree(supervisor)[1:] if b"spawn_main" in _cmdline(pid)]


def _cmdline(pid: int) -> bytes:
    """A process's command line; empty once it has gone (a killed worker may, between the
    listing and the read)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def test_serve_with_two_workers_sums_them_and_forgets_dead_ones(
    redis_server: RedisServer, redis_sync: redis.Redis, tmp_path: Path
) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"left by an earlier run")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = env_for(
        redis_url=redis_server.url, metrics_token=TOKEN, api_token="api-token",
        auth_keys=AUTH_KEY, callback_url=f"{base}/callbacks/vod",
    ) | {"PROMETHEUS_MULTIPROC_DIR": str(directory)}  # fmt: skip
    server = Process(["serve", "--port", str(port), "--workers", "2"], env)
    try:
        wait_until_answering(server, f"{base}/readyz")
        assert not (directory / "counter_999999.db").exists(), "the directory was not wiped"
        sent = 0

        def both_workers_counted() -> bool:
            nonlocal sent
            bodies = job_callbacks(sent, 20)
            sent += len(bodies)

            async def post_all() -> None:
                async with httpx.AsyncClient(timeout=10) as client:
                    url = f"{base}/callbacks/vod"
                    answers = await asyncio.gather(
                        *(client.post(url, content=b, headers=vod_headers(url=url)) for b in bodies)
                    )
                    assert {a.status_code for a in answers} == {200}

            asyncio.run(post_all())
            counts = callback_counts(directory)
            return len(counts) == 2 and all(counts.values())

        wait_for(both_workers_counted, 30, "callbacks counted by both workers")
        with httpx.Client(timeout=10) as client:
            # Whichever worker answers, it sums both workers' files.
            for _ in range(6):
                scraped = Scrape(client.get(f"{base}/metrics", headers=AUTH).text)
                labels = {"event_type": "DynamicImageComplete", "outcome": "accepted", "error": ""}
                assert scraped.value("vod_webhook_callbacks_total", **labels) == sent
            assert scraped.exported() == METRIC_NAMES

            # Workers killed with an /events stream open: their replacements do not count it.
            with client.stream(
                "GET", f"{base}/events", headers={"Authorization": "Bearer api-token"}
            ) as stream:
                assert stream.status_code == 200
                wait_for(
                    lambda: (
                        Scrape(client.get(f"{base}/metrics", headers=AUTH).text).value(
                            "vod_webhook_sse_clients"
                        )
                        == 1
                    ),
                    10,
                    "the open stream counted",
                )
                killed = workers_of(server.popen.pid)
                assert len(killed) == 2
                for pid in killed:
                    os.kill(pid, signal.SIGKILL)

            def replaced_and_forgotten() -> bool:
                alive = workers_of(server.popen.pid)
                if len(alive) != 2 or set(alive) & set(killed):
                    return False
                try:
                    answer = client.get(f"{base}/metrics", headers=AUTH)
                except httpx.HTTPError:
                    return False
                scraped = Scrape(answer.text)
                return (
                    scraped.value("vod_webhook_sse_clients") == 0
                    # What the dead workers counted stays counted.
                    and scraped.value("vod_webhook_callbacks_total", **labels) == sent
                )

            wait_for(replaced_and_forgotten, 30, "the workers replaced and forgotten")
    finally:
        assert server.stop() == 0
    assert redis_sync.xlen("vod:stream") == sent


def test_submissions_and_passes_of_other_processes_show_in_metrics_and_status(
    redis_url: str,
) -> None:
    """`submit` and `reconcile` run and end in processes of their own: what they did is counted
    in Redis, so the receiver's scrape and `status` show it."""
    emulator_port = free_port()
    with (
        serving(redis_url=redis_url, metrics_token=TOKEN) as (base, _),
        emulating("--delay", "0.1", "--drop-rate", "1", port=emulator_port) as (emulator, _),
    ):
        env = env_for(redis_url=redis_url, vod_endpoint=f"http://127.0.0.1:{emulator_port}")
        submitted = run("submit", "--video-id", "v", "--template-id", "t", env=env)
        assert submitted.returncode == 0, submitted.stderr
        refused = run("submit", "--video-id", "notfound-1", "--template-id", "t", env=env)
        assert refused.returncode == 1
        wait_for(lambda: emulator_jobs(emulator)[0]["status"] == "success", 10, "the job done")
        report = json.loads(run("reconcile", "--once", "--grace", "0", env=env).stdout)
        assert report["recovered"] == 1  # its callback was dropped

        scraped = Scrape(httpx.get(f"{base}/metrics", headers=AUTH, timeout=10).text)
    submissions = "vod_webhook_submissions_total"
    assert scraped.value(submissions, outcome="submitted", code="") == 1
    assert scraped.value(submissions, outcome="refused", code="InvalidVideo.NotFound") == 1
    assert scraped.value("vod_webhook_limiter_wait_seconds_count") == 3  # 2 submits, 1 lookup
    assert scraped.value("vod_webhook_reconcile_passes_total") == 1
    assert scraped.value("vod_webhook_reconcile_recovered_total") == 1
    assert scraped.value("vod_webhook_reconcile_timed_out_total") == 0
    assert scraped.value("vod_webhook_pending_jobs") == 0

    shown = run("status", "--json", env=env_for(redis_url=redis_url))
    assert shown.returncode == 0, shown.stdout
    document = json.loads(shown.stdout)
    assert document["submissions"] == [
        {"outcome": "submitted", "code": "", "count": 1},
        {"outcome": "refused", "code": "InvalidVideo.NotFound", "count": 1},
    ]
    assert {quota["name"]: quota["calls"] for quota in document["quotas"]} == {
        ACCESS_KEY_ID: 2,
        f"{ACCESS_KEY_ID}:ListDynamicImage": 1,
    }
    reconcile = document["reconcile"]
    assert (reconcile["expected"], reconcile["passes"], reconcile["recovered"]) == (True, 1, 1)
    assert reconcile["interval_seconds"] is None  # --once: RECONCILE_INTERVAL_SECONDS applies


def test_a_group_whose_lag_redis_cannot_tell_has_no_lag_series() -> None:
    status = quiet(groups=(Group("g", consumers=1, pending=2, lag=None, last_delivered_id="1-0"),))
    families = {family.name: family for family in RedisFamilies(status).collect()}
    assert families["vod_webhook_consumer_group_lag"].samples == []
    [pending] = families["vod_webhook_consumer_group_pending"].samples
    assert (pending.labels, pending.value) == ({"group": "g"}, 2)


async def test_an_error_after_the_answer_started_is_not_counted_twice() -> None:
    metrics = Metrics(callback_path="/callbacks/vod", verify_outcomes=False)

    async def fails_midway(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("a bug while streaming")

    async def sent(message: Any) -> None:
        pass

    http_scope = {"type": "http", "headers": []}
    with pytest.raises(RuntimeError):
        await RequestIdAndMetrics(fails_midway, metrics.responses)(http_scope, None, sent)
    count = metrics.registry.get_sample_value
    assert count("vod_webhook_http_responses_total", {"route": "other", "status": "200"}) == 1
    assert count("vod_webhook_http_responses_total", {"route": "other", "status": "500"}) is None


def test_an_unusable_multiprocess_directory_stops_serve_with_exit_2(tmp_path: Path) -> None:
    occupied = tmp_path / "a-file"
    occupied.write_text("not a directory")
    port = free_port()
    env = env_for(
        auth_keys=AUTH_KEY, callback_url=f"http://127.0.0.1:{port}/callbacks/vod",
        embedded_port=str(free_port()),
    ) | {"PROMETHEUS_MULTIPROC_DIR": str(occupied / "metrics")}  # fmt: skip
    result = run("serve", "--port", str(port), env=env)
    assert result.returncode == 2
    assert f"PROMETHEUS_MULTIPROC_DIR: cannot use {occupied / 'metrics'}" in result.stderr
    assert "Traceback" not in result.stderr
