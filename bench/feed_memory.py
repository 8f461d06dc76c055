"""What `/events` clients that stopped reading cost the receiver's memory while large envelopes
arrive: RSS of one `serve` worker before and at its peak.

N clients open `GET /events`, read the response headers and then nothing (a 4 KiB receive
buffer), so everything sent to them piles up in the server. Envelopes of `--kib` KiB are then
added to the stream in rounds, with the send deadline far away: only the per-connection queue
limits (`SSE_QUEUE_SIZE`, `SSE_QUEUE_BYTES`) bound what the server holds. Growth per stream is
the figure to watch: with queues bounded in bytes and envelopes shared between connections it
stays around a write (256 KiB) or two, whatever the envelopes add up to.

    python -m bench.feed_memory [--streams N] [--envelopes E] [--kib K]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis

from bench.hot_path import KEY, free_port, redis_server, wait_until_up

TOKEN = "bench-token-0123456789"


@contextmanager
def receiver(redis_url: str, streams: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOD_WEBHOOK_")}
    env |= {
        "VOD_WEBHOOK_REDIS_URL": redis_url,
        "VOD_WEBHOOK_AUTH_KEYS": KEY,
        "VOD_WEBHOOK_CALLBACK_URL": f"{base}/callbacks/vod",
        "VOD_WEBHOOK_LOG_LEVEL": "warning",
        "VOD_WEBHOOK_API_TOKEN": TOKEN,
        "VOD_WEBHOOK_MAX_EVENT_STREAMS": str(streams),
        "VOD_WEBHOOK_SEND_TIMEOUT_SECONDS": "300",  # only the queues may cut clients off
    }
    command = str(Path(sys.executable).parent / "vod-webhook")
    process = subprocess.Popen(
        [command, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_up(f"{base}/healthz", process)
        yield base, process
    finally:
        process.terminate()
        process.wait(30)


def stalled_stream(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    request = f"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    sock.sendall(request.encode())
    if not sock.recv(12).startswith(b"HTTP/1.1 200"):
        raise SystemExit("/events refused a stream")
    return sock


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--envelopes", type=int, default=400)
    parser.add_argument("--kib", type=int, default=64, help="size of each envelope")
    args = parser.parse_args()
    envelope = json.dumps({"id": "", "padding": "x" * (args.kib * 1024)})
    with redis_server() as url, receiver(url, args.streams) as (base, process), ExitStack() as s:
        for _ in range(args.streams):
            s.callback(stalled_stream(base).close)
        client = redis.Redis.from_url(url)
        s.callback(client.close)
        before = peak = rss_mib(process.pid)
        added = 0
        while added < args.envelopes:  # rounds of 20, as a burst of callbacks would come
            for _ in range(min(20, args.envelopes - added)):
                client.xadd("vod:stream", {"envelope": envelope})
                added += 1
            time.sleep(0.05)  # a bench: let the receiver take each round on its own
            peak = max(peak, rss_mib(process.pid))
        for _ in range(40):  # two seconds more for the last rounds to be handed out
            time.sleep(0.05)
            peak = max(peak, rss_mib(process.pid))
        total = args.envelopes * args.kib / 1024
        print(
            f"{args.streams} stalled streams, {args.envelopes} envelopes x {args.kib} KiB "
            f"({total:.0f} MiB): RSS {before:.0f} -> peak {peak:.0f} MiB, "
            f"+{peak - before:.0f} MiB, {(peak - before) / args.streams * 1024:.0f} KiB per stream"
        )


if __name__ == "__main__":
    main()
