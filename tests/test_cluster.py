"""The whole loop on Redis Cluster with 3 partitions and on Sentinel, in real processes:
emulator + serve + submit + listen (live and as a consumer group) + replay + jobs."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AUTH_KEY, free_port, wait_for
from tests.processes import (
    Process,
    emulating,
    emulator_jobs,
    env_for,
    listening,
    run,
    serving,
)
from webhook.connection import parse_nodes
from webhook.settings import ConfigError, load_settings


def test_submitted_jobs_come_back_correlated_from_every_partition(
    cluster_url: str, tmp_path: Path
) -> None:
    """With reconciliation and verification on, so held outcomes, their checks and the pending
    index are exercised in every partition too."""
    emulator_port = free_port()
    cluster = {"redis_url": cluster_url, "partitions": "3"}
    with (
        serving(**cluster, vod_endpoint=f"http://127.0.0.1:{emulator_port}",
                verify_outcomes="true", reconcile="true", reconcile_interval_seconds="0.5",
                reconcile_grace_seconds="2") as (receiver, _),
        emulating("--callback-url", f"{receiver}/callbacks/vod", "--auth-key", AUTH_KEY,
                  "--delay", "0.2", "--duplicate-rate", "0.3", "--drop-rate", "0.3",
                  "--seed", "3", port=emulator_port) as (emulator, _),
        listening(**cluster) as live,
        listening("--group", "audit", "--from", "beginning", **cluster) as durable,
    ):  # fmt: skip
        jobs_file = tmp_path / "jobs.jsonl"
        jobs_file.write_text(
            "\n".join(json.dumps({"video_id": f"v{n}", "template_id": "t"}) for n in range(12))
        )
        env = env_for(**cluster, vod_endpoint=f"http://127.0.0.1:{emulator_port}")
        # `submit --wait` subscribes on the job's shard channel, then reads its partition.
        waited = run("submit", "--video-id", "w", "--template-id", "t", "--wait", env=env)
        assert waited.returncode == 0, waited.stderr
        outcome = json.loads(waited.stdout)
        assert outcome["status"] == "success"
        assert outcome["submission"]["video_id"] == "w"
        submitted = run("submit", "--from-file", str(jobs_file), env=env)
        assert submitted.returncode == 0, submitted.stderr
        job_ids = {*submitted.stdout.split(), outcome["job_id"]}

        for listener in (live, durable):
            wait_for(partial(_all_of, listener, job_ids), 30, "every outcome")
        dropped = {
            j["job_id"] for j in emulator_jobs(emulator) if j["callback"] == "dropped_by_fault"
        }

    for listener in (live, durable):
        envelopes = [e for e in seen(listener) if e["submission"] is not None]
        assert sorted(e["job_id"] for e in envelopes) == sorted(job_ids)  # each once
    by_job = {e["job_id"]: e for e in seen(live)}
    assert dropped, "the seed drops some callbacks"
    assert all(by_job[j]["source"] == "reconcile" for j in dropped)
    # A held outcome whose check lags behind the reconciler's grace (a loaded machine) is
    # recorded from ListDynamicImage instead: VOD's word either way.
    delivered = [by_job[j] for j in job_ids - dropped]
    assert all(e["verified"] is True or e["source"] == "reconcile" for e in delivered)
    assert any(e["verified"] is True for e in delivered)
    partitions = {str(e["id"]).rpartition("@")[2] for e in seen(live)}
    assert len(partitions) > 1, "13 jobs spread over several of the 3 partitions"
    assert partitions <= {"0", "1", "2"}

    replayed = run("replay", "--since", "0", env=env_for(**cluster))
    assert replayed.returncode == 0, replayed.stderr
    assert {json.loads(line)["job_id"] for line in replayed.stdout.splitlines()} == job_ids
    one = next(iter(job_ids))
    shown = json.loads(run("jobs", "show", one, "--json", env=env_for(**cluster)).stdout)
    assert shown["status"] == "success"
    assert json.loads(run("jobs", "pending", "--json", env=env_for(**cluster)).stdout) == []


def seen(process: Process) -> list[dict[str, Any]]:
    return [json.loads(line) for line in process.stdout]


def _all_of(process: Process, job_ids: set[str]) -> bool:
    return {e["job_id"] for e in seen(process)} >= job_ids


def test_serve_refuses_another_number_of_partitions(cluster_url: str) -> None:
    with serving(redis_url=cluster_url, partitions="3"):
        pass  # it recorded 3
    with (
        pytest.raises(AssertionError, match="holds 3 partitions"),
        serving(redis_url=cluster_url, partitions="2"),
    ):
        pass


def test_send_test_reaches_listen_through_sentinel(sentinel_url: str) -> None:
    with (
        serving(redis_url=sentinel_url) as (receiver, _),
        listening(redis_url=sentinel_url) as live,
    ):
        sent = run("send-test", "--url", f"{receiver}/callbacks/vod", "--key", AUTH_KEY,
                   "--callback-url", f"{receiver}/callbacks/vod")  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_for(lambda: bool(live.stdout), 10, "the envelope")
    assert json.loads(live.stdout[0])["event_type"] == "DynamicImageComplete"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://127.0.0.1:26379", "needs the master's name"),
        ("redis+sentinel://h:1/m/x", "needs the master's name"),
        ("redis+sentinel://h:1/m?ssl=1", "unknown option 'ssl'"),
        ("redis+cluster://h:1/0", "names nodes only"),
        ("redis+cluster://h:notaport", "is not a host:port"),
        ("redis+cluster+tls://h:1", "must start with"),
    ],
)
def test_bad_redis_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_env_file=None, redis_url=url)


def test_partitions_need_a_cluster() -> None:
    with pytest.raises(ConfigError, match=r"VOD_WEBHOOK_PARTITIONS: .*needs Redis Cluster"):
        load_settings(_env_file=None, redis_url="redis://127.0.0.1:6379", partitions=3)


def test_sentinel_url_names_master_database_and_credentials() -> None:
    nodes = parse_nodes("redis+sentinel://app:s%40cret@h1:26380,h2/mymaster/2?sentinel_password=sp")
    assert nodes.addresses == [("h1", 26380), ("h2", 26379)]
    assert (nodes.username, nodes.password, nodes.master, nodes.db) == (
        "app",
        "s@cret",
        "mymaster",
        2,
    )
    assert nodes.options == {"sentinel_password": "sp"}


def test_a_wait_for_replicas_must_fit_inside_the_redis_timeout() -> None:
    with pytest.raises(ConfigError, match=r"VOD_WEBHOOK_REDIS_WAIT_TIMEOUT_MS: .*below"):
        load_settings(_env_file=None, redis_timeout_seconds=1.0, redis_wait_timeout_ms=1000)
    assert load_settings(_env_file=None, redis_wait_timeout_ms=1500).redis_wait_timeout_ms == 1500
