"""Submission rate: several `vod-webhook submit --from-file` processes share one 30 QPS quota
against the emulator (which enforces 30 QPS per AccessKey like VOD).

Prints the rate achieved (net of process start-up, measured in the same run with a one-job
file) as a share of the quota, and how many calls VOD throttled (the goal is none).

    python -m bench.submit_rate [--processes N] [--jobs-each M]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.processes import RedisProcess, free_port, started

BIN = Path(sys.executable).parent

ACCESS = ("BenchKeyId", "BenchSecret")
QPS = 30


def run_batches(files: list[Path], env: dict[str, str]) -> tuple[float, int]:
    """Seconds until every file is submitted, and how many calls were throttled."""
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [str(BIN / "vod-webhook"), "submit", "--from-file", str(path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in files
    ]
    throttled = 0
    for process in processes:
        _, err = process.communicate(timeout=600)
        if process.returncode != 0:
            raise SystemExit(f"submit failed:\n{err}")
        for line in err.splitlines():
            if line.startswith("{") and '"vod_call_retried"' in line:
                throttled += json.loads(line).get("code") == "Throttling.User"
    return time.perf_counter() - started, throttled


def write_jobs(folder: Path, name: str, count: int) -> Path:
    path = folder / f"{name}.jsonl"
    lines = (json.dumps({"video_id": f"{name}-{n}", "template_id": "bench"}) for n in range(count))
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--jobs-each", type=int, default=100)
    args = parser.parse_args()

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOD_WEBHOOK_")}
    env |= {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": ACCESS[0],
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ACCESS[1],
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
        "VOD_WEBHOOK_VOD_ENDPOINT": f"http://127.0.0.1:{port}",
        "VOD_WEBHOOK_SUBMIT_QPS": str(QPS),
        "VOD_WEBHOOK_LOG_FORMAT": "json",
    }
    emulator = [str(BIN / "vod-webhook"), "emulator", "--port", str(port), "--qps", str(QPS),
                "--access-key", ":".join(ACCESS), "--delay", "600"]  # fmt: skip
    with (
        tempfile.TemporaryDirectory() as folder,
        RedisProcess(Path(folder), aof=False) as store,
        started(emulator, f"http://127.0.0.1:{port}/_emulator/state", env),
    ):
        env["VOD_WEBHOOK_REDIS_URL"] = store.url
        start_up, _ = run_batches([write_jobs(Path(folder), "warm", 1)], env)
        files = [write_jobs(Path(folder), f"p{n}", args.jobs_each) for n in range(args.processes)]
        elapsed, throttled = run_batches(files, env)

    total = args.processes * args.jobs_each
    rate = total / (elapsed - start_up)
    print(f"{total} jobs from {args.processes} processes sharing a {QPS} QPS quota")
    print(f"start-up of one submit process (baseline): {start_up:.2f} s")
    print(f"batch: {elapsed:.2f} s, {rate:.1f} submissions/s net of start-up")
    print(f"quota used: {rate / QPS:.1%} (the goal is at least 95 %, never over 100 %)")
    print(f"calls throttled by VOD: {throttled} (the goal is 0)")
    sys.exit(0 if throttled == 0 else 1)


if __name__ == "__main__":
    main()
