"""Slow and hostile clients against the real `vod-webhook serve`: header cap, read and send
deadlines, memory, and shutdown with a client that stopped reading."""

from __future__ import annotations

import fcntl
import json
import signal
import socket
import struct
import termios
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import AUTH_KEY, wait_for
from tests.processes import Process, serving
from webhook.http_limits import LimitedHttpProtocol
from webhook.sender import sample_dynamic_image_event, signed_headers
from webhook.server import server_config
from webhook.settings import Settings

TOKEN = "s3cret-api-token"
OpenStream = Callable[[str], socket.socket]


def connect(base: str, rcvbuf: int | None = None) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(15)  # generous: a bound on the test, not a measurement
    sock.connect((host, int(port)))
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def read_until_reset(sock: socket.socket) -> None:
    while sock.recv(65536):
        pass


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def logged(process: Process, event: str) -> list[dict[str, object]]:
    return [line for line in process.json_logs() if line.get("event") == event]


def test_endless_header_lines_get_431_and_memory_stays_bounded(redis_url: str) -> None:
    with serving(redis_url=redis_url) as (base, process):
        pid = process.popen.pid
        for _ in range(20):  # warm up the app before the baseline
            httpx.get(f"{base}/healthz")
        before = rss_bytes(pid)
        results: list[tuple[int, bytes]] = []

        def hostile() -> None:
            sock = connect(base)
            sent = 0
            try:
                sock.sendall(b"POST /callbacks/vod HTTP/1.1\r\nHost: x\r\nX-Fill: ")
                while sent < 6 * 1024 * 1024:  # a header line that never ends
                    sock.sendall(b"a" * 65536)
                    sent += 65536
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                answer = read_until_closed(sock)
            except TimeoutError:
                answer = b"(still open)"
            sock.close()
            results.append((sent, answer))

        threads = [threading.Thread(target=hostile) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        grown = rss_bytes(pid) - before

        assert len(results) == 10
        for sent, answer in results:
            assert sent < 6 * 1024 * 1024, "the server read the whole endless header"
            # The 431 arrives unless the close's reset overtook it.
            assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert grown < 30 * 1024 * 1024, f"RSS grew by {grown / 2**20:.0f} MB"
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert logged(process, "request_headers_too_large")


def test_half_sent_requests_get_408_and_are_closed(redis_url: str) -> None:
    with serving(redis_url=redis_url, read_timeout_seconds="0.5") as (base, process):
        silent = connect(base)  # connects, sends nothing
        half_headers = connect(base)
        half_headers.sendall(b"POST /callbacks/vod HTTP/1.1\r\nHost: x\r\nContent-Le")
        short_body = connect(base)
        body = json.dumps(sample_dynamic_image_event()).encode()
        headers = signed_headers(f"{base}/callbacks/vod", AUTH_KEY)
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        short_body.sendall(
            f"POST /callbacks/vod HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        try:
            assert read_until_closed(silent) == b""
            for sock in (half_headers, short_body):
                answer = read_until_closed(sock)
                assert answer.startswith(b"HTTP/1.1 408 "), answer
                assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "request_timeout"
        finally:
            for sock in (silent, half_headers, short_body):
                sock.close()
        wait_for(
            lambda: (
                {line["stage"] for line in logged(process, "request_read_timeout")}
                == {"headers", "body"}
            ),
            5,
            "a read timeout logged in both stages",
        )
        wait_for(lambda: bool(logged(process, "callback_rejected")), 5, "the app's log line")
        assert logged(process, "callback_rejected")[0]["error"] == "request_incomplete"
        assert not logged(process, "request_failed")
        assert httpx.get(f"{base}/healthz").status_code == 200


def test_a_stray_line_break_after_a_request_does_not_keep_the_connection(
    redis_url: str,
) -> None:
    with serving(redis_url=redis_url, read_timeout_seconds="0.5") as (base, _):
        sock = connect(base)
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 ")
            # The parser skips a line break between requests without starting one; it must
            # still count as the start of the next request's deadline.
            sock.sendall(b"\r\n")
            assert read_until_closed(sock) == b""  # closed, not held open (socket timeout 15 s)
        finally:
            sock.close()


@pytest.mark.parametrize("split", [None, 15_000], ids=["one write", "completed by a big write"])
def test_headers_over_the_cap_get_431_however_they_arrive(
    redis_url: str, split: int | None
) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Fill: " + b"a" * 100_000 + b"\r\n\r\n"
    with serving(redis_url=redis_url) as (base, _):
        sock = connect(base)
        try:
            if split is None:
                sock.sendall(request)
            else:
                sock.sendall(request[:split])
                sock.sendall(request[split:])
            answer = read_until_closed(sock)
        finally:
            sock.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "headers_too_large"


def test_malformed_http_gets_a_json_400(redis_url: str) -> None:
    with serving(redis_url=redis_url) as (base, _):
        sock = connect(base)
        try:
            sock.sendall(b"POST /callbacks/vod HTTP/1.1\r\nContent-Length: 1x\r\n\r\n{}")
            answer = read_until_closed(sock)
        finally:
            sock.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"content-type: application/json" in head
    assert json.loads(body) == {
        "error": "invalid_http",
        "detail": "the request is not valid HTTP/1.1",
    }


def test_graceful_shutdown_time_is_not_rounded_down() -> None:
    values: dict[str, Any] = {"allow_unsigned": True, "shutdown_timeout_seconds": 0.5}
    settings = Settings(_env_file=None, **values)
    config = server_config(settings, host="127.0.0.1", port=8000, workers=1)
    # uvicorn takes whole seconds: 0.5 must not become 0 (which cancels in-flight requests).
    assert config.timeout_graceful_shutdown == 1
    assert config.http is LimitedHttpProtocol


def unread_bytes(sock: socket.socket) -> int:
    buffer = fcntl.ioctl(sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
    count: int = struct.unpack("i", buffer)[0]
    return count


def send_queue(sock: socket.socket) -> int:
    """Bytes the server's end of this connection has queued unsent (from /proc/net/tcp)."""
    client_port = sock.getsockname()[1]
    server_port = sock.getpeername()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (
            fields[1] == f"0100007F:{server_port:04X}"
            and fields[2] == f"0100007F:{client_port:04X}"
        ):
            return int(fields[4].split(":")[0], 16)
    return 0


def stuck(sock: socket.socket) -> Callable[[], bool]:
    """A predicate: the server's queue for `sock` is filled and no longer moving."""
    seen = [-1]

    def check() -> bool:
        queued = send_queue(sock)
        previous, seen[0] = seen[0], queued
        return queued > 0 and queued == previous and unread_bytes(sock) > 0

    return check


@pytest.fixture
def stalled_reader() -> Iterator[OpenStream]:
    opened: list[socket.socket] = []

    def open_stream(base: str) -> socket.socket:
        """An `/events` client that reads its headers and then nothing more."""
        sock = connect(base, rcvbuf=4096)
        sock.sendall(
            f"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        assert sock.recv(12) == b"HTTP/1.1 200"
        opened.append(sock)
        return sock

    yield open_stream
    for sock in opened:
        sock.close()


def flood_stream(redis_url: str, entries: int) -> None:
    """Envelopes of 256 KiB straight into the stream, for the feed to send to every client.
    Added in one transaction, so the feed reads them in one round: the server does not pause
    between rounds (which looks like a stalled socket) while the test waits for it to stall."""
    client = redis.Redis.from_url(redis_url)
    big = json.dumps({"id": "", "padding": "x" * 262_144})
    with client.pipeline(transaction=True) as pipe:
        for _ in range(entries):
            pipe.xadd("vod:stream", {"envelope": big})
        pipe.execute()
    client.close()


def test_an_events_client_that_stops_reading_is_disconnected(
    redis_url: str, stalled_reader: OpenStream
) -> None:
    with serving(redis_url=redis_url, api_token=TOKEN, send_timeout_seconds="0.5") as (
        base,
        process,
    ):
        sock = stalled_reader(base)
        for _ in range(40):  # bounded: 40 x 1 MiB
            flood_stream(redis_url, 4)
            if logged(process, "client_not_reading"):
                break
        wait_for(lambda: bool(logged(process, "client_not_reading")), 10, "the cut-off")
        with pytest.raises(ConnectionResetError):  # reset: what was queued is dropped
            read_until_reset(sock)
        assert httpx.get(f"{base}/healthz").status_code == 200


def test_sigterm_with_a_stalled_events_client_exits_without_waiting_for_it(
    redis_url: str, stalled_reader: OpenStream
) -> None:
    # Long send and shutdown timeouts: only the shutdown itself may drop the client.
    with serving(
        redis_url=redis_url,
        api_token=TOKEN,
        send_timeout_seconds="120",
        shutdown_timeout_seconds="120",
    ) as (base, process):
        sock = stalled_reader(base)
        flood_stream(redis_url, 64)  # 16 MiB: far more than the socket buffers hold
        wait_for(stuck(sock), 10, "the server's socket buffer to fill up")
        process.stop(signal.SIGTERM, 30)  # a bound on the test; the drain would take 120 s
        assert logged(process, "client_not_reading")[0]["detail"] == "dropped on shutdown"
        events = [line["event"] for line in process.json_logs()]
        assert "Application shutdown complete." in events
        assert not any("graceful shutdown exceeded" in line for line in process.stderr)
