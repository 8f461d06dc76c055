"""`make bench`: the callback hot path of `vod-webhook serve`, against baselines from the same
run, with load from `wrk` in another process (bench/load.py).

Servers, each its own process on the uvicorn settings of `serve` (bench/apps.py):
bare Starlette (HTTP alone), one EVALSHA of record_event per callback (the ceiling of a
receiver that records each callback), the receiver on Redis at the default log level with 1
and with 2 workers. Rounds run interleaved (bare, EVALSHA, receiver, receiver x2, bare, ...)
on a Redis flushed before each; the table shows medians. Every callback is a new job (the
full path: verify, parse, dedup, record, publish, log). Then, on the 1-worker receiver:
callback → subscriber latency at a constant 1,000 callbacks/s, Redis memory per record, RSS.

Targets of issue 8 are printed beside the figures; a missed one does not fail the command (it
is a measurement), a broken setup (errors, non-2xx answers, a server down) does.

    python -m bench.receiver [--seconds S] [--rounds R] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from bench import load
from bench.processes import (
    AUTH_KEY,
    Receiver,
    RedisProcess,
    SetupError,
    free_port,
    poll,
    process_tree,
    rss_bytes,
    started,
)
from webhook.sender import sample_dynamic_image_event, signed_headers
from webhook.settings import Settings
from webhook.signature import sign
from webhook.store import Store
from webhook.submitter import JobSpec

CONNECTIONS = 32
RATE = 1000  # callbacks/s for the subscriber latency
SAMPLE = 200  # keys whose MEMORY USAGE is taken
NAMES = {
    "bare": "bare Starlette",
    "evalsha": "one EVALSHA",
    "receiver": "receiver",
    "receiver_2": "receiver, 2 workers",
}


@contextmanager
def app(name: str, redis_url: str) -> Iterator[tuple[str, int]]:
    """A baseline of bench/apps.py: its callback URL and pid."""
    port = free_port()
    command = [sys.executable, "-m", "bench.apps", name, str(port), redis_url]
    with started(command, f"http://127.0.0.1:{port}/healthz", dict(os.environ)) as process:
        yield f"http://127.0.0.1:{port}/callbacks/vod", process.pid


@contextmanager
def receiver(
    redis_url: str, log: Path, workers: int, partitions: int = 1
) -> Iterator[tuple[str, int]]:
    """`vod-webhook serve` once every worker has opened the store: its callback URL and pid."""
    # LOG_LEVEL=info is the default: one JSON line per callback, as in production.
    with Receiver(
        redis_url, log, workers=workers, log_level="info", partitions=str(partitions)
    ) as server:
        assert server.process is not None
        poll(lambda: server.stores_opened() >= workers, f"{workers} workers to open the store")
        yield server.callback_url, server.process.pid
        if server.tracebacks():
            raise SetupError(f"the receiver logged tracebacks; see {log}")


def workers_of(supervisor: int) -> list[int]:
    """The worker processes of a `--workers` supervisor (not multiprocessing's tracker)."""
    return [
        pid
        for pid in process_tree(supervisor)[1:]
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def median(rounds: list[load.Round]) -> dict[str, float]:
    figures = [asdict(r) for r in rounds]
    return {key: statistics.median(f[key] for f in figures) for key in figures[0]}


def post_events(callback_url: str, count: int) -> None:
    """Non-job events (each leaves a dedup marker), posted one by one."""
    now = int(datetime.now(UTC).timestamp())
    headers = {"X-VOD-TIMESTAMP": str(now), "X-VOD-SIGNATURE": sign(callback_url, now, AUTH_KEY)}
    with httpx.Client(headers=headers, timeout=5) as client:
        for n in range(count):
            body = {
                "EventTime": "2026-01-01T00:00:00Z",
                "EventType": "FileUploadComplete",
                "VideoId": f"bench-video-{n:06d}",
                "Status": "success",
                "Size": 1048576,
            }
            answer = client.post(callback_url, json=body)
            if answer.status_code != 200:
                raise SetupError(f"a FileUploadComplete got {answer.status_code}: {answer.text}")


def memory_usage(client: redis.Redis, pattern: str) -> float:
    """Median MEMORY USAGE of up to SAMPLE keys matching `pattern`."""
    keys = list(itertools.islice(client.scan_iter(pattern, count=1000), SAMPLE))
    if not keys:
        raise SetupError(f"no key matches {pattern}")
    return statistics.median(int(client.memory_usage(key, samples=0) or 0) for key in keys)


def envelope_length(client: redis.Redis, job_ids: list[str]) -> float:
    """Median length of a finished job's stored envelope, which decides most of its record's
    memory (rounded up to the allocator's size class: 1,025-1,280 bytes take 1,280)."""
    return statistics.median(client.strlen(f"vod:job:{job_id}:envelope") for job_id in job_ids)


def job_record_usage(client: redis.Redis, job_ids: list[str]) -> float:
    """Median MEMORY USAGE of a finished job's record: its hash and the keys beside it (its
    envelope, and a submission not yet carried by an envelope)."""
    parts = ("", ":envelope", ":submission")
    return statistics.median(
        sum(int(client.memory_usage(f"vod:job:{job_id}{part}", samples=0) or 0) for part in parts)
        for job_id in job_ids
    )


def subscriber_latency(callback_url: str, redis: RedisProcess, seconds: float) -> dict[str, Any]:
    """Paced callbacks at RATE/s while a subscriber process listens on `vod:events`."""
    count = int(RATE * seconds)
    listener = subprocess.Popen(
        [sys.executable, "-m", "bench.subscriber", redis.url, "vod:events", str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert listener.stdout is not None
    processes = [listener]
    try:
        if listener.stdout.readline().strip() != "subscribed":
            raise SetupError("the subscriber did not subscribe")
        processes.append(load.paced(callback_url, AUTH_KEY, rate=RATE, seconds=seconds))
        sent = json.loads(processes[1].communicate(timeout=seconds + 60)[0])
        received = json.loads(listener.communicate(timeout=60)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)
    if sent["errors"] or sent["non_2xx"]:
        raise SetupError(f"paced callbacks failed: {sent}")
    return {
        "rate": RATE,
        "sent": sent["requests"],
        "received": received["received"],
        "p50_ms": received["p50_ms"],
        "p99_ms": received["p99_ms"],
        "due_p50_ms": received["due_p50_ms"],
        "due_p99_ms": received["due_p99_ms"],
        "answer_p50_ms": sent["p50_us"] / 1000,
        "answer_p99_ms": sent["p99_us"] / 1000,
    }


def finished_jobs(redis_url: str, callback_url: str, *, submitted: bool) -> list[str]:
    """SAMPLE jobs finished by their callbacks; `submitted`: recorded first through the library
    as `vod-webhook submit` does. JobIds are 32 hex digits, as VOD's."""
    job_ids = [uuid.uuid4().hex for _ in range(SAMPLE)]
    spec = JobSpec(video_id="send-test-video", template_id=uuid.uuid4().hex)

    async def record() -> None:
        store = Store.from_settings(Settings(_env_file=None, redis_url=redis_url))
        try:
            for job_id in job_ids:
                # VOD's RequestId is an upper-case UUID.
                now = datetime.now(UTC)
                submission = spec.submission(str(uuid.uuid4()).upper(), now)
                await store.record_submission(job_id, spec.video_id, submission, now)
        finally:
            await store.close()

    if submitted:
        asyncio.run(record())
    with httpx.Client(timeout=5) as client:
        for job_id in job_ids:
            headers = signed_headers(callback_url, AUTH_KEY)
            answer = client.post(
                callback_url, json=sample_dynamic_image_event(job_id), headers=headers
            )
            if answer.status_code != 200:
                raise SetupError(f"a callback got {answer.status_code}: {answer.text}")
    return job_ids


def redis_memory(client: redis.Redis, redis_url: str, callback_url: str) -> dict[str, float]:
    client.flushall()
    post_events(callback_url, SAMPLE)
    callback_only = finished_jobs(redis_url, callback_url, submitted=False)
    submitted = finished_jobs(redis_url, callback_url, submitted=True)
    stream_bytes = int(client.memory_usage("vod:stream", samples=0) or 0)
    return {
        "job_record_bytes": job_record_usage(client, callback_only),
        "submitted_job_record_bytes": job_record_usage(client, submitted),
        "envelope_bytes": envelope_length(client, callback_only),
        "submitted_envelope_bytes": envelope_length(client, submitted),
        "dedup_marker_bytes": memory_usage(client, "vod:seen:*"),
        "stream_entry_bytes": stream_bytes / max(1, client.xlen("vod:stream")),
    }


def measure(seconds: float, rounds: int, folder: Path) -> dict[str, Any]:
    load_round, generator = load.generator()
    with RedisProcess(folder, aof=False) as store, ExitStack() as stack:
        assert store.process is not None
        client = store.client()
        stack.callback(client.close)
        servers = {
            "bare": stack.enter_context(app("bare", store.url)),
            "evalsha": stack.enter_context(app("evalsha", store.url)),
            "receiver": stack.enter_context(receiver(store.url, folder / "receiver-1.log", 1)),
            "receiver_2": stack.enter_context(receiver(store.url, folder / "receiver-2.log", 2)),
        }
        results: dict[str, list[load.Round]] = {name: [] for name in servers}
        for n in range(rounds + 1):  # the first round warms up and is not counted
            for name, (url, pid) in servers.items():
                client.flushall()
                figures = load_round(url, AUTH_KEY, seconds=1 if n == 0 else seconds,
                                     connections=CONNECTIONS, server_pid=pid,
                                     redis_pid=store.process.pid)  # fmt: skip
                if n:
                    results[name].append(figures)
                    print(f"round {n} {NAMES[name]}: {figures}", file=sys.stderr)
        one, two = servers["receiver"][1], servers["receiver_2"][1]
        rss = {
            "receiver_mib": rss_bytes(one) / 2**20,
            "receiver_2_mib": [rss_bytes(pid) / 2**20 for pid in workers_of(two)],
            "receiver_2_supervisor_mib": rss_bytes(two) / 2**20,
        }
        client.flushall()
        latency = subscriber_latency(servers["receiver"][0], store, seconds)
        memory = redis_memory(client, store.url, servers["receiver"][0])
    medians = {name: median(runs) for name, runs in results.items()}
    paired = list(zip(results["receiver"], results["bare"], results["evalsha"], strict=True))
    return {
        "generator": generator,
        "rounds": {name: [asdict(r) for r in runs] for name, runs in results.items()},
        "medians": medians,
        # Ratios per round (the rounds next to each other ran under the same neighbours' load).
        "ratios": {
            "receiver/bare": statistics.median(r.per_s / b.per_s for r, b, _ in paired),
            "receiver/evalsha": statistics.median(r.per_s / e.per_s for r, _, e in paired),
            "receiver_2/receiver": medians["receiver_2"]["per_s"] / medians["receiver"]["per_s"],
            # The throughput ratio were each server given a whole core: steadier when a busy
            # box starves one of them (server CPU under ~95 %).
            "receiver/bare by CPU": statistics.median(
                b.server_cpu_us / r.server_cpu_us for r, b, _ in paired
            ),
        },
        "subscriber": latency,
        "redis_memory": memory,
        "rss": rss,
    }


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 8's targets beside what was measured."""
    rows = [
        ("receiver / bare req/s, 1 worker", ">=", 0.30, report["ratios"]["receiver/bare"]),
        ("  the same by CPU us per request", ">=", 0.30, report["ratios"]["receiver/bare by CPU"]),
        ("p99 at 32 connections, ms", "<=", 10.0, report["medians"]["receiver"]["p99_ms"]),
        ("callback → subscriber p99 at 1,000/s, ms", "<=", 5.0, report["subscriber"]["p99_ms"]),
        ("Redis bytes per job record", "<=", 1536, report["redis_memory"]["job_record_bytes"]),
        ("Redis bytes per dedup marker", "<=", 150, report["redis_memory"]["dedup_marker_bytes"]),
    ]
    return [
        {
            "target": name,
            "limit": f"{sign_} {limit:g}",
            "measured": value,
            "met": value >= limit if sign_ == ">=" else value <= limit,
        }
        for name, sign_, limit, value in rows
    ]


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\nvod-webhook bench, {report['date']}: {report['generator']} -c{CONNECTIONS}, "
        f"{report['seconds']:g} s x {report['rounds_run']} rounds interleaved, medians; "
        f"{report['cores']} cores, load average {report['load_average']} at the start"
    )
    header = (
        f"{'server':22} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} "
        f"{'server CPU':>10} {'Redis us/req':>12} {'load gen CPU':>12}"
    )
    print(header)
    for name, m in report["medians"].items():
        print(
            f"{NAMES[name]:22} {m['per_s']:7.0f} {m['p50_ms']:7.2f} {m['p99_ms']:7.2f} "
            f"{m['server_cpu_us']:10.0f} {m['server_cpu']:10.0%} {m['redis_cpu_us']:12.0f} "
            f"{m['generator_cpu']:12.0%}"
        )
    r = report["ratios"]
    print(
        f"receiver / bare {r['receiver/bare']:.2f}x, receiver / one EVALSHA "
        f"{r['receiver/evalsha']:.2f}x, 2 workers / 1 {r['receiver_2/receiver']:.2f}x; "
        f"by CPU per request, receiver / bare {r['receiver/bare by CPU']:.2f}x"
    )
    s = report["subscriber"]
    print(
        f"callback → subscriber at {s['rate']}/s: p50 {s['p50_ms']:.2f} ms, p99 "
        f"{s['p99_ms']:.2f} ms ({s['received']} of {s['sent']} received); from when each "
        f"was due (the sender's lateness too) p50 {s['due_p50_ms']:.2f} ms, p99 "
        f"{s['due_p99_ms']:.2f} ms; answers p50 {s['answer_p50_ms']:.2f} ms, p99 "
        f"{s['answer_p99_ms']:.2f} ms"
    )
    if s["answer_p50_ms"] > 100:
        print(f"  (the receiver did not keep up with {s['rate']}/s here: that latency is queueing)")
    mem, rss = report["redis_memory"], report["rss"]
    print(
        f"Redis MEMORY USAGE: job record {mem['job_record_bytes']:.0f} B, envelope "
        f"{mem['envelope_bytes']:.0f} B long (with its submission "
        f"{mem['submitted_job_record_bytes']:.0f} B, envelope "
        f"{mem['submitted_envelope_bytes']:.0f} B), dedup marker "
        f"{mem['dedup_marker_bytes']:.0f} B, stream entry {mem['stream_entry_bytes']:.0f} B"
    )
    workers = ", ".join(f"{mib:.0f}" for mib in rss["receiver_2_mib"])
    print(
        f"RSS per worker: 1 worker {rss['receiver_mib']:.0f} MiB; 2 workers {workers} MiB "
        f"(+ supervisor {rss['receiver_2_supervisor_mib']:.0f} MiB)"
    )
    print(f"\n{'target (issue 8)':42} {'limit':>8} {'measured':>9}")
    for row in report["targets"]:
        met = "met" if row["met"] else "not met"
        print(f"{row['target']:42} {row['limit']:>8} {row['measured']:9.2f}  {met}")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def arguments(doc: str, json_default: str) -> argparse.Namespace:
    """The options of the wrk benches (`--seconds`, `--rounds`, `--json`); warns without wrk."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per round (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="default 3")
    parser.add_argument("--json", type=Path, default=Path(json_default))
    args = parser.parse_args()
    if not load.wrk_available():
        print(
            "wrk not found (make bench installs it with apt-get): load comes from a Python "
            "generator, far slower than wrk, which may then be the bottleneck",
            file=sys.stderr,
        )
    return args


def main() -> None:
    args = arguments(__doc__, ".bench/report.json")
    started_at = datetime.now(UTC)
    at_start = load_average()
    try:
        with tempfile.TemporaryDirectory() as folder:
            report = measure(args.seconds, args.rounds, Path(folder))
    except SetupError as exc:
        raise SystemExit(f"bench: the setup broke, no figures: {exc}") from None
    report |= {
        "date": started_at.isoformat(timespec="seconds"),
        "seconds": args.seconds,
        "rounds_run": args.rounds,
        "cores": os.cpu_count(),
        "load_average": at_start,
        "load_average_end": load_average(),
    }
    report["targets"] = targets(report)
    print_report(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
