"""An MNS (Simple Message Queue) queue over MNS's REST API: the calls ingest makes, async.

Why not the official `aliyun-mns-sdk`: it is synchronous (http.client), so each long poll of up
to 30 s would hold a thread that cannot be cancelled, keeping `serve` from stopping until it
returns, and its objects are not thread-safe. The REST calls ingest needs are five, the
signature is `webhook.mns_signature` (which the emulator's queue checks too, and which tests
compare with the SDK's), and httpx makes each call cancellable with a bounded timeout. Tests
drive the emulator's queue with the official SDK, so both speak the same MNS.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import httpx

from webhook.mns_signature import MNS_VERSION, authorization

if TYPE_CHECKING:
    from alibabacloud_credentials.client import Client as CredentialClient

MAX_BATCH = 16  # messages per receive or delete, MNS's limit
MAX_WAIT_SECONDS = 30  # longest long poll MNS allows
_CONNECT_TIMEOUT_SECONDS = 10.0
# MNS's rule for queue names (CreateQueue's reference).
QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,119}")
QUEUE_NAME_RULE = "letters, digits and hyphens, a letter or digit first, at most 120"
# Retried by nature: the same call may succeed a moment later.
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "ServiceBusy", "NetworkError"}
_XML = "text/xml;charset=UTF-8"


@dataclass(frozen=True)
class AccessKey:
    id: str
    secret: str
    security_token: str | None = None


Credentials = Callable[[], Awaitable[AccessKey]]
"""Where each request's AccessKey comes from (asked every time: STS keys are refreshed)."""


def static_credentials(key: AccessKey) -> Credentials:
    async def credentials() -> AccessKey:
        return key

    return credentials


def chain_credentials(client: CredentialClient) -> Credentials:
    """The Alibaba Cloud default credential chain's current key (see webhook.vod)."""

    async def credentials() -> AccessKey:
        credential = await client.get_credential_async()
        return AccessKey(
            credential.get_access_key_id(),
            credential.get_access_key_secret(),
            credential.get_security_token() or None,
        )

    return credentials


@dataclass(frozen=True)
class MnsMessage:
    message_id: str
    receipt_handle: str
    body: str
    """As MNS holds it: VOD writes JSON; a producer using an SDK's default writes Base64."""
    dequeue_count: int
    """How many times it has been received, this time included."""
    enqueue_time_ms: int


@dataclass(frozen=True)
class DeleteFailure:
    receipt_handle: str
    code: str
    message: str


class MnsError(Exception):
    """MNS refused a call (its error code), or could not be reached (`NetworkError`)."""

    def __init__(
        self, code: str, message: str, *, status: int | None = None, request_id: str = ""
    ) -> None:
        suffix = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{code}: {message}{suffix}")
        self.code = code
        self.message = message
        self.status = status
        self.request_id = request_id

    @property
    def transient(self) -> bool:
        return self.code in _TRANSIENT_CODES or (self.status or 0) >= 500


def endpoint_problem(endpoint: str) -> str | None:
    """Why `endpoint` is not an MNS endpoint URL (`https://<account>.mns.<region>.aliyuncs.com`
    or `http://host:port`), or None."""
    parts = urlsplit(endpoint)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return "must be an http(s) URL such as https://<account-id>.mns.cn-shanghai.aliyuncs.com"
    if parts.path.strip("/") or parts.query or parts.fragment:
        return "must be the endpoint alone, without a path or query"
    return None


class MnsQueue:
    """One queue of one MNS endpoint. Each call raises MnsError when it fails."""

    def __init__(self, endpoint: str, name: str, credentials: Credentials) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.name = name
        self._credentials = credentials
        self._path = f"/queues/{name}/messages"
        # trust_env=False: the queue is dialled directly, as configured, never via a proxy
        # this host's environment happens to name.
        self._http = httpx.AsyncClient(base_url=self.endpoint, trust_env=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def receive(self, count: int, wait_seconds: int) -> list[MnsMessage]:
        """Up to `count` messages, waiting up to `wait_seconds` for the first (a long poll);
        [] when none came. Each is invisible to other receivers for the queue's
        VisibilityTimeout, until deleted or made visible again."""
        query = f"numOfMessages={count}&waitseconds={wait_seconds}"
        response = await self._call(
            "GET", f"{self._path}?{query}", read_seconds=wait_seconds + _CONNECT_TIMEOUT_SECONDS
        )
        if response is None:  # MessageNotExist: the poll ended empty
            return []
        return [_message(element) for element in _children(_root(response), "Message")]

    async def delete(self, receipt_handles: list[str]) -> list[DeleteFailure]:
        """Delete the messages received with these handles (at most 16); the ones MNS could
        not delete (a handle gone stale: the message was received again since)."""
        items = "".join(
            f"<ReceiptHandle>{escape(handle)}</ReceiptHandle>" for handle in receipt_handles
        )
        body = f'<?xml version="1.0" encoding="UTF-8"?><ReceiptHandles xmlns="{_NS}">{items}'
        body += "</ReceiptHandles>"
        try:
            await self._call("DELETE", self._path, body=body)
        except _PartialFailure as failure:
            return failure.failures
        return []

    async def change_visibility(self, receipt_handle: str, seconds: int) -> str:
        """Make the message visible again in `seconds`; returns its new receipt handle."""
        # The handle goes in unquoted, as the SDK sends it: MNS signs the resource as sent.
        query = f"ReceiptHandle={receipt_handle}&VisibilityTimeout={seconds}"
        response = await self._call("PUT", f"{self._path}?{query}")
        root = _root(response) if response is not None else None
        handle = _text(root, "ReceiptHandle") if root is not None else ""
        return handle or receipt_handle

    async def send(self, body: str) -> str:
        """Put a message in the queue (as a producer would); returns its MessageId."""
        payload = (
            f'<?xml version="1.0" encoding="UTF-8"?><Message xmlns="{_NS}">'
            f"<MessageBody>{escape(body)}</MessageBody></Message>"
        )
        response = await self._call("POST", self._path, body=payload)
        return _text(_root(response), "MessageId") if response is not None else ""

    async def _call(
        self, method: str, resource: str, *, body: str = "", read_seconds: float = 30.0
    ) -> bytes | None:
        """The response body; None for MessageNotExist (an empty receive)."""
        key = await self._credentials()
        headers = {
            "date": email.utils.formatdate(usegmt=True),
            "x-mns-version": MNS_VERSION,
        }
        content = body.encode()
        if content:
            # As the SDK sends it: Base64 of the MD5's hex digest.
            digest = hashlib.md5(content, usedforsecurity=False).hexdigest().encode()
            headers["content-md5"] = base64.b64encode(digest).decode()
            headers["content-type"] = _XML
        headers["authorization"] = authorization(key.id, key.secret, method, headers, resource)
        if key.security_token:
            headers["security-token"] = key.security_token
        try:
            response = await self._http.request(
                method,
                resource,
                content=content or None,
                headers=headers,
                timeout=httpx.Timeout(read_seconds, connect=_CONNECT_TIMEOUT_SECONDS),
            )
        except httpx.HTTPError as exc:
            raise MnsError("NetworkError", f"{type(exc).__name__}: {exc}") from None
        if response.status_code < 300:
            return response.content
        error = _error(response)
        if error.code == "MessageNotExist" and method == "GET":
            return None
        if method == "DELETE" and error.code == "" and response.content:
            raise _PartialFailure(_delete_failures(response.content))
        raise error


_NS = "http://mns.aliyuncs.com/doc/v1/"


class _PartialFailure(Exception):
    def __init__(self, failures: list[DeleteFailure]) -> None:
        self.failures = failures


def _root(content: bytes) -> ElementTree.Element:
    try:
        return ElementTree.fromstring(content)
    except ElementTree.ParseError as exc:
        raise MnsError("MalformedResponse", f"MNS answered with unreadable XML: {exc}") from None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [child for child in element if _local(child.tag) == name]


def _text(element: ElementTree.Element, name: str) -> str:
    for child in element:
        if _local(child.tag) == name:
            return child.text or ""
    return ""


def _message(element: ElementTree.Element) -> MnsMessage:
    try:
        return MnsMessage(
            message_id=_text(element, "MessageId"),
            receipt_handle=_text(element, "ReceiptHandle"),
            body=_text(element, "MessageBody"),
            dequeue_count=int(_text(element, "DequeueCount") or 1),
            enqueue_time_ms=int(_text(element, "EnqueueTime") or 0),
        )
    except ValueError as exc:
        raise MnsError("MalformedResponse", f"a message with a bad number: {exc}") from None


def _error(response: httpx.Response) -> MnsError:
    """The error MNS answered with; code "" for a batch delete's list of failures."""
    try:
        root = ElementTree.fromstring(response.content)
    except ElementTree.ParseError:
        return MnsError(
            "UnexpectedResponse",
            f"HTTP {response.status_code}: {response.text[:200]!r}",
            status=response.status_code,
        )
    if _local(root.tag) == "Errors":
        return MnsError("", "", status=response.status_code)
    return MnsError(
        _text(root, "Code") or f"HTTP{response.status_code}",
        _text(root, "Message"),
        status=response.status_code,
        request_id=_text(root, "RequestId") or response.headers.get("x-mns-request-id", ""),
    )


def _delete_failures(content: bytes) -> list[DeleteFailure]:
    return [
        DeleteFailure(
            receipt_handle=_text(error, "ReceiptHandle"),
            code=_text(error, "ErrorCode"),
            message=_text(error, "ErrorMessage"),
        )
        for error in _children(_root(content), "Error")
    ]
