"""Callback hot path: throughput and latency of `vod-webhook serve`, against same-run baselines.

Baselines: the same uvicorn/Starlette stack answering without Redis (HTTP cost alone), and a bare
Redis PING from one client (one round trip). Also counts the Redis commands the receiver sends per
callback, which must be 1.

    python -m bench.hot_path [--requests N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis

from webhook.sender import sample_dynamic_image_event, signed_headers

KEY = "BenchAuthKey2026abcd"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


@contextmanager
def running(args: list[str], probe: str, env: dict[str, str]) -> Iterator[None]:
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(probe, process)
        yield
    finally:
        process.terminate()
        process.wait(20)


@contextmanager
def redis_server() -> Iterator[str]:
    port = free_port()
    binary = shutil.which("redis-server") or "redis-server"
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)


async def load(url: str, callback_url: str, requests: int, concurrency: int) -> dict[str, float]:
    bodies = [json.dumps(sample_dynamic_image_event()).encode() for _ in range(requests)]
    headers = signed_headers(callback_url, KEY)
    latencies: list[float] = []
    queue = iter(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:

        async def worker() -> None:
            for body in queue:
                started = time.perf_counter()
                response = await client.post(url, content=body, headers=headers)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise SystemExit(f"{url} answered {response.status_code}: {response.text}")

        await client.post(url, content=bodies[0], headers=headers)  # warm up
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def redis_ping_ms(url: str, rounds: int = 2000) -> float:
    client = redis.Redis.from_url(url)
    client.ping()
    started = time.perf_counter()
    for _ in range(rounds):
        client.ping()
    return (time.perf_counter() - started) / rounds * 1000


def commands_per_callback(url: str, redis_url: str, callback_url: str) -> dict[str, float]:
    """Redis calls per callback by command, after warm-up (EVALSHA, plus what runs inside it)."""
    client = redis.Redis.from_url(redis_url)
    headers = signed_headers(callback_url, KEY)
    httpx.post(url, content=json.dumps(sample_dynamic_image_event()).encode(), headers=headers)
    client.config_resetstat()
    count = 50
    for _ in range(count):
        body = json.dumps(sample_dynamic_image_event()).encode()
        assert httpx.post(url, content=body, headers=headers).status_code == 200
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): value["calls"] / count
        for name, value in stats.items()
        if name not in {"cmdstat_config|resetstat", "cmdstat_info"}
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("VOD_WEBHOOK_")}
    results: dict[str, dict[str, float]] = {}
    with redis_server() as redis_url:
        ping_ms = redis_ping_ms(redis_url)
        for name, extra_env in (
            ("receiver on Redis", {"VOD_WEBHOOK_REDIS_URL": redis_url}),
            ("receiver on embedded store", {"VOD_WEBHOOK_EMBEDDED_PORT": str(free_port())}),
            ("baseline: HTTP only", None),
        ):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            url = f"{base}/callbacks/vod"
            if extra_env is None:
                command = [str(BIN / "uvicorn"), "bench.baseline_app:app", "--port", str(port),
                           "--no-access-log", "--log-level", "warning"]  # fmt: skip
                probe = f"{base}/"
            else:
                command = [str(BIN / "vod-webhook"), "serve", "--port", str(port)]
                probe = f"{base}/healthz"
            process_env = {
                **env,
                "VOD_WEBHOOK_AUTH_KEYS": KEY,
                "VOD_WEBHOOK_CALLBACK_URL": url,
                "VOD_WEBHOOK_LOG_LEVEL": "warning",
                **(extra_env or {}),
            }
            with running(command, probe, process_env):
                results[name] = asyncio.run(load(url, url, args.requests, args.concurrency))
                if extra_env and "VOD_WEBHOOK_REDIS_URL" in extra_env:
                    per_callback = commands_per_callback(url, redis_url, url)

    print(f"{args.requests} signed DynamicImageComplete callbacks, {args.concurrency} concurrent")
    print(f"{'':30} {'per s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, figures in results.items():
        print(
            f"{name:30} {figures['per_s']:9.0f} {figures['p50_ms']:8.2f} {figures['p99_ms']:8.2f}"
        )
    baseline = results["baseline: HTTP only"]
    for name in ("receiver on Redis", "receiver on embedded store"):
        print(
            f"{name}: {results[name]['per_s'] / baseline['per_s']:.2f}x the throughput of "
            f"HTTP alone, p50 {results[name]['p50_ms'] / baseline['p50_ms']:.2f}x"
        )
    print(f"Redis PING round trip from one client: {ping_ms:.3f} ms")
    inner = ", ".join(f"{n} {c:.2f}" for n, c in per_callback.items() if n != "evalsha")
    print(
        f"Redis round trips per callback: EVALSHA {per_callback.get('evalsha', 0):.2f} "
        f"(the goal is 1); inside the script: {inner}"
    )


if __name__ == "__main__":
    main()
