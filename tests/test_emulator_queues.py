"""The emulator's MNS queues, driven by the official MNS SDK (synchronous, so in a thread) over
loopback HTTP; and VOD's delivery of events into them, set up with the official VOD SDK."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_vod20170321 import models
from alibabacloud_vod20170321.client import Client
from mns.account import Account
from mns.mns_exception import MNSServerException
from mns.queue import Message, QueueMeta

from tests.conftest import ServeApp, eventually, wait_for
from tests.processes import ACCESS_KEY_ID, ACCESS_KEY_SECRET, emulating, run
from webhook.emulator import EmulatorOptions, create_emulator_app
from webhook.emulator.queues import Queue, QueueAttributes
from webhook.mns_signature import authorization

# The SDK's get_attributes reads the queue's message counts through properties it deprecates.
sdk_deprecations = pytest.mark.filterwarnings(
    "ignore:Call to deprecated function:DeprecationWarning"
)

KEY_ID = "LTAI5tMnsEmulatorTest"
SECRET = "MnsEmulatorTestSecret0123456789"


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The VOD SDK's async client sends through $HTTP_PROXY when set; loopback must stay direct.
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class RunningEmulator:
    base_url: str
    accounts: list[Account]

    def account(self, key_id: str = KEY_ID, secret: str = SECRET) -> Account:
        account = Account(self.base_url, key_id, secret)
        self.accounts.append(account)
        return account

    def queue(self, name: str, *, encoding: bool = True, **kwargs: Any) -> Any:
        queue = self.account(**kwargs).get_queue(name)
        queue.set_encoding(encoding)
        return queue

    def vod(self) -> Any:
        port = urlsplit(self.base_url).port
        config = open_api_models.Config(
            access_key_id=KEY_ID,
            access_key_secret=SECRET,
            endpoint=f"127.0.0.1:{port}",
            protocol="http",
            region_id="cn-shanghai",
        )
        return Client(config)

    async def state(self) -> dict[str, Any]:
        async with httpx.AsyncClient(trust_env=False) as http:
            response = await http.get(f"{self.base_url}/_emulator/state")
        state: dict[str, Any] = response.json()
        return state

    async def queue_state(self, name: str) -> dict[str, int]:
        counts: dict[str, int] = (await self.state())["queues"][name]
        return counts

    async def job(self, job_id: str) -> dict[str, Any]:
        return next(job for job in (await self.state())["jobs"] if job["job_id"] == job_id)


StartEmulator = Callable[..., Awaitable[RunningEmulator]]


@pytest.fixture
def accounts() -> Iterator[list[Account]]:
    """Every MNS SDK account a test makes; their kept-alive connections are closed after it."""
    made: list[Account] = []
    yield made
    for account in made:
        account.mns_client.close_connection()


@pytest.fixture
def start_emulator(serve_app: ServeApp, accounts: list[Account]) -> StartEmulator:
    async def start(**overrides: Any) -> RunningEmulator:
        options: dict[str, Any] = {"access_keys": {KEY_ID: SECRET}, "delay": 0.1, **overrides}
        app = create_emulator_app(EmulatorOptions(**options))
        return RunningEmulator(await serve_app(lambda _: app), accounts)

    return start


async def sdk(call: Callable[..., Any], *args: Any) -> Any:
    """Run a (blocking) MNS SDK call off the event loop the emulator serves on."""
    return await asyncio.to_thread(call, *args)


async def sdk_error(call: Callable[..., Any], *args: Any) -> MNSServerException:
    with pytest.raises(MNSServerException) as caught:
        await sdk(call, *args)
    return caught.value


def meta(**attributes: int) -> QueueMeta:
    queue_meta = QueueMeta()
    for name, value in attributes.items():
        getattr(queue_meta, f"set_{name}")(value)
    return queue_meta


def md5_upper(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest().upper()


def signed_request(
    base_url: str,
    method: str,
    resource: str,
    body: bytes = b"",
    *,
    secret: str = SECRET,
    date: str | None = None,
    version: str = "2015-06-06",
) -> httpx.Request:
    """A raw request signed as the SDK signs it."""
    headers = {
        "date": date or formatdate(usegmt=True),
        "x-mns-version": version,
        "content-type": "text/xml;charset=UTF-8",
    }
    headers["authorization"] = authorization(KEY_ID, secret, method, headers, resource)
    return httpx.Request(method, base_url + resource, headers=headers, content=body)


async def send_raw(request: httpx.Request) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False) as http:
        return await http.send(request)


def assert_mns_error(response: httpx.Response, status: int, code: str) -> str:
    """The error's Message, once the answer is MNS's error shape with this status and code."""
    assert response.status_code == status, response.text
    assert response.headers["x-mns-request-id"]
    body = response.text
    assert '<Error xmlns="http://mns.aliyuncs.com/doc/v1/">' in body
    assert f"<Code>{code}</Code>" in body
    assert f"<RequestId>{response.headers['x-mns-request-id']}</RequestId>" in body
    assert "<HostId>" in body
    return body.split("<Message>")[1].split("</Message>")[0]


@sdk_deprecations
async def test_create_queue_and_attributes(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator()
    queue = emulator.queue("jobs")
    url = await sdk(queue.create, meta(visibilitytimeout=5, polling_wait_seconds=1))
    assert url == f"{emulator.base_url}/queues/jobs"
    # The same attributes again: it exists, which is fine (204).
    assert await sdk(queue.create, meta(visibilitytimeout=5, polling_wait_seconds=1)) == url
    error = await sdk_error(queue.create, meta(visibilitytimeout=6))
    assert error.type == "QueueAlreadyExist"

    attributes = await sdk(queue.get_attributes)
    assert attributes.queue_name == "jobs"
    assert attributes.visibility_timeout == 5
    assert attributes.polling_wait_seconds == 1
    assert attributes.maximum_message_size == 65536
    assert (attributes.active_messages, attributes.inactive_messages) == (0, 0)
    assert abs(attributes.create_time - time.time()) < 60

    await sdk(queue.delete)
    assert (await sdk_error(queue.get_attributes)).type == "QueueNotExist"


@sdk_deprecations
async def test_send_and_receive_base64_encoded(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(mns_queues=("jobs",))
    queue = emulator.queue("jobs")
    text = 'Grüße <b>&"all"</b>'
    sent = await sdk(queue.send_message, Message(text))
    # The SDK base64-encodes the body by default; the MD5 is of the body as sent.
    assert sent.message_body_md5 == md5_upper(base64.b64encode(text.encode()).decode())

    received = await sdk(queue.receive_message, 1)
    assert received.message_body == text.encode()
    assert received.message_id == sent.message_id
    assert received.message_body_md5 == sent.message_body_md5
    assert received.dequeue_count == 1
    assert received.priority == 8
    assert received.first_dequeue_time >= received.enqueue_time
    # Hidden for the queue's VisibilityTimeout (30 s by default).
    assert 29_000 <= received.next_visible_time - received.first_dequeue_time <= 31_000
    assert await emulator.queue_state("jobs") == {
        "visible": 0,
        "invisible": 1,
        "delayed": 0,
        "sent": 1,
        "received": 1,
        "deleted": 0,
        "waiting": 0,
    }

    await sdk(queue.delete_message, received.receipt_handle)
    attributes = await sdk(queue.get_attributes)
    assert (attributes.active_messages, attributes.inactive_messages) == (0, 0)
    assert (await emulator.queue_state("jobs"))["deleted"] == 1


async def test_send_and_receive_raw(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(mns_queues=("raw",))
    queue = emulator.queue("raw", encoding=False)
    text = '{"EventType": "DynamicImageComplete", "Note": "a < b & c"}'
    sent = await sdk(queue.send_message, Message(text))
    assert sent.message_body_md5 == md5_upper(text)
    received = await sdk(queue.receive_message, 0)
    assert received.message_body == text
    await sdk(queue.delete_message, received.receipt_handle)


async def test_batch_send_and_batch_receive(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(mns_queues=("batch",))
    queue = emulator.queue("batch", encoding=False)
    sent = await sdk(queue.batch_send_message, [Message(f"m{i}") for i in range(3)])
    assert [m.message_body_md5 for m in sent] == [md5_upper(f"m{i}") for i in range(3)]
    received = await sdk(queue.batch_receive_message, 16, 0)
    assert [m.message_body for m in received] == ["m0", "m1", "m2"]
    assert [m.message_id for m in received] == [m.message_id for m in sent]
    await sdk(queue.batch_delete_message, [m.receipt_handle for m in received])
    assert (await emulator.queue_state("batch"))["deleted"] == 3


async def test_long_poll_answers_as_soon_as_a_message_arrives(
    start_emulator: StartEmulator,
) -> None:
    emulator = await start_emulator(mns_queues=("poll",))
    receiver = emulator.queue("poll", encoding=False)
    sender = emulator.queue("poll", encoding=False)
    started = time.monotonic()
    polling = asyncio.create_task(sdk(receiver.batch_receive_message, 4, 20))

    async def waiting() -> bool:
        return (await emulator.queue_state("poll"))["waiting"] == 1

    await eventually(waiting, what="the long poll to wait")
    await sdk(sender.send_message, Message("hello"))
    received = await polling
    assert [m.message_body for m in received] == ["hello"]
    assert time.monotonic() - started < 10


async def test_empty_long_poll_ends_with_message_not_exist(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(mns_queues=("empty",))
    queue = emulator.queue("empty")
    started = time.monotonic()
    error = await sdk_error(queue.receive_message, 1)
    assert error.type == "MessageNotExist"
    assert time.monotonic() - started >= 1
    # The queue's PollingWaitSeconds applies when the request gives none (0 here: at once).
    assert (await sdk_error(queue.batch_receive_message, 2)).type == "MessageNotExist"


async def test_receive_arguments_out_of_range(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(mns_queues=("args",))
    queue = emulator.queue("args")
    assert (await sdk_error(queue.batch_receive_message, 17, 0)).type == "InvalidArgument"
    assert (await sdk_error(queue.receive_message, 31)).type == "InvalidArgument"


async def test_visibility_timeout_hands_the_message_out_again(
    start_emulator: StartEmulator,
) -> None:
    emulator = await start_emulator()
    queue = emulator.queue("short", encoding=False)
    await sdk(queue.create, meta(visibilitytimeout=1))
    await sdk(queue.send_message, Message("again"))
    first = await sdk(queue.receive_message, 0)
    # Waits for it to show again, about 1 s on.
    second = await sdk(queue.receive_message, 5)
    assert second.message_id == first.message_id
    assert second.dequeue_count == 2
    assert second.first_dequeue_time == first.first_dequeue_time
    assert second.receipt_handle != first.receipt_handle

    error = await sdk_error(queue.delete_message, first.receipt_handle)
    assert error.type == "MessageNotExist"
    await sdk(queue.delete_message, second.receipt_handle)


async def test_a_handle_expires_with_the_visibility_timeout(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator()
    queue = emulator.queue("expiring", encoding=False)
    await sdk(queue.create, meta(visibilitytimeout=1))
    await sdk(queue.send_message, Message("late"))
    received = await sdk(queue.receive_message, 0)

    async def visible_again() -> bool:
        return (await emulator.queue_state("expiring"))["visible"] == 1

    await eventually(visible_again, what="the message to be visible again")
    # Nobody received it again, yet the handle is dead, as at MNS.
    error = await sdk_error(queue.delete_message, received.receipt_handle)
    assert error.type == "MessageNotExist"
    assert (await sdk_error(queue.delete_message, "not-a-handle")).type == "ReceiptHandleError"


async def test_batch_delete_deletes_the_good_and_reports_the_stale(
    start_emulator: StartEmulator,
) -> None:
    emulator = await start_emulator(mns_queues=("mixed",))
    queue = emulator.queue("mixed", encoding=False)
    await sdk(queue.batch_send_message, [Message(f"m{i}") for i in range(3)])
    received = await sdk(queue.batch_receive_message, 3, 0)
    stale = received[0].receipt_handle
    # Changing the visibility issues a new handle: the first one is stale from then on.
    await sdk(queue.change_message_visibility, stale, 60)

    handles = [stale, received[1].receipt_handle, received[2].receipt_handle, "1-bogus"]
    error = await sdk_error(queue.batch_delete_message, handles)
    assert error.type == "MessageNotExist"
    assert [(e["ReceiptHandle"], e["ErrorCode"]) for e in error.sub_errors] == [
        (stale, "MessageNotExist"),
        ("1-bogus", "ReceiptHandleError"),
    ]
    counts = await emulator.queue_state("mixed")
    assert (counts["deleted"], counts["invisible"]) == (2, 1)


async def test_change_visibility(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(mns_queues=("change",))
    queue = emulator.queue("change", encoding=False)
    await sdk(queue.send_message, Message("soon"))
    first = await sdk(queue.receive_message, 0)
    changed = await sdk(queue.change_message_visibility, first.receipt_handle, 0)
    assert changed.receipt_handle not in {"", first.receipt_handle}
    assert abs(int(changed.next_visible_time) / 1000 - time.time()) < 5
    # Visible at once: handed out again.
    again = await sdk(queue.receive_message, 0)
    assert (again.message_id, again.dequeue_count) == (first.message_id, 2)
    error = await sdk_error(queue.change_message_visibility, first.receipt_handle, 10)
    assert error.type == "MessageNotExist"
    kept = await sdk(queue.change_message_visibility, again.receipt_handle, 600)
    assert int(kept.next_visible_time) - again.next_visible_time > 500_000
    await sdk(queue.delete_message, kept.receipt_handle)


async def test_requests_are_authenticated(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(mns_queues=("guarded",))
    wrong_secret = emulator.queue("guarded", secret="NotTheSecret0123456789")
    assert (await sdk_error(wrong_secret.get_attributes)).type == "SignatureDoesNotMatch"
    unknown_key = emulator.queue("guarded", key_id="LTAI5tNobody")
    assert (await sdk_error(unknown_key.send_message, Message("x"))).type == "InvalidAccessKeyId"
    unknown_queue = emulator.queue("missing")
    assert (await sdk_error(unknown_queue.send_message, Message("x"))).type == "QueueNotExist"


async def test_refusals_in_mns_error_shape(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(mns_queues=("raw",))
    base = emulator.base_url
    bad_xml = signed_request(base, "POST", "/queues/raw/messages", b"<Message><MessageBody>x")
    message = assert_mns_error(await send_raw(bad_xml), 400, "MalformedXML")
    assert "not well-formed" in message

    wrong_root = signed_request(base, "POST", "/queues/raw/messages", b"<Queue/>")
    assert "Queue" in assert_mns_error(await send_raw(wrong_root), 400, "InvalidArgument")

    big = b"<Message><MessageBody>" + b"x" * 65537 + b"</MessageBody></Message>"
    too_big = signed_request(base, "POST", "/queues/raw/messages", big)
    message = assert_mns_error(await send_raw(too_big), 400, "InvalidArgument")
    assert "MessageBody" in message
    assert "65536" in message

    unsigned = httpx.Request("GET", f"{base}/queues/raw", headers={"x-mns-version": "2015-06-06"})
    assert_mns_error(await send_raw(unsigned), 400, "MissingAuthorizationHeader")
    old = formatdate(time.time() - 16 * 60, usegmt=True)
    assert_mns_error(await send_raw(signed_request(base, "GET", "/queues/raw", date=old)), 408, "TimeExpired")  # fmt: skip
    other_version = signed_request(base, "GET", "/queues/raw", version="2014-07-08")
    assert_mns_error(await send_raw(other_version), 400, "InvalidRequestURL")
    peek = signed_request(base, "GET", "/queues/raw/messages?peekonly=true")
    assert_mns_error(await send_raw(peek), 400, "InvalidQueryString")
    assert (await emulator.queue_state("raw"))["sent"] == 0


# (method, resource, body, status, code): requests MNS refuses, and how.
# fmt: off
BAD_REQUESTS = [
    ("GET", "/queues/q/messages?waitseconds=%C2%B2", b"", 400, "InvalidArgument"),
    ("GET", "/queues/q/messages?numOfMessages=99999999999999999999999", b"", 400, "InvalidArgument"),
    ("POST", "/queues/q/messages", b"\xff\xfe<Message>", 400, "MalformedXML"),
    ("POST", "/queues/q/messages", b"<!DOCTYPE x [<!ENTITY a 'b'>]><Message/>", 400, "MalformedXML"),
    ("POST", "/queues/q/messages", b"<Message><MessageBody>x</MessageBody><Priority>0</Priority></Message>", 400, "InvalidArgument"),
    ("POST", "/queues/q/messages", b"<Messages></Messages>", 400, "InvalidArgument"),
    ("DELETE", "/queues/q/messages?ReceiptHandle=1-AAAA", b"", 400, "ReceiptHandleError"),
    ("DELETE", "/queues/q/messages", b"", 400, "MissingReceiptHandle"),
    ("PUT", "/queues/q/messages?ReceiptHandle=1-MS0x", b"", 400, "MissingVisibilityTimeout"),
    ("PUT", "/queues/q/messages?ReceiptHandle=1-MS0x&VisibilityTimeout=5", b"", 404, "MessageNotExist"),
    ("PUT", "/queues/%C3%A9", b"", 400, "InvalidQueueName"),
    ("PUT", "/queues/new", b"<Queue><Foo>1</Foo></Queue>", 400, "InvalidArgument"),
    ("PUT", "/queues/missing?metaoverride=true", b"<Queue/>", 404, "QueueNotExist"),
]
# fmt: on


@pytest.mark.parametrize(("method", "resource", "body", "status", "code"), BAD_REQUESTS)
async def test_bad_requests_are_refused_clearly(
    start_emulator: StartEmulator, method: str, resource: str, body: bytes, status: int, code: str
) -> None:
    emulator = await start_emulator(mns_queues=("q",))
    request = signed_request(emulator.base_url, method, resource, body)
    assert assert_mns_error(await send_raw(request), status, code)


async def test_long_polls_end_when_the_queues_close() -> None:
    queue = Queue("closing", QueueAttributes())
    polling = asyncio.create_task(queue.receive(1, 30))

    async def waiting() -> bool:
        return queue.waiting == 1

    await eventually(waiting, what="the long poll to wait")
    queue.close()
    async with asyncio.timeout(2):
        assert await polling == []


async def submit(client: Any) -> str:
    response = await client.submit_dynamic_image_job_async(
        models.SubmitDynamicImageJobRequest(video_id="video-1", dynamic_image_template_id="t-1")
    )
    job_id: str = response.body.dynamic_image_job.job_id
    return job_id


async def settled(emulator: RunningEmulator, job_id: str, within: float = 6) -> dict[str, Any]:
    async def done() -> bool:
        return bool((await emulator.job(job_id))["callback"] != "pending")

    await eventually(done, within, f"job {job_id} to settle")
    return await emulator.job(job_id)


async def test_vod_writes_the_event_into_the_queue(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(mns_queues=("vod-events",))
    vod = emulator.vod()
    await vod.set_message_callback_async(
        models.SetMessageCallbackRequest(
            callback_type="MNS",
            mns_endpoint=emulator.base_url,
            mns_queue_name="vod-events",
            event_type_list="DynamicImageComplete",
        )
    )
    job_id = await submit(vod)
    queue = emulator.queue("vod-events", encoding=False)
    message = await sdk(queue.receive_message, 5)
    # The event's JSON is the raw body, as VOD writes it.
    event = json.loads(message.message_body)
    assert (event["EventType"], event["JobId"], event["Status"]) == (
        "DynamicImageComplete",
        job_id,
        "success",
    )
    assert json.loads(event["DynamicImageJobInfo"])["JobId"] == job_id
    await sdk(queue.delete_message, message.receipt_handle)

    job = await settled(emulator, job_id)
    assert (job["callback"], job["attempts"], job["deliveries"]) == ("delivered", 1, 1)
    config = (await emulator.state())["message_callback"]
    assert (config["callback_type"], config["mns_endpoint"], config["mns_queue_name"]) == (
        "MNS",
        emulator.base_url,
        "vod-events",
    )


async def test_mns_mode_from_the_start_with_faults(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(mns_queue="events", duplicate_rate=1.0)
    vod = emulator.vod()
    response = await vod.get_message_callback_async(models.GetMessageCallbackRequest())
    assert response.body.message_callback.callback_type == "MNS"
    assert response.body.message_callback.mns_queue_name == "events"
    job_id = await submit(vod)
    job = await settled(emulator, job_id)
    # Duplicated: written twice, as two messages.
    assert (job["callback"], job["deliveries"]) == ("delivered", 2)
    queue = emulator.queue("events", encoding=False)
    messages = await sdk(queue.batch_receive_message, 16, 0)
    assert [json.loads(m.message_body)["JobId"] for m in messages] == [job_id, job_id]
    assert messages[0].message_id != messages[1].message_id


async def test_dropped_event_is_not_written(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(mns_queue="events", drop_rate=1.0)
    job = await settled(emulator, await submit(emulator.vod()))
    assert (job["callback"], job["attempts"]) == ("dropped_by_fault", 0)
    assert (await emulator.queue_state("events"))["sent"] == 0


async def test_missing_queue_fails_after_retries(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(mns_queue="events")
    # The queue is deleted under VOD's feet: its writes find no queue.
    await sdk(emulator.queue("events").delete)
    job = await settled(emulator, await submit(emulator.vod()))
    assert (job["callback"], job["attempts"], job["deliveries"]) == ("failed_after_retries", 3, 0)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"mns_queue": "q", "callback_url": "https://example.com/cb"}, "exclude each other"),
        ({"mns_queues": ("-lead",)}, "not valid at MNS"),
        ({"mns_queue": "has_underscore"}, "not valid at MNS"),
    ],
)
def test_mns_options_are_checked(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        EmulatorOptions(access_keys={KEY_ID: SECRET}, **overrides)


def test_cli_serves_queues_and_ends_long_polls_as_it_stops() -> None:
    with emulating("--mns-queue", "events", "--queue", "other") as (base, process):
        state = httpx.get(f"{base}/_emulator/state").json()
        assert state["message_callback"]["callback_type"] == "MNS"
        assert state["message_callback"]["mns_endpoint"] == base
        assert state["message_callback"]["mns_queue_name"] == "events"
        assert set(state["queues"]) == {"events", "other"}
        account = Account(base, ACCESS_KEY_ID, ACCESS_KEY_SECRET)
        try:
            with ThreadPoolExecutor(1) as pool:
                polling = pool.submit(account.get_queue("other").receive_message, 30)
                wait_for(
                    lambda: (
                        httpx.get(f"{base}/_emulator/state").json()["queues"]["other"]["waiting"]
                        == 1
                    ),
                    10,
                    "the long poll to wait",
                )
                started = time.monotonic()
                # uvicorn re-raises the SIGTERM it handled once it is done: no exit code to check.
                process.stop()
                with pytest.raises(MNSServerException) as caught:
                    polling.result(10)
            assert caught.value.type == "MessageNotExist"
            assert time.monotonic() - started < 10
        finally:
            account.mns_client.close_connection()


def test_cli_refuses_mns_queue_with_callback_url() -> None:
    result = run("emulator", "--access-key", "id:secret", "--mns-queue", "q",
                 "--callback-url", "https://example.com/cb")  # fmt: skip
    assert result.returncode == 2
    assert "callback_url and mns_queue exclude each other" in result.stderr
