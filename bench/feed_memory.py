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
import socket
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import redis

from bench.processes import Receiver, RedisProcess, rss_bytes

TOKEN = "bench-token-0123456789"


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
    return rss_bytes(pid) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--envelopes", type=int, default=400)
    parser.add_argument("--kib", type=int, default=64, help="size of each envelope")
    args = parser.parse_args()
    envelope = json.dumps({"id": "", "padding": "x" * (args.kib * 1024)})
    with ExitStack() as s:
        work = Path(s.enter_context(tempfile.TemporaryDirectory()))
        redis_process = s.enter_context(RedisProcess(work, aof=False))
        receiver = Receiver(
            redis_process.url,
            work / "receiver.log",
            api_token=TOKEN,
            max_event_streams=str(args.streams),
            send_timeout_seconds="300",  # only the queues may cut clients off
        )
        s.enter_context(receiver)
        assert receiver.process is not None
        process = receiver.process
        base = receiver.base
        for _ in range(args.streams):
            s.callback(stalled_stream(base).close)
        client = redis.Redis.from_url(redis_process.url)
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
