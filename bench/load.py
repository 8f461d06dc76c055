"""Load for the benchmarks, always from a process other than the server's: signed
DynamicImageComplete callbacks shaped like VOD's, each a new JobId, so every one is accepted,
recorded and published (the full hot path; a duplicate stops at the dedup check).

- `wrk_round`: `wrk` with a Lua script written here. VOD signs the callback URL and the
  timestamp in seconds, not the body, and wrk's Lua has no md5: the signature of every second
  of the run is computed here and the script picks the current one for each request.
- `python_round`: the fallback when wrk is missing, a closed loop of raw HTTP/1.1 requests from
  `python -m bench.load` (much slower than wrk: bare's rate is then the generator's).
- `paced`: a constant rate (what wrk2 does; Debian has no wrk2), each request's latency taken
  from when it was due, so a stall is not hidden by the requests it held back.

The server's CPU time is read from /proc for its whole process tree (workers included) and the
generator's from its rusage, so a round shows whether the generator was the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import uvloop

from bench.processes import SetupError, cpu_seconds, process_tree
from webhook.sender import sample_dynamic_image_event
from webhook.signature import sign

PLACEHOLDER = "JOBIDPLACEHOLDER"

LUA = """
local counter, threads = 0, 0
local headers = {["Content-Type"] = "application/json"}

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

function request()
  counter = counter + 1
  local now = os.time()
  headers["X-VOD-TIMESTAMP"] = tostring(now)
  -- Outside the signed seconds the signature is malformed on purpose: wrk counts the 401s.
  headers["X-VOD-SIGNATURE"] = SIGNATURES[now] or "unsigned"
  local id = RUN .. "-" .. tostring(thread_id or 0) .. "-" .. tostring(counter)
  return wrk.format("POST", PATH, headers, table.concat(PARTS, id))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"errors":%d,"non_2xx":%d,"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Round:
    """One measured stretch of load against one server."""

    requests: int
    per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu: float  # share of one core, the server's whole process tree
    server_cpu_us: float  # per request
    generator_cpu: float  # share of one core
    redis_cpu_us: float = 0.0  # per request, when a redis-server pid is given


def body_parts() -> list[str]:
    """A callback body split where its JobId goes (outer JobId, job info's JobId, FileURL)."""
    return json.dumps(sample_dynamic_image_event(PLACEHOLDER)).split(PLACEHOLDER)


def signatures(callback_url: str, auth_key: str, seconds: float) -> dict[int, str]:
    now = int(time.time())
    return {t: sign(callback_url, t, auth_key) for t in range(now - 5, now + int(seconds) + 120)}


def lua_script(callback_url: str, auth_key: str, seconds: float) -> str:
    table = ", ".join(
        f'[{t}] = "{s}"' for t, s in signatures(callback_url, auth_key, seconds).items()
    )
    parts = ", ".join(json.dumps(part) for part in body_parts())  # JSON strings are Lua strings
    return (
        f"SIGNATURES = {{{table}}}\nPARTS = {{{parts}}}\n"
        f'PATH = "{urlsplit(callback_url).path}"\nRUN = "{uuid.uuid4().hex[:12]}"\n{LUA}'
    )


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def generator() -> tuple[Callable[..., Round], str]:
    """What runs a round of load, and its name: wrk, else the slower Python generator."""
    if wrk_available():
        return wrk_round, "wrk -t1"
    return python_round, "python (wrk not found)"


def _measured(
    command: list[str], server_pid: int, redis_pid: int | None
) -> tuple[str, float, float, float]:
    """Run the generator to its end: its output, and the CPU seconds of the generator, of the
    server's process tree and of Redis while it ran."""
    tree = process_tree(server_pid)
    server_before = cpu_seconds(tree)
    redis_before = cpu_seconds([redis_pid]) if redis_pid else 0.0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server = cpu_seconds(tree) - server_before
    redis_cpu = cpu_seconds([redis_pid]) - redis_before if redis_pid else 0.0
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-2000:]
        raise SetupError(f"{command[0]} failed ({done.returncode}):\n{output}")
    generator = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    return done.stdout, generator, server, redis_cpu


def _round(figures: dict[str, float], cpu: tuple[float, float, float], what: str) -> Round:
    if figures["errors"] or figures["non_2xx"] or not figures["requests"]:
        raise SetupError(
            f"{what}: {figures['requests']:.0f} requests, {figures['non_2xx']:.0f} answered "
            f"other than 2xx, {figures['errors']:.0f} socket errors or timeouts"
        )
    seconds = figures["duration_us"] / 1e6
    generator, server, redis_cpu = cpu
    return Round(
        requests=int(figures["requests"]),
        per_s=figures["requests"] / seconds,
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        server_cpu=server / seconds,
        server_cpu_us=server / figures["requests"] * 1e6,
        generator_cpu=generator / seconds,
        redis_cpu_us=redis_cpu / figures["requests"] * 1e6,
    )


def wrk_round(
    callback_url: str,
    auth_key: str,
    *,
    seconds: float,
    connections: int,
    server_pid: int,
    redis_pid: int | None = None,
) -> Round:
    base = callback_url.split("/", 3)[:3]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(lua_script(callback_url, auth_key, seconds))
        script.flush()
        command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "-s", script.name,
                   "/".join(base)]  # fmt: skip
        output, *cpu = _measured(command, server_pid, redis_pid)
    line = next((x for x in output.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise SetupError(f"no figures in wrk's output:\n{output}")
    return _round(json.loads(line.removeprefix("BENCH ")), (cpu[0], cpu[1], cpu[2]), "wrk")


def python_round(
    callback_url: str,
    auth_key: str,
    *,
    seconds: float,
    connections: int,
    server_pid: int,
    redis_pid: int | None = None,
) -> Round:
    command = [sys.executable, "-m", "bench.load", callback_url, auth_key,
               "--seconds", str(seconds), "--connections", str(connections)]  # fmt: skip
    output, *cpu = _measured(command, server_pid, redis_pid)
    return _round(json.loads(output), (cpu[0], cpu[1], cpu[2]), "python generator")


def paced(callback_url: str, auth_key: str, *, rate: int, seconds: float) -> subprocess.Popen[str]:
    """Start sending `rate` callbacks/s for `seconds` in another process; its stdout ends with
    one JSON line of figures (see `send`). JobIds carry when each request was due and when it
    was sent (µs): the sender's own lateness, on a busy box, is told apart."""
    command = [sys.executable, "-m", "bench.load", callback_url, auth_key,
               "--seconds", str(seconds), "--connections", "16", "--rate", str(rate)]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def due_and_sent(job_id: str) -> tuple[float, float]:
    """When a paced request was due and when it was sent, as Unix time, from its JobId."""
    due, sent = job_id.rsplit("-", 2)[1:]
    return int(due) / 1e6, int(sent) / 1e6


async def send(
    callback_url: str, auth_key: str, *, seconds: float, connections: int, rate: float
) -> dict[str, float]:
    """Callbacks over `connections` keep-alive connections, as fast as answered (rate 0) or
    `rate` a second. Latency runs from sending (rate 0) or from when the request was due."""
    url = urlsplit(callback_url)
    parts = body_parts()
    run = uuid.uuid4().hex[:12]
    signed: dict[int, str] = {}
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0, "non_2xx": 0}
    loop = asyncio.get_running_loop()
    start, wall_start = loop.time() + 0.1, time.time() + 0.1
    total = int(rate * seconds) if rate else None
    turn = iter(range(total if total is not None else 10**12))

    def request(job_id: str) -> bytes:
        now = int(time.time())
        signature = signed.get(now) or signed.setdefault(now, sign(callback_url, now, auth_key))
        body = job_id.join(parts).encode()
        head = (
            f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
            f"X-VOD-TIMESTAMP: {now}\r\nX-VOD-SIGNATURE: {signature}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        try:
            for i in turn:
                if rate:
                    due = start + i / rate
                    await asyncio.sleep(max(0.0, due - loop.time()))
                    due_us, sent_us = int((wall_start + i / rate) * 1e6), int(time.time() * 1e6)
                    job_id = f"{run}-{i}-{due_us}-{sent_us}"
                else:
                    if loop.time() > start + seconds:
                        return
                    due = loop.time()
                    job_id = f"{run}-{i}"
                writer.write(request(job_id))
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                latencies.append(loop.time() - due)
                counts["requests"] += 1
                counts["non_2xx"] += not head.startswith(b"HTTP/1.1 2")
        except (OSError, asyncio.IncompleteReadError):
            counts["errors"] += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = loop.time() - start
    latencies.sort()
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] if latencies else 0.0
    return {
        **counts,
        "duration_us": elapsed * 1e6,
        "p50_us": statistics.median(latencies) * 1e6 if latencies else 0.0,
        "p99_us": p99 * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Send signed callbacks (see bench/load.py).")
    parser.add_argument("callback_url")
    parser.add_argument("auth_key")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0, help="callbacks/s; 0: as fast as answered")
    args = parser.parse_args()
    figures = uvloop.run(
        send(args.callback_url, args.auth_key, seconds=args.seconds,
             connections=args.connections, rate=args.rate)
    )  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
