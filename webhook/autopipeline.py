"""Auto-pipelining: one Redis connection per process, shared by every concurrent caller.

Commands that arrive while a batch is in flight go out together as the next batch: one write
and one read for all of them. redis-py has no auto-pipelining, and through its pool a script
call costs ~130 us of CPU (checkout, retry wrapper, packing in Python, a timeout per read);
here ~30 (32 concurrent callers, measured on the 2-core box of the README's Performance).

A command that failed with the connection is sent once more, as the pool's retry did: the
scripts sent here are safe to repeat (they deduplicate), so one that Redis ran before the
reply was lost is not recorded twice.

With `wait_replicas`, each batch ends with a WAIT: its callers hear their replies only once that
many replicas have the batch's writes (and every earlier one of this connection, so a duplicate
is not acknowledged before the write it duplicates is replicated); else they fail.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = structlog.get_logger("webhook.autopipeline")

_Waiting = list[tuple[tuple[Any, ...], "asyncio.Future[Any]"]]


class NotReplicated(RedisError):
    """Fewer replicas than asked acknowledged a batch's writes within the wait."""


class AutoPipeline:
    """Runs commands on one connection of its own, opened with the settings of `redis`'s pool
    or of a cluster node.

    The socket timeout (else `default_timeout`) bounds a batch as a whole, not each reply
    (a timer per command costs); when it passes, or the connection fails, every command of the
    batch fails and the connection is opened afresh for the next one.
    """

    def __init__(
        self,
        redis: Redis | ClusterNode,
        *,
        default_timeout: float,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 0,
    ) -> None:
        kind: type[AbstractConnection]
        if isinstance(redis, ClusterNode):
            kind, settings = redis.connection_class, redis.connection_kwargs
        else:
            kind, settings = (
                redis.connection_pool.connection_class,
                redis.connection_pool.connection_kwargs,
            )
        self._timeout: float = settings.get("socket_timeout") or default_timeout
        self._connection: AbstractConnection = kind(
            **{**settings, "socket_timeout": None, "retry": Retry(NoBackoff(), 0)}
        )
        self._wait = ("WAIT", wait_replicas, wait_timeout_ms) if wait_replicas else None
        self._waiting: _Waiting = []
        self._sender: asyncio.Task[None] | None = None
        self._closed = False

    async def execute(self, *args: str | bytes | int | float) -> Any:
        """The reply to command `args`; raises its ResponseError, or the batch's RedisError.

        A command that failed with the connection (it died, as every one does when Redis
        restarts) is sent once more on a fresh one, as redis-py's pool does."""
        try:
            return await self._enqueue(args)
        except RedisConnectionError:
            return await self._enqueue(args)

    async def aclose(self) -> None:
        self._closed = True
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        _fail(self._waiting, RedisConnectionError("the connection was closed"))
        self._waiting = []
        await self._connection.disconnect()

    def _enqueue(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        if self._closed:
            raise RedisConnectionError("the connection was closed")
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((args, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_while_waiting())
        return future

    async def _send_while_waiting(self) -> None:
        # Runs while commands wait, then ends: an idle process keeps no task around.
        batch: _Waiting = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                # A caller whose deadline passed while it waited gave up: don't send it.
                batch = [(args, future) for args, future in batch if not future.done()]
                if batch:
                    await self._send(batch)
        finally:
            self._sender = None
            _fail(batch, RedisConnectionError("the connection was closed"))  # if cancelled

    async def _send(self, batch: _Waiting) -> None:
        connection = self._connection
        try:
            async with asyncio.timeout(self._timeout):
                if not connection.is_connected:
                    await connection.connect()  # type: ignore[no-untyped-call]
                # hiredis packs in C, ~6x faster than redis-py's Python packer.
                commands = [args for args, _ in batch]
                if self._wait:
                    commands.append(self._wait)
                packed = b"".join([hiredis.pack_command(args) for args in commands])
                await connection.send_packed_command(packed, check_health=False)
                replies: list[Any] = []
                for _ in batch:
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as refusal:  # this command's error, not the batch's
                        replies.append(refusal)
                if self._wait:
                    _check_replicated(await connection.read_response(), self._wait)
                for reply, (_, future) in zip(replies, batch, strict=True):
                    if future.done():
                        continue
                    if isinstance(reply, ResponseError):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        except NotReplicated as exc:  # the connection is fine
            _fail(batch, exc)
        except TimeoutError:
            await connection.disconnect(nowait=True)
            _fail(batch, RedisTimeoutError(f"Redis did not answer within {self._timeout} s"))
        except (RedisError, OSError) as exc:
            await connection.disconnect(nowait=True)
            _fail(batch, RedisConnectionError(str(exc)))
        except Exception as exc:  # a bug: its callers fail (503), later batches still go out
            logger.exception("autopipeline_failed")
            await connection.disconnect(nowait=True)
            _fail(batch, RedisError(f"unexpected {type(exc).__name__}: {exc}"))


def _check_replicated(acknowledged: Any, wait: tuple[str, int, int]) -> None:
    _, replicas, timeout_ms = wait
    if int(acknowledged) < replicas:
        raise NotReplicated(
            f"{acknowledged} of {replicas} replicas acknowledged the writes within {timeout_ms} ms"
        )


def _fail(batch: _Waiting, error: RedisError) -> None:
    for _, future in batch:
        if not future.done():
            # A fresh exception each: one instance raised in many tasks grows one traceback.
            future.set_exception(type(error)(*error.args))
