"""uvicorn's httptools protocol with the limits it lacks against slow or hostile clients.

uvicorn's fast path (uvloop + httptools) buffers a header line without bound and waits for a
request, or its body, forever. This subclass keeps that path (the guard costs a timer per
request, see bench/http_limits.py) and adds:

- a cap on header bytes: beyond it the client gets 431 and the connection is closed;
- a read deadline: a request whose headers and body have not all arrived within
  `read_timeout` gets 408 (or, before its first byte, a silent close);
- a send deadline: a client that accepts none of our bytes for `send_timeout` (its buffers
  full, e.g. an `/events` reader that stopped reading) is disconnected at once, dropping what
  was queued for it; on shutdown such a client is dropped immediately, as it cannot be drained.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

logger = structlog.get_logger("webhook.http")

# VOD's callbacks carry a few hundred bytes of headers; 16 KiB is h11's default limit and leaves
# room for proxies' forwarding headers.
MAX_HEADER_BYTES = 16 * 1024
# While shutting down, how often to look for connections that cannot be drained.
_SHUTDOWN_CHECK_SECONDS = 0.2


@dataclass(frozen=True)
class ClientLimits:
    read_timeout: float = 10.0
    send_timeout: float = 10.0
    max_header_bytes: int = MAX_HEADER_BYTES


class LimitedConfig(uvicorn.Config):
    """uvicorn.Config serving HTTP with `LimitedHttpProtocol` and these limits (picklable, so
    `--workers` processes get them too)."""

    def __init__(self, app: Any, *, limits: ClientLimits, **kwargs: Any) -> None:
        super().__init__(app, http=LimitedHttpProtocol, **kwargs)
        self.client_limits = limits


class LimitedHttpProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = getattr(config, "client_limits", None) or ClientLimits()
        self._limits: ClientLimits = limits
        self._in_headers = True  # reading a request's headers (or waiting for a request)
        self._message_started = False
        self._header_bytes = 0  # raw bytes read while in headers: bounds an unfinished line
        self._parsed_header_bytes = 0  # the request line and headers the parser has completed
        self._headers_too_large = False
        self._read_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._shutdown_timer: asyncio.TimerHandle | None = None

    # Reading

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_read_timer()  # a connection that never sends a request is not kept

    def data_received(self, data: bytes) -> None:
        if self._read_timer is None and not self._message_started:
            # Any byte starts the next request's deadline, even one the parser skips (a line
            # break between requests) without beginning a message: uvicorn's keep-alive timer
            # stops at the first byte, so without this nothing would close the connection.
            self._arm_read_timer()
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        # Checked after parsing: the same chunk may finish the headers and carry a body.
        if (
            self._in_headers
            and self._header_bytes > self._limits.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._headers_too_large = True
            self.send_400_response("")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._message_started = True
        self._parsed_header_bytes = 0
        if self._read_timer is None:
            self._arm_read_timer()

    # Headers that arrive complete in one read never look unfinished to data_received: they
    # are counted as the parser hands them over, and refused before the app sees them.

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count_header_bytes(len(name) + len(value))

    def _count_header_bytes(self, count: int) -> None:
        self._parsed_header_bytes += count
        if self._parsed_header_bytes > self._limits.max_header_bytes:
            self._headers_too_large = True
            # httptools turns a callback's exception into a parser error, which uvicorn
            # answers with send_400_response (below) before any app runs.
            raise ValueError("request headers too large")

    def send_400_response(self, msg: str) -> None:
        """Every answer the server gives by itself is JSON with `error` and `detail`, like the
        app's (uvicorn's own is plain text)."""
        if self._headers_too_large:
            logger.warning("request_headers_too_large", client=_peer(self.client))
            limit = self._limits.max_header_bytes
            self._answer_and_close(
                431, "headers_too_large", f"request headers exceed {limit} bytes"
            )
        else:
            self._answer_and_close(400, "invalid_http", "the request is not valid HTTP/1.1")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._in_headers = False
        self._header_bytes = 0

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_headers = True
        self._message_started = False
        self._cancel_read_timer()

    def _arm_read_timer(self) -> None:
        self._read_timer = self.loop.call_later(self._limits.read_timeout, self._read_timed_out)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            self._arm_read_timer()  # we stopped reading, not the client: not its delay
            return
        if not self._message_started:
            self.transport.close()  # connected but sent nothing
            return
        cycle = self.cycle
        if not self._in_headers and cycle is not None and cycle.response_started:
            self.transport.close()  # the answer is out; only the rest of the body is missing
            return
        logger.warning(
            "request_read_timeout",
            client=_peer(self.client),
            stage="headers" if self._in_headers else "body",
            timeout_seconds=self._limits.read_timeout,
        )
        if cycle is not None and not self._in_headers:
            # The app is waiting for the body: it now reads a disconnect, and its own answer
            # (if any) goes nowhere, as this one is sent in its place.
            cycle.disconnected = True
            cycle.message_event.set()
        self._answer_and_close(
            408,
            "request_timeout",
            f"the request was not received within {self._limits.read_timeout:g} s",
        )

    def _answer_and_close(self, status: int, code: str, detail: str) -> None:
        body = json.dumps({"error": code, "detail": detail}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    # Writing

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self._limits.send_timeout, self._send_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_timed_out(self) -> None:
        self._send_timer = None
        logger.warning(
            "client_not_reading",
            client=_peer(self.client),
            timeout_seconds=self._limits.send_timeout,
            detail="disconnected: it accepted none of the answer for too long",
        )
        self._drop()

    def _drop(self) -> None:
        """Reset the connection: neither our buffer nor the kernel's keeps its unsent bytes."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def shutdown(self) -> None:
        super().shutdown()
        self._drop_if_undrainable()

    def _drop_if_undrainable(self) -> None:
        """Until the connection is gone: drop it once it is stuck on a client that does not
        read (writes paused, or closed with bytes still unsent); close() would wait for it."""
        self._shutdown_timer = None
        if self.flow.write_paused or (
            self.transport.is_closing() and self.transport.get_write_buffer_size() > 0
        ):
            logger.warning(
                "client_not_reading", client=_peer(self.client), detail="dropped on shutdown"
            )
            self._drop()
            return
        self._shutdown_timer = self.loop.call_later(
            _SHUTDOWN_CHECK_SECONDS, self._drop_if_undrainable
        )

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        for timer in (self._read_timer, self._send_timer, self._shutdown_timer):
            if timer is not None:
                timer.cancel()
        self._read_timer = self._send_timer = self._shutdown_timer = None


def _peer(client: tuple[str, int] | None) -> str | None:
    return f"{client[0]}:{client[1]}" if client else None
