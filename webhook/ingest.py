"""MNS ingest: VOD's events taken from an MNS queue and recorded as the receiver records
callbacks (same envelope, dedup, correlation and fan-out; `source: "mns"`).

A message is deleted only once its event is recorded (or found recorded before), so MNS
delivers at least once and the stream holds each event once. When Redis is out of reach the
messages are left to come back, and receiving pauses until Redis answers. A message that fails
for any other reason (a body that is not a VOD event) comes back after a growing delay, and on
its `max_dequeues`-th receipt goes to the dead-letter stream and is deleted. Several ingest
processes (and several pollers in one) may share a queue: MNS hands each message to one at a
time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import traceback
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from webhook.deadletters import MNS_GROUP
from webhook.errors import PayloadError, StoreUnavailable
from webhook.events import parse_callback
from webhook.mns import MAX_BATCH, MnsError, MnsMessage, MnsQueue, chain_credentials
from webhook.settings import ENV_PREFIX, ConfigError, Settings
from webhook.store import Recorded, Store

logger = structlog.get_logger("webhook.ingest")

OUTCOMES = ("accepted", "duplicate", "held", "retried", "dead_lettered")
_MAX_RETRY_DELAY_SECONDS = 300
_MAX_BACKOFF_SECONDS = 10.0


def decode_body(body: str) -> bytes:
    """The event JSON of a message body: VOD writes the JSON itself; a body written through an
    SDK's default (Base64) is decoded first. A JSON object starts with `{`, which is no Base64
    character, so the two cannot be confused."""
    text = body.strip()
    if text.startswith("{"):
        return text.encode()
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded.lstrip().startswith(b"{"):
        raise PayloadError(
            "message body is neither a JSON object nor the Base64 of one", "invalid_message"
        )
    return decoded


def retry_delay(dequeue_count: int) -> int:
    """Seconds until a failed message comes back: 2, 4, 8, ... up to 5 minutes."""
    return int(min(2**dequeue_count, _MAX_RETRY_DELAY_SECONDS))


@dataclass(frozen=True)
class _Failure:
    error: BaseException

    @property
    def transient(self) -> bool:
        return isinstance(self.error, StoreUnavailable)


def ingest_from_settings(
    settings: Settings, store: Store, count: Callable[[str], None] | None = None
) -> MnsIngest:
    """The ingest of settings.mns_queue, signing with the default credential chain;
    ConfigError when MNS_ENDPOINT and MNS_QUEUE are not both set, or there are no credentials."""
    from webhook.vod import default_credentials  # the credentials package: only when ingesting

    if not (settings.mns_endpoint and settings.mns_queue):
        raise ConfigError(
            f"set {ENV_PREFIX}MNS_ENDPOINT and {ENV_PREFIX}MNS_QUEUE to the queue VOD delivers "
            "into (see `vod-webhook register --mns-endpoint`)"
        )
    client, _ = default_credentials()
    queue = MnsQueue(settings.mns_endpoint, settings.mns_queue, chain_credentials(client))
    return MnsIngest(
        queue,
        store,
        verify_outcomes=settings.verify_outcomes,
        max_dequeues=settings.mns_max_dequeues,
        wait_seconds=settings.mns_wait_seconds,
        pollers=settings.mns_pollers,
        count=count,
    )


class MnsIngest:
    """Takes VOD's events from `queue` into `store` (`run`) until stopped (`stop`)."""

    def __init__(
        self,
        queue: MnsQueue,
        store: Store,
        *,
        verify_outcomes: bool,
        max_dequeues: int,
        wait_seconds: int = 30,
        pollers: int = 1,
        count: Callable[[str], None] | None = None,
    ) -> None:
        self.queue = queue
        self.store = store
        self.verify_outcomes = verify_outcomes
        self.max_dequeues = max_dequeues
        self.wait_seconds = wait_seconds
        self.pollers = pollers
        self._count = count or (lambda outcome: None)
        self._store_down = asyncio.Event()
        self._stopping = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """End `run` gently: no new long poll, the one waiting ends, and what was received is
        recorded and deleted first (a cancelled batch would come back only after the queue's
        VisibilityTimeout)."""
        self._stopping.set()

    async def check(self) -> None:
        """One poll that does not wait, so that a queue MNS refuses (a wrong name, endpoint
        or key) stops start-up as a ConfigError; a transient failure only delays the first."""
        try:
            messages = await self.queue.receive(MAX_BATCH, 0)
        except MnsError as exc:
            if exc.transient:
                logger.warning("mns_unavailable", error=str(exc))
                return
            raise ConfigError(
                f"{ENV_PREFIX}MNS_QUEUE: MNS refused to hand out messages of queue "
                f"{self.queue.name!r} at {self.queue.endpoint}: {exc}"
            ) from None
        if messages:
            await self.ingest(messages)

    async def run(self) -> None:
        """Poll with `pollers` concurrent long polls until stopped (or cancelled)."""
        logger.info("ingest_started", endpoint=self.queue.endpoint, queue=self.queue.name,
                    pollers=self.pollers)  # fmt: skip
        async with asyncio.TaskGroup() as group:
            for _ in range(self.pollers):
                group.create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            if self._store_down.is_set():
                await self._await_store()
                continue
            try:
                messages = await self._receive_unless_stopped()
                if messages:
                    await self.ingest(messages)  # to its end, even if stopped meanwhile
            except Exception as exc:
                failures += 1
                delay = min(_MAX_BACKOFF_SECONDS, 0.5 * 2**failures)
                if isinstance(exc, MnsError):
                    # A refusal (a key revoked, the queue deleted) may be fixed while this runs.
                    log = logger.warning if exc.transient else logger.error
                    log("mns_unavailable", error=str(exc), retry_in_s=delay)
                else:  # a bug: logged with its traceback, and polling goes on
                    logger.exception("ingest_failed", retry_in_s=delay)
                await self._pause(delay)
            else:
                failures = 0
        logger.info("ingest_stopped", queue=self.queue.name)

    async def _receive_unless_stopped(self) -> list[MnsMessage]:
        """A long poll's messages; [] when stopped while it waited."""
        receiving = asyncio.ensure_future(self.queue.receive(MAX_BATCH, self.wait_seconds))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopping, receiving):  # cancelling a finished one changes nothing
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        return [] if receiving.cancelled() else receiving.result()

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless stopped meanwhile."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def poll_once(self) -> int:
        """One long poll and what it brought handled; returns how many messages came."""
        messages = await self.queue.receive(MAX_BATCH, self.wait_seconds)
        if messages:
            await self.ingest(messages)
        return len(messages)

    async def ingest(self, messages: list[MnsMessage]) -> None:
        """Record each message's event (together: one pipelined round trip), then delete the
        recorded, dead-letter the ones failing for good and leave the rest to come back."""
        received_at = datetime.now(UTC)
        results = await asyncio.gather(
            *(self._record(message, received_at) for message in messages)
        )
        done: list[str] = []
        retry: list[tuple[MnsMessage, _Failure]] = []
        for message, result in zip(messages, results, strict=True):
            if isinstance(result, _Failure):
                retry.append((message, result))
            else:
                done.append(message.receipt_handle)
        given_up = [
            (message, failure)
            for message, failure in retry
            if not failure.transient and message.dequeue_count >= self.max_dequeues
        ]
        if given_up and await self._dead_letter(given_up):
            done += [message.receipt_handle for message, _ in given_up]
            retry = [item for item in retry if item not in given_up]
        if done:
            await self._delete(done)
        for message, failure in retry:
            await self._retry_later(message, failure)
        if any(failure.transient for _, failure in retry):
            self._store_down.set()

    async def _record(self, message: MnsMessage, received_at: datetime) -> Recorded | _Failure:
        log = logger.bind(message_id=message.message_id, dequeue_count=message.dequeue_count)
        try:
            envelope = parse_callback(decode_body(message.body), received_at)
            envelope = envelope.model_copy(update={"source": "mns"})
            recorded, hold = await self.store.accept(envelope, verify_outcomes=self.verify_outcomes)
        except Exception as exc:  # each message's failure is its own, decided in `ingest`
            expected = isinstance(exc, StoreUnavailable | PayloadError)
            (log.warning if expected else log.error)("message_failed", error=_describe(exc))
            return _Failure(exc)
        outcome = "duplicate" if recorded.duplicate else "held" if hold else "accepted"
        self._count(outcome)
        log.info(f"message_{outcome}", id=recorded.id, event_type=envelope.event_type,
                 job_id=envelope.job_id)  # fmt: skip
        return recorded

    async def _dead_letter(self, given_up: list[tuple[MnsMessage, _Failure]]) -> bool:
        """Append each message, with its error, to the dead-letter stream; False if Redis
        could not take them (they are retried then, and tried here again)."""
        redis, stream = self.store.redis, self.store.shared.dead_letter
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for message, failure in given_up:
                    pipe.xadd(stream, self._letter(message, failure))
                await pipe.execute()
        except Exception as exc:  # Redis out of reach or refusing: nothing is deleted
            logger.warning("dead_letter_failed", error=_describe(exc))
            return False
        for message, failure in given_up:
            self._count("dead_lettered")
            logger.error(
                "message_dead_lettered",
                message_id=message.message_id,
                dequeue_count=message.dequeue_count,
                error=_describe(failure.error),
            )
        return True

    def _letter(self, message: MnsMessage, failure: _Failure) -> dict[Any, Any]:
        return {
            "group": MNS_GROUP,
            "consumer": self.queue.name,
            "original_id": "",
            "deliveries": str(message.dequeue_count),
            "error": _describe(failure.error),
            "mns_message_id": message.message_id,
            "mns_enqueue_time_ms": str(message.enqueue_time_ms),
            "mns_body": message.body,
        }

    async def _delete(self, handles: list[str]) -> None:
        try:
            failures = await self.queue.delete(handles)
        except MnsError as exc:
            # Recorded, but still in the queue: it comes back, is found recorded, and is
            # deleted then (at least once from MNS, once in the stream).
            logger.warning("delete_failed", error=str(exc), messages=len(handles))
            return
        for failure in failures:
            logger.warning("delete_refused", code=failure.code, message=failure.message,
                           receipt_handle=failure.receipt_handle)  # fmt: skip

    async def _retry_later(self, message: MnsMessage, failure: _Failure) -> None:
        delay = 1 if failure.transient else retry_delay(message.dequeue_count)
        self._count("retried")
        try:
            await self.queue.change_visibility(message.receipt_handle, delay)
        except MnsError as exc:  # it comes back after the queue's VisibilityTimeout instead
            logger.warning("visibility_change_failed", error=str(exc),
                           message_id=message.message_id)  # fmt: skip

    async def _await_store(self) -> None:
        """Back off until Redis takes writes again."""
        delay = 0.5
        while not self._stopping.is_set():
            try:
                await self.store.ensure_ready()
            except StoreUnavailable as exc:
                logger.warning("ingest_paused", reason=exc.detail, retry_in_s=delay)
                await self._pause(delay)
                delay = min(_MAX_BACKOFF_SECONDS, delay * 2)
            else:
                self._store_down.clear()
                logger.info("ingest_resumed")
                return


def _describe(error: BaseException) -> str:
    return "".join(traceback.format_exception_only(error)).strip()
