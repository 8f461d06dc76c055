"""What the client limits and the read API cost the callback hot path, measured with `wrk`.

Compares signed-callback throughput of one `serve` worker:
- uvicorn's plain httptools protocol vs `LimitedHttpProtocol` (header cap, read/send deadlines);
- with 0 vs N connected `GET /events` clients (each callback is fanned out to all of them).

Load comes from `wrk` (apt-get install wrk) in its own process, so the generator does not share
the server's interpreter; its CPU use is printed to show it is not the bottleneck. Variants
alternate over several rounds and the median is reported, as the machine is shared.

    python -m bench.http_limits [--seconds S] [--rounds R] [--streams N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import uvicorn

from bench import load
from bench.processes import AUTH_KEY, RedisProcess, free_port, started
from webhook.server import AppFactory, server_config
from webhook.settings import load_settings

TOKEN = "bench-token-0123456789"


def serve_variant() -> None:
    """Child process: one worker on --port, with the limited or the plain protocol."""
    variant, port = sys.argv[2], int(sys.argv[3])
    settings = load_settings()
    config = server_config(settings, host="127.0.0.1", port=port, workers=1)
    if variant == "plain":
        config = uvicorn.Config(
            AppFactory(settings),
            factory=True,
            host="127.0.0.1",
            port=port,
            http="httptools",
            log_config=None,
            access_log=False,
            lifespan="on",
        )
    uvicorn.Server(config).run()


@contextmanager
def receiver(variant: str, redis_url: str, api: bool) -> Iterator[tuple[str, int]]:
    """One worker with the `variant` protocol: its base URL and pid."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOD_WEBHOOK_")}
    env |= {
        "VOD_WEBHOOK_REDIS_URL": redis_url,
        "VOD_WEBHOOK_AUTH_KEYS": AUTH_KEY,
        "VOD_WEBHOOK_CALLBACK_URL": f"{base}/callbacks/vod",
        "VOD_WEBHOOK_LOG_LEVEL": "warning",
    }
    if api:
        env["VOD_WEBHOOK_API_TOKEN"] = TOKEN
        env["VOD_WEBHOOK_MAX_EVENT_STREAMS"] = "10000"  # the cost of every stream is measured
    command = [sys.executable, "-m", "bench.http_limits", "--serve", variant, str(port)]
    with started(command, f"{base}/healthz", env) as process:
        yield base, process.pid


async def hold_streams(base: str, count: int, ready: Path) -> None:
    """`count` /events clients that read (and drop) everything, until killed."""
    host, port = base.removeprefix("http://").split(":")
    request = f"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    received = [0]

    writers = []  # kept: a collected StreamWriter closes its connection

    async def connect() -> asyncio.StreamReader:
        reader, writer = await asyncio.open_connection(host, int(port))
        writers.append(writer)
        writer.write(request.encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"/events answered {head[:40]!r}")
        return reader

    async def drain(reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(65536):
            received[0] += len(chunk)

    async def report() -> None:
        while True:  # until killed: how much the streams got, for the bench to check
            await asyncio.to_thread(ready.write_text, str(received[0]))
            await asyncio.sleep(0.2)

    readers = await asyncio.gather(*(connect() for _ in range(count)))
    await asyncio.gather(report(), *(drain(reader) for reader in readers))


@contextmanager
def streams(base: str, count: int) -> Iterator[Callable[[], int]]:
    """`count` reading /events clients in another process; yields a function telling how many
    bytes they have received so far."""
    if count == 0:
        yield lambda: 0
        return
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready"
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.http_limits", "--hold", base, str(count), str(ready)]
        )
        try:
            deadline = time.monotonic() + 30
            while not ready.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the /events clients did not connect")
                time.sleep(0.1)
            yield lambda: int(ready.read_text() or 0)
        finally:
            process.terminate()
            process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args()
    if not load.wrk_available():
        raise SystemExit("wrk is not installed: apt-get install wrk")

    variants = [
        ("plain httptools", "plain", 0),
        ("limited", "limited", 0),
        (f"limited, {args.streams} /events clients", "limited", args.streams),
    ]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in variants}
    with tempfile.TemporaryDirectory() as folder, RedisProcess(Path(folder), aof=False) as store:
        for _ in range(args.rounds):
            for name, variant, count in variants:
                with (
                    receiver(variant, store.url, api=count > 0) as (base, pid),
                    streams(base, count) as delivered,
                ):
                    before = delivered()
                    url = f"{base}/callbacks/vod"
                    figures = load.wrk_round(
                        url, AUTH_KEY, seconds=args.seconds, connections=32, server_pid=pid
                    )
                    time.sleep(0.5)  # the last report of the stream clients
                    row = asdict(figures) | {"streamed_mb": (delivered() - before) / 2**20}
                    results[name].append(row)
                print(name, row, file=sys.stderr)

    print(
        f"signed DynamicImageComplete callbacks, wrk -t1 -c32, {args.seconds} s x "
        f"{args.rounds} rounds, medians"
    )
    # CPU per callback is the steadier figure on a shared machine: a busy neighbour lowers
    # req/s, not (much) the server's CPU time per request.
    print(
        f"{'':36} {'per s':>8} {'server CPU':>11} {'CPU us/req':>11} {'wrk CPU':>8} "
        f"{'streamed MB':>12}"
    )
    medians = {}
    for name, runs in results.items():
        medians[name] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        m = medians[name]
        print(
            f"{name:36} {m['per_s']:8.0f} {m['server_cpu']:10.0%} {m['server_cpu_us']:11.0f} "
            f"{m['generator_cpu']:8.0%} {m['streamed_mb']:12.1f}"
        )
    plain, limited = medians["plain httptools"], medians["limited"]
    streamed = medians[variants[2][0]]
    print(
        f"limited / plain: throughput {limited['per_s'] / plain['per_s']:.3f}, "
        f"CPU per callback {limited['server_cpu_us'] / plain['server_cpu_us']:.3f}"
    )
    print(
        f"with {args.streams} /events clients / without: throughput "
        f"{streamed['per_s'] / limited['per_s']:.3f}, "
        f"CPU per callback {streamed['server_cpu_us'] / limited['server_cpu_us']:.3f}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve_variant()
    elif len(sys.argv) > 1 and sys.argv[1] == "--hold":
        asyncio.run(hold_streams(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])))
    else:
        main()
