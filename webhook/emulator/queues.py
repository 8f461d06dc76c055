"""MNS queues in memory, and the part of MNS's REST API (version 2015-06-06) that serves them.

Served on the emulator's own port beside VOD's RPC endpoint, so an MNS client's endpoint is the
emulator's base URL. Every request is authenticated as MNS does (webhook/emulator/mns_auth.py)
against the emulator's AccessKeys; bodies and answers are MNS's XML, as the official SDK
(``aliyun-mns-sdk``) sends and parses them.

- ``PUT /queues/<name>``: CreateQueue, 201; 204 if it exists with the same attributes, else 409
  ``QueueAlreadyExist``. With ``?metaoverride=true``: SetQueueAttributes, 204.
  ``GET``: GetQueueAttributes. ``DELETE``: DeleteQueue, 204.
- ``POST /queues/<name>/messages``: SendMessage (``<Message>``) or BatchSendMessage
  (``<Messages>``, at most 16), 201 with each MessageId and MessageBodyMD5 (the upper-case MD5
  hex of the body as sent: base64 when the SDK encodes it).
- ``GET /queues/<name>/messages[?numOfMessages=N][&waitseconds=S]``: (Batch)ReceiveMessage. A
  long poll answers as soon as a message is visible, else after S seconds (the queue's
  PollingWaitSeconds when not given) with 404 ``MessageNotExist``; it also ends when the queue is
  deleted or the emulator shuts down. Each receipt hides the message for the queue's
  VisibilityTimeout and issues a new ReceiptHandle; the previous one stops working.
- ``DELETE /queues/<name>/messages?ReceiptHandle=H``: DeleteMessage; without the query, a
  ``<ReceiptHandles>`` body: BatchDeleteMessage, which deletes what it can and answers 404 with
  an ``<Errors>`` list of the handles it could not.
- ``PUT /queues/<name>/messages?ReceiptHandle=H&VisibilityTimeout=T``: ChangeMessageVisibility,
  which issues a new handle too.

A handle that is not one this emulator makes is ``ReceiptHandleError`` (400, as MNS's
DeleteMessage reference lists it). A well-formed handle that no longer works is
``MessageNotExist`` (404): the message was received again or deleted since, or its visibility
timeout ended. The last case is MNS's documented behaviour ("message not exist" appears when you
delete a message in MNS: the handle expires as the message becomes active again, whether or not
anyone received it again).

Not emulated: peeking, topics, message properties and groups, the retention period (accepted and
reported, never applied), and priority beyond ordering (lower first, then oldest first).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import itertools
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from webhook.emulator.mns_auth import MnsAuthenticator
from webhook.emulator.mns_xml import (
    MnsError,
    children_text,
    error_response,
    invalid_argument,
    local_name,
    message_not_exist,
    mns_response,
    new_request_id,
    not_in_schema,
    parse_document,
    queue_not_exist,
    receipt_handle_error,
    xml_document,
    xml_element,
)
from webhook.mns import QUEUE_NAME, QUEUE_NAME_RULE

# Every module of the emulator logs under one name, the package's.
logger = structlog.get_logger("webhook.emulator")

MAX_BATCH = 16
MAX_WAIT_SECONDS = 30
MAX_VISIBILITY_TIMEOUT = 43200
MAX_DELAY_SECONDS = 604800
DEFAULT_PRIORITY = 8
# Bounds of the emulator, not MNS's: what one queue holds, and a request body (16 messages of
# 64 KiB each, escaped in XML, fit).
MAX_MESSAGES_PER_QUEUE = 100_000
MAX_REQUEST_BODY = 4 * 1024 * 1024
_RECEIPT_HANDLE = re.compile(r"1-([A-Za-z0-9+/]+={0,2})")
_HANDLE_CONTENT = re.compile(rb"[0-9]+-[0-9]+")
_SMALL_NUMBER = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True)
class QueueAttributes:
    """A queue's settings, with MNS's defaults."""

    visibility_timeout: int = 30
    maximum_message_size: int = 65536
    message_retention_period: int = 345600
    delay_seconds: int = 0
    polling_wait_seconds: int = 0
    logging_enabled: bool = False


# XML element -> (field, lowest, highest, unit) of QueueAttributes' integers, MNS's ranges.
_ATTRIBUTE_RANGES = {
    "VisibilityTimeout": ("visibility_timeout", 1, MAX_VISIBILITY_TIMEOUT, "seconds"),
    "MaximumMessageSize": ("maximum_message_size", 1024, 65536, "bytes"),
    "MessageRetentionPeriod": ("message_retention_period", 60, 604800, "seconds"),
    "DelaySeconds": ("delay_seconds", 0, MAX_DELAY_SECONDS, "seconds"),
    "PollingWaitSeconds": ("polling_wait_seconds", 0, MAX_WAIT_SECONDS, "seconds"),
}


def out_of_range(name: str, low: int, high: int, unit: str = "") -> MnsError:
    return invalid_argument(
        f"The value of {name} should between {low} and {high}{' ' + unit if unit else ''}."
    )


def bounded_int(name: str, text: str, low: int, high: int, unit: str = "") -> int:
    # ASCII digits only, and few: int() refuses other digits and very long numbers.
    if not _SMALL_NUMBER.fullmatch(text) or not low <= int(text) <= high:
        raise out_of_range(name, low, high, unit)
    return int(text)


def parse_queue_attributes(body: bytes) -> dict[str, Any]:
    """The attributes a `<Queue>` body sets (an empty body sets none)."""
    if not body.strip():
        return {}
    given = children_text(parse_document(body, "Queue"))
    changes: dict[str, Any] = {}
    for name, text in given.items():
        if name in _ATTRIBUTE_RANGES:
            field, low, high, unit = _ATTRIBUTE_RANGES[name]
            changes[field] = bounded_int(name, text, low, high, unit)
        elif name == "LoggingEnabled":
            if text.lower() not in {"true", "false"}:
                raise invalid_argument("The value of LoggingEnabled should be True or False.")
            changes["logging_enabled"] = text.lower() == "true"
        else:
            raise not_in_schema(f"the element {name}")
    return changes


def check_queue_name(name: str) -> None:
    if not QUEUE_NAME.fullmatch(name):
        raise MnsError(
            400,
            "InvalidQueueName",
            f"The queue name you provided is invalid ({QUEUE_NAME_RULE}).",
        )


def milliseconds(seconds: float) -> str:
    return str(int(seconds * 1000))


@dataclass
class Message:
    number: int
    """The message's place in its queue's sending order, which its receipt handles carry."""
    message_id: str
    body: str
    body_md5: str
    priority: int
    enqueue_time: float
    visible_at: float
    first_dequeue_time: float | None = None
    dequeue_count: int = 0
    receipt_handle: str | None = None

    def as_received(self) -> dict[str, str]:
        """The fields ReceiveMessage answers with, in the order MNS gives them."""
        assert self.receipt_handle is not None
        assert self.first_dequeue_time is not None
        return {
            "MessageId": self.message_id,
            "ReceiptHandle": self.receipt_handle,
            "MessageBodyMD5": self.body_md5,
            "MessageBody": self.body,
            "EnqueueTime": milliseconds(self.enqueue_time),
            "NextVisibleTime": milliseconds(self.visible_at),
            "FirstDequeueTime": milliseconds(self.first_dequeue_time),
            "DequeueCount": str(self.dequeue_count),
            "Priority": str(self.priority),
        }


class Queue:
    """One queue: its messages in sending order, each visible from its `visible_at` on."""

    def __init__(self, name: str, attributes: QueueAttributes) -> None:
        self.name = name
        self.attributes = attributes
        self.create_time = self.last_modify_time = int(time.time())
        self.messages: dict[str, Message] = {}
        self.sent = self.received = self.deleted = 0
        self.waiting = 0
        """Long polls waiting on this queue now."""
        self._by_handle: dict[str, Message] = {}
        self._receipts = itertools.count(1)
        self._message_numbers = itertools.count(1)
        # Replaced on every change; long polls wait on the one current when they looked.
        self._changed = asyncio.Event()
        self._closed = False

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        """End every long poll on this queue now (it is deleted, or the emulator stops)."""
        self._closed = True
        self._notify()

    def check_message(self, body: str, delay_seconds: int | None, priority: int | None) -> None:
        size = len(body.encode())
        if not 1 <= size <= self.attributes.maximum_message_size:
            raise out_of_range("MessageBody", 1, self.attributes.maximum_message_size, "bytes")
        if len(self.messages) >= MAX_MESSAGES_PER_QUEUE:
            raise invalid_argument(
                f"The queue holds {MAX_MESSAGES_PER_QUEUE} messages, the emulator's maximum."
            )
        if delay_seconds is not None and not 0 <= delay_seconds <= MAX_DELAY_SECONDS:
            raise out_of_range("DelaySeconds", 0, MAX_DELAY_SECONDS, "seconds")
        if priority is not None and not 1 <= priority <= 16:
            raise out_of_range("Priority", 1, 16)

    def send(
        self, body: str, delay_seconds: int | None = None, priority: int | None = None
    ) -> Message:
        self.check_message(body, delay_seconds, priority)
        now = time.time()
        delay = self.attributes.delay_seconds if delay_seconds is None else delay_seconds
        message = Message(
            number=next(self._message_numbers),
            message_id=uuid.uuid4().hex.upper(),
            body=body,
            body_md5=hashlib.md5(body.encode()).hexdigest().upper(),
            priority=DEFAULT_PRIORITY if priority is None else priority,
            enqueue_time=now,
            visible_at=now + delay,
        )
        self.messages[message.message_id] = message
        self.sent += 1
        self._notify()
        return message

    def _take(self, count: int, now: float) -> list[Message]:
        visible = [m for m in self.messages.values() if m.visible_at <= now]
        # sorted() is stable: within a priority, the oldest first.
        taken = sorted(visible, key=lambda m: m.priority)[:count]
        for message in taken:
            message.dequeue_count += 1
            if message.first_dequeue_time is None:
                message.first_dequeue_time = now
            self._new_handle(message, now + self.attributes.visibility_timeout)
        self.received += len(taken)
        return taken

    def _new_handle(self, message: Message, visible_at: float) -> None:
        if message.receipt_handle is not None:
            del self._by_handle[message.receipt_handle]
        content = f"{message.number}-{next(self._receipts)}".encode()
        message.receipt_handle = "1-" + base64.b64encode(content).decode()
        message.visible_at = visible_at
        self._by_handle[message.receipt_handle] = message

    async def receive(self, count: int, wait_seconds: int) -> list[Message]:
        """Up to `count` visible messages, waiting up to `wait_seconds` for the first."""
        deadline = time.monotonic() + wait_seconds
        while True:
            now = time.time()
            taken = self._take(count, now)
            left = deadline - time.monotonic()
            if taken or self._closed or left <= 0:
                return taken
            hidden = [m.visible_at for m in self.messages.values() if m.visible_at > now]
            if hidden:
                # Wake when the first hidden message shows again, if that is sooner.
                left = min(left, min(hidden) - now)
            changed = self._changed
            self.waiting += 1
            try:
                async with asyncio.timeout(left):
                    await changed.wait()
            except TimeoutError:
                pass
            finally:
                self.waiting -= 1

    def received_message(self, handle: str) -> Message:
        """The message this receipt handle is the current handle of, while it is hidden."""
        match = _RECEIPT_HANDLE.fullmatch(handle)
        try:
            content = base64.b64decode(match[1], validate=True) if match else b""
        except binascii.Error:
            content = b""
        if not _HANDLE_CONTENT.fullmatch(content):
            raise receipt_handle_error()
        message = self._by_handle.get(handle)
        if message is None:
            raise message_not_exist(
                "no message has this receipt handle now: it was received again since, or deleted"
            )
        if message.visible_at <= time.time():
            raise message_not_exist("the visibility timeout ended, so this receipt handle expired")
        return message

    def delete(self, handle: str) -> None:
        message = self.received_message(handle)
        del self._by_handle[handle]
        del self.messages[message.message_id]
        self.deleted += 1

    def change_visibility(self, handle: str, visibility_timeout: int) -> Message:
        message = self.received_message(handle)
        self._new_handle(message, time.time() + visibility_timeout)
        self._notify()
        return message

    def counts(self) -> dict[str, int]:
        """Messages by state now: visible (Active), invisible (Inactive), delayed (Delay)."""
        now = time.time()
        visible = sum(1 for m in self.messages.values() if m.visible_at <= now)
        delayed = sum(
            1 for m in self.messages.values() if m.visible_at > now and m.dequeue_count == 0
        )
        return {
            "visible": visible,
            "invisible": len(self.messages) - visible - delayed,
            "delayed": delayed,
        }

    def as_attributes(self) -> dict[str, str]:
        """GetQueueAttributes' fields."""
        counts = self.counts()
        attributes = self.attributes
        return {
            "QueueName": self.name,
            "CreateTime": str(self.create_time),
            "LastModifyTime": str(self.last_modify_time),
            "VisibilityTimeout": str(attributes.visibility_timeout),
            "MaximumMessageSize": str(attributes.maximum_message_size),
            "MessageRetentionPeriod": str(attributes.message_retention_period),
            "DelaySeconds": str(attributes.delay_seconds),
            "PollingWaitSeconds": str(attributes.polling_wait_seconds),
            "ActiveMessages": str(counts["visible"]),
            "InactiveMessages": str(counts["invisible"]),
            "DelayMessages": str(counts["delayed"]),
            "LoggingEnabled": "True" if attributes.logging_enabled else "False",
        }


class MnsQueues:
    """Every queue, by name."""

    def __init__(self) -> None:
        self.queues: dict[str, Queue] = {}

    def create(self, name: str, attributes: QueueAttributes) -> bool:
        """True if created; False if it exists with these attributes (else QueueAlreadyExist)."""
        check_queue_name(name)
        existing = self.queues.get(name)
        if existing is not None:
            if existing.attributes != attributes:
                raise MnsError(
                    409,
                    "QueueAlreadyExist",
                    "The queue you want to create is already exist (with other attributes).",
                )
            return False
        self.queues[name] = Queue(name, attributes)
        logger.info("queue_created", queue=name)
        return True

    def get(self, name: str) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            raise queue_not_exist()
        return queue

    def delete(self, name: str) -> None:
        self.get(name).close()
        del self.queues[name]
        logger.info("queue_deleted", queue=name)

    def close(self) -> None:
        """End every long poll now: the emulator is stopping."""
        for queue in self.queues.values():
            queue.close()

    def state(self) -> dict[str, dict[str, int]]:
        return {
            name: {
                **queue.counts(),
                "sent": queue.sent,
                "received": queue.received,
                "deleted": queue.deleted,
                "waiting": queue.waiting,
            }
            for name, queue in self.queues.items()
        }


Operation = Callable[[Request, str], Awaitable[Response]]


async def _unless_disconnected(
    request: Request, receiving: Awaitable[list[Message]]
) -> list[Message]:
    """A long poll's messages, or none once its client has gone: messages taken for a closed
    connection would stay hidden for the VisibilityTimeout with a handle nobody holds."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    poll, watch = asyncio.ensure_future(receiving), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({poll, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (watch, poll):  # a poll still waiting holds no message yet
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
    return [] if poll.cancelled() else poll.result()


async def read_body(request: Request) -> bytes:
    """The request body, refused past MAX_REQUEST_BODY without reading it all."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REQUEST_BODY:
            raise invalid_argument(
                f"The request body is larger than {MAX_REQUEST_BODY} bytes, the emulator's limit."
            )
    return bytes(body)


def query_params(request: Request, allowed: set[str]) -> Mapping[str, str]:
    params = request.query_params
    for name in params:
        if name not in allowed:
            raise MnsError(
                400,
                "InvalidQueryString",
                f'Http request URL contains invalid querystring item "{name}".',
            )
    return params


def required_param(params: Mapping[str, str], name: str, code: str) -> str:
    value = params.get(name)
    if not value:
        raise MnsError(400, code, f"{name} is required.")
    return value


def parse_message(element: Any) -> tuple[str, int | None, int | None]:
    """(body, DelaySeconds, Priority) of a `<Message>` element."""
    given = children_text(element)
    # The body is kept exactly as sent (no stripping), as its MD5 is of what was sent.
    body = next((child.text or "" for child in element if local_name(child) == "MessageBody"), "")
    delay = given.get("DelaySeconds")
    priority = given.get("Priority")
    return (
        body,
        bounded_int("DelaySeconds", delay, 0, MAX_DELAY_SECONDS, "seconds") if delay else None,
        bounded_int("Priority", priority, 1, 16) if priority else None,
    )


class QueueApi:
    """MNS's REST API over `queues`, each request authenticated first."""

    def __init__(self, queues: MnsQueues, authenticator: MnsAuthenticator) -> None:
        self._queues = queues
        self._authenticator = authenticator

    def routes(self) -> list[Route]:
        return [
            Route("/queues/{name}", self.queue, methods=["PUT", "GET", "DELETE"]),
            Route(
                "/queues/{name}/messages", self.messages, methods=["POST", "GET", "DELETE", "PUT"]
            ),
        ]

    async def queue(self, request: Request) -> Response:
        operations: dict[str, Operation] = {
            "PUT": self._put_queue,
            "GET": self._get_queue,
            "DELETE": self._delete_queue,
        }
        return await self._answer(request, operations[request.method])

    async def messages(self, request: Request) -> Response:
        operations: dict[str, Operation] = {
            "POST": self._send,
            "GET": self._receive,
            "DELETE": self._delete_messages,
            "PUT": self._change_visibility,
        }
        return await self._answer(request, operations[request.method])

    async def _answer(self, request: Request, operation: Operation) -> Response:
        request_id = new_request_id()
        try:
            self._authenticator.authenticate(request)
            return await operation(request, request_id)
        except MnsError as error:
            logger.info(
                "mns_request_refused",
                method=request.method,
                path=request.url.path,
                code=error.code,
                request_id=request_id,
            )
            return error_response(error, request_id)

    async def _put_queue(self, request: Request, request_id: str) -> Response:
        name = request.path_params["name"]
        params = query_params(request, {"metaoverride"})
        changes = parse_queue_attributes(await read_body(request))
        if params.get("metaoverride") == "true":
            queue = self._queues.get(name)
            queue.attributes = replace(queue.attributes, **changes)
            queue.last_modify_time = int(time.time())
            return mns_response(None, request_id, 204)
        created = self._queues.create(name, QueueAttributes(**changes))
        location = f"{request.url.scheme}://{request.headers.get('host', '')}/queues/{name}"
        return mns_response(None, request_id, 201 if created else 204, {"Location": location})

    async def _get_queue(self, request: Request, request_id: str) -> Response:
        query_params(request, set())
        queue = self._queues.get(request.path_params["name"])
        return mns_response(xml_document("Queue", queue.as_attributes()), request_id, 200)

    async def _delete_queue(self, request: Request, request_id: str) -> Response:
        query_params(request, set())
        self._queues.delete(request.path_params["name"])
        return mns_response(None, request_id, 204)

    async def _send(self, request: Request, request_id: str) -> Response:
        query_params(request, set())
        queue = self._queues.get(request.path_params["name"])
        body = await read_body(request)
        root = parse_document(body, "Message", "Messages")
        if local_name(root) == "Message":
            sent = queue.send(*parse_message(root))
            answer = {"MessageId": sent.message_id, "MessageBodyMD5": sent.body_md5}
            return mns_response(xml_document("Message", answer), request_id, 201)
        batch = [parse_message(child) for child in root if local_name(child) == "Message"]
        if not 1 <= len(batch) <= MAX_BATCH:
            raise invalid_argument(f"A batch holds 1 to {MAX_BATCH} Message elements.")
        # All or none: each is checked before any is sent.
        for message in batch:
            queue.check_message(*message)
        entries = [
            xml_element("Message", {"MessageId": m.message_id, "MessageBodyMD5": m.body_md5})
            for m in (queue.send(*message) for message in batch)
        ]
        return mns_response(xml_document("Messages", entries), request_id, 201)

    async def _receive(self, request: Request, request_id: str) -> Response:
        params = query_params(request, {"numOfMessages", "waitseconds"})
        queue = self._queues.get(request.path_params["name"])
        batch = "numOfMessages" in params
        count = bounded_int("numOfMessages", params["numOfMessages"], 1, MAX_BATCH) if batch else 1
        wait = queue.attributes.polling_wait_seconds
        if "waitseconds" in params:
            wait = bounded_int("waitseconds", params["waitseconds"], 0, MAX_WAIT_SECONDS, "seconds")
        received = await _unless_disconnected(request, queue.receive(count, wait))
        if not received:
            raise message_not_exist(f"no message was visible within {wait} s")
        if batch:
            entries = [xml_element("Message", message.as_received()) for message in received]
            return mns_response(xml_document("Messages", entries), request_id, 200)
        return mns_response(xml_document("Message", received[0].as_received()), request_id, 200)

    async def _delete_messages(self, request: Request, request_id: str) -> Response:
        params = query_params(request, {"ReceiptHandle"})
        queue = self._queues.get(request.path_params["name"])
        if "ReceiptHandle" in params:
            queue.delete(required_param(params, "ReceiptHandle", "MissingReceiptHandle"))
            return mns_response(None, request_id, 204)
        body = await read_body(request)
        if not body.strip():
            raise MnsError(400, "MissingReceiptHandle", "ReceiptHandle is required.")
        root = parse_document(body, "ReceiptHandles")
        handles = [(c.text or "").strip() for c in root if local_name(c) == "ReceiptHandle"]
        if not 1 <= len(handles) <= MAX_BATCH:
            raise invalid_argument(f"A batch holds 1 to {MAX_BATCH} ReceiptHandle elements.")
        failed: list[Any] = []
        for handle in handles:
            try:
                queue.delete(handle)
            except MnsError as error:
                failed.append(
                    xml_element(
                        "Error",
                        {
                            "ErrorCode": error.code,
                            "ErrorMessage": error.message,
                            "ReceiptHandle": handle,
                        },
                    )
                )
        if failed:
            # As MNS: the others are deleted, and the failed ones listed with 404.
            return mns_response(xml_document("Errors", failed), request_id, 404)
        return mns_response(None, request_id, 204)

    async def _change_visibility(self, request: Request, request_id: str) -> Response:
        params = query_params(request, {"ReceiptHandle", "VisibilityTimeout"})
        queue = self._queues.get(request.path_params["name"])
        handle = required_param(params, "ReceiptHandle", "MissingReceiptHandle")
        timeout = bounded_int(
            "VisibilityTimeout",
            required_param(params, "VisibilityTimeout", "MissingVisibilityTimeout"),
            0,
            MAX_VISIBILITY_TIMEOUT,
            "seconds",
        )
        message = queue.change_visibility(handle, timeout)
        assert message.receipt_handle is not None
        answer = {
            "ReceiptHandle": message.receipt_handle,
            "NextVisibleTime": milliseconds(message.visible_at),
        }
        return mns_response(xml_document("ChangeVisibility", answer), request_id, 200)
