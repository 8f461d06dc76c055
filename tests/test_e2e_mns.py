"""End to end through MNS in real processes: submit -> emulator -> its MNS queue -> ingest-mns
(or serve) -> envelopes on pub/sub and the stream, correlated; ingest stopped while jobs end."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import wait_for
from tests.processes import Process, emulating, emulator_jobs, env_for, listening, run, serving

QUEUE = "vod-events"


def queue_state(emulator: str) -> dict[str, int]:
    counts: dict[str, int] = httpx.get(f"{emulator}/_emulator/state").json()["queues"][QUEUE]
    return counts


def ingesting(env: dict[str, str]) -> Process:
    process = Process(["ingest-mns"], env)
    wait_for(lambda: any("ingesting MNS queue" in line for line in process.stderr), 15, "ingest")
    return process


def submit_jobs(env: dict[str, str], path: Path, first: int, count: int) -> list[str]:
    path.write_text(
        "\n".join(
            json.dumps({"video_id": f"video-{n % 3}", "template_id": "tpl", "tags": {"n": str(n)}})
            for n in range(first, first + count)
        )
    )
    submitted = run("submit", "--from-file", str(path), env=env)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.split()


def test_outcomes_arrive_once_each_correlated_also_those_that_ended_while_ingest_was_stopped(
    redis_url: str, tmp_path: Path
) -> None:
    with emulating(
        "--mns-queue", QUEUE, "--delay", "0.3", "--duplicate-rate", "0.4", "--seed", "3"
    ) as (emulator, _), listening(redis_url=redis_url) as listener:  # fmt: skip
        env = env_for(
            redis_url=redis_url, vod_endpoint=emulator, mns_endpoint=emulator, mns_queue=QUEUE
        )

        def envelopes() -> list[dict[str, Any]]:
            return [json.loads(line) for line in listener.stdout]

        ingest = ingesting(env)
        early = submit_jobs(env, tmp_path / "early.jsonl", 0, 6)
        wait_for(lambda: {e["job_id"] for e in envelopes()} >= set(early), 30, "early outcomes")
        assert ingest.stop() == 0

        # While ingest is stopped every job ends, and VOD writes it into the queue.
        late = submit_jobs(env, tmp_path / "late.jsonl", 6, 6)
        wait_for(
            lambda: (
                {j["job_id"] for j in emulator_jobs(emulator) if j["callback"] == "delivered"}
                >= set(late)
            ),
            30,
            "late jobs written into the queue",
        )
        assert queue_state(emulator)["visible"] >= 6
        assert not {e["job_id"] for e in envelopes()} & set(late), "nothing ingested meanwhile"

        ingest = ingesting(env)
        try:
            wait_for(lambda: {e["job_id"] for e in envelopes()} >= set(late), 30, "late outcomes")
            wait_for(lambda: queue_state(emulator)["visible"] == 0, 15, "an empty queue")
            wait_for(lambda: queue_state(emulator)["invisible"] == 0, 15, "every message deleted")
        finally:
            assert ingest.stop() == 0
        jobs = {job["job_id"]: job for job in emulator_jobs(emulator)}

    job_ids = early + late
    assert Counter(e["job_id"] for e in envelopes()) == dict.fromkeys(job_ids, 1)
    assert all(e["source"] == "mns" and e["submission"] is not None for e in envelopes())
    assert [e["submission"]["tags"]["n"] for e in envelopes() if e["job_id"] == late[0]] == ["6"]
    written_twice = [job_id for job_id in job_ids if jobs[job_id]["deliveries"] == 2]
    assert written_twice, "the seed writes some events twice"
    replayed = run("replay", env=env)
    assert Counter(json.loads(line)["job_id"] for line in replayed.stdout.splitlines()) == (
        dict.fromkeys(job_ids, 1)
    )


def test_serve_ingests_the_queue_beside_its_http_endpoint(redis_url: str) -> None:
    with (
        emulating("--mns-queue", QUEUE, "--delay", "0.2") as (emulator, _),
        serving(redis_url=redis_url, vod_endpoint=emulator, mns_endpoint=emulator, mns_queue=QUEUE),
    ):
        env = env_for(redis_url=redis_url, vod_endpoint=emulator)
        waited = run(
            "submit", "--video-id", "v1", "--template-id", "tpl", "--wait", "--json", env=env
        )
    assert waited.returncode == 0, waited.stderr
    envelope = json.loads(waited.stdout.splitlines()[-1])
    assert envelope["source"] == "mns"
    assert envelope["status"] == "success"
    assert envelope["submission"]["video_id"] == "v1"


def test_register_points_vod_at_the_queue_and_show_reads_it_back(redis_url: str) -> None:
    with emulating("--mns-queue", QUEUE) as (emulator, _):
        env = env_for(redis_url=redis_url, vod_endpoint=emulator)
        registered = run(
            "register", "--mns-endpoint", emulator, "--mns-queue", "other-queue", env=env
        )
        assert registered.returncode == 0, registered.stderr
        assert f"into MNS queue other-queue at {emulator}" in registered.stdout
        assert "VOD_WEBHOOK_MNS_QUEUE=other-queue" in registered.stdout
        shown = run("register", "--show", env=env)
    assert shown.returncode == 0, shown.stderr
    callback = json.loads(shown.stdout)
    assert callback["CallbackType"] == "MNS"
    assert callback["MnsQueueName"] == "other-queue"
    assert callback["MnsEndpoint"] == emulator


def test_register_refuses_a_mix_of_modes_and_bad_values_before_calling_vod() -> None:
    cases = {
        ("--callback-url", "https://h.example.com/cb", "--mns-queue", "q"): "one callback per",
        ("--mns-queue", "q"): "--mns-endpoint and --mns-queue together",
        ("--mns-endpoint", "ftp://x", "--mns-queue", "q"): "--mns-endpoint must be an http(s)",
        ("--mns-endpoint", "https://1.mns.cn-shanghai.aliyuncs.com", "--mns-queue", "q_1"): (
            "--mns-queue is not an MNS queue name"
        ),
    }
    for args, message in cases.items():
        refused = run("register", *args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert message in refused.stderr, (args, refused.stderr)


def test_ingest_mns_names_what_is_missing_or_refused(redis_url: str) -> None:
    unset = run("ingest-mns", env=env_for(redis_url=redis_url))
    assert unset.returncode == 2
    assert "set VOD_WEBHOOK_MNS_ENDPOINT and VOD_WEBHOOK_MNS_QUEUE" in unset.stderr

    bad = run("ingest-mns", env=env_for(redis_url=redis_url, mns_queue="q"))
    assert bad.returncode == 2
    assert "VOD_WEBHOOK_MNS_QUEUE: needs VOD_WEBHOOK_MNS_ENDPOINT" in bad.stderr

    with emulating("--mns-queue", QUEUE) as (emulator, _):
        env = env_for(redis_url=redis_url, mns_endpoint=emulator, mns_queue="no-such-queue")
        refused = run("ingest-mns", env=env)
    assert refused.returncode == 2
    assert "MNS refused" in refused.stderr
    assert "QueueNotExist" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_ingest_mns_stops_cleanly_on_sigint(redis_url: str) -> None:
    with emulating("--mns-queue", QUEUE) as (emulator, _):
        env = env_for(redis_url=redis_url, mns_endpoint=emulator, mns_queue=QUEUE)
        ingest = ingesting(env)
        assert ingest.stop(signal.SIGINT) == 0
    assert "Traceback" not in "".join(ingest.stderr)
