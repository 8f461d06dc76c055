"""The pieces `make bench` is built from (bench/): its load generators send callbacks the real
receiver accepts, each a new job, and its CPU accounting covers a whole process tree. The
bench itself (timing) is not run here."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from bench import cluster, load
from bench.processes import AUTH_KEY, Receiver, cpu_seconds, free_port, process_tree, started
from tests.conftest import RedisServer
from tests.topologies import LocalCluster
from webhook.sender import sample_dynamic_image_event

GENERATORS = [
    pytest.param(
        load.wrk_round,
        marks=pytest.mark.skipif(not load.wrk_available(), reason="wrk is not installed"),
        id="wrk",
    ),
    pytest.param(load.python_round, id="python"),
]


@pytest.mark.parametrize("generator", GENERATORS)
def test_generated_callbacks_are_signed_and_each_a_new_job(
    generator: Callable[..., load.Round], own_redis: RedisServer, tmp_path: Path
) -> None:
    with Receiver(own_redis.url, tmp_path / "receiver.log") as receiver:
        assert receiver.process is not None
        # Raises unless every answer was 2xx: a bad signature would be 401.
        figures = generator(
            receiver.callback_url,
            AUTH_KEY,
            seconds=1,
            connections=2,
            server_pid=receiver.process.pid,
        )
    client = redis.Redis.from_url(own_redis.url)
    try:
        jobs = int(client.xlen("vod:stream"))  # one entry per job recorded
    finally:
        client.close()
    assert figures.requests > 0
    # None was a duplicate; a request in flight when the generator stopped is not counted.
    assert figures.requests <= jobs <= figures.requests + 2
    assert figures.server_cpu_us > 0


def test_evalsha_baseline_records_a_job_with_the_current_script(own_redis: RedisServer) -> None:
    # bench/apps.py builds record_event's arguments as Store.record does: this fails when the
    # script's arguments change without it.
    port = free_port()
    command = [sys.executable, "-m", "bench.apps", "evalsha", str(port), own_redis.url]
    with started(command, f"http://127.0.0.1:{port}/healthz", dict(os.environ)):
        body = sample_dynamic_image_event("bench-job-1")
        answer = httpx.post(f"http://127.0.0.1:{port}/callbacks/vod", json=body, timeout=5)
    assert answer.json()["status"] == "accepted"
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        assert client.hget("vod:job:bench-job-1", "status") == "success"
    finally:
        client.close()


@pytest.mark.skipif(not load.wrk_available(), reason="wrk is not installed")
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("cluster_url")  # healed and flushed
def test_cluster_bench_measures_every_configuration(
    redis_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One 1 s round (after the warm-up) per configuration; load._round raises on any error or
    # non-2xx answer, cluster.measured on a callback not recorded.
    report = cluster.measure(1, 1, tmp_path, redis_cluster)
    report |= {"date": "now", "seconds": 1, "rounds_run": 1, "cores": 2}
    report |= {"load_average": "0 0 0", "load_average_end": "0 0 0"}
    cluster.print_report(report)
    table = capsys.readouterr().out
    assert report["placement"]["distinct"]  # {vod-0}, {vod-1}, {vod-2} on 3 masters
    names = {
        f"{backend}_{workers}" for backend in ("single", "p1", "p2", "p3") for workers in (1, 2)
    }
    assert set(report["medians"]) == names
    for name, label in report["labels"].items():
        assert f"\n{label} " in table
        assert report["medians"][name]["receiver"]["requests"] > 0
        # Each master holding partitions got its share of the callbacks.
        assert all(m["share"] > 0 for m in report["medians"][name]["masters"].values())
    assert len(report["medians"]["p3_1"]["masters"]) == 3


def test_lua_script_signs_every_second_of_the_run() -> None:
    script = load.lua_script("http://127.0.0.1:1/callbacks/vod", AUTH_KEY, seconds=30)
    assert script.count("] = ") >= 30 + 120
    assert 'PATH = "/callbacks/vod"' in script


BURN = """
import sys, time
while time.process_time() < 0.3:
    pass
print("burnt", flush=True)
sys.stdin.read()  # until the test closes its end
"""


def test_cpu_seconds_cover_the_process_tree() -> None:
    # A parent that only waits, and a child that burns 0.3 s of CPU: the tree counts the child.
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BURN!r}])"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert parent.stdout is not None
    assert parent.stdin is not None
    try:
        assert parent.stdout.readline().strip() == "burnt"
        tree = process_tree(parent.pid)
        assert len(tree) == 2
        assert tree[0] == parent.pid
        assert cpu_seconds(tree) >= 0.29  # /proc counts in clock ticks
        assert cpu_seconds(tree[:1]) < 0.29
    finally:
        parent.stdin.close()
        parent.wait(10)
        parent.stdout.close()
