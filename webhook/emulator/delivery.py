"""VOD's callback: the account's settings, and each finished job's event: POSTed, signed, to a
URL (HTTP), or written into an MNS queue (MNS; the emulator's own queues)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import httpx
import structlog

from webhook.emulator.jobs import EVENT_TYPE, Job, dynamic_image_event
from webhook.emulator.mns_xml import MnsError
from webhook.emulator.queues import MnsQueues
from webhook.signature import sign

# Every module of the emulator logs under one name, the package's.
logger = structlog.get_logger("webhook.emulator")

CALLBACK_TIMEOUT_SECONDS = 5.0
CALLBACK_ATTEMPTS = 3
CALLBACK_RETRY_INTERVAL_SECONDS = 1.0
DEFAULT_APP_ID = "app-1000000"


@dataclass(frozen=True)
class MessageCallback:
    """The account's callback settings, as SetMessageCallback / GetMessageCallback see them."""

    callback_type: str = "HTTP"
    callback_url: str | None = None
    event_type_list: str = "ALL"
    auth_switch: str = "off"
    auth_key: str | None = None
    app_id: str = DEFAULT_APP_ID
    mns_endpoint: str | None = None
    mns_queue_name: str | None = None

    def subscribes(self, event_type: str) -> bool:
        events = {name.strip() for name in self.event_type_list.split(",") if name.strip()}
        return bool({"ALL", event_type} & events)

    def http_target(self, event_type: str) -> str | None:
        """The URL an event of this type is POSTed to, or None when it is not sent over HTTP."""
        if self.callback_type != "HTTP" or not self.subscribes(event_type):
            return None
        return self.callback_url

    def mns_target(self, event_type: str) -> str | None:
        """The queue an event of this type is written into, or None when it is not sent by MNS.

        The emulator is its own MNS: the queue is one of its own, whatever MnsEndpoint says."""
        if self.callback_type != "MNS" or not self.subscribes(event_type):
            return None
        return self.mns_queue_name

    @property
    def signing_key(self) -> str | None:
        return self.auth_key if self.auth_switch == "on" else None

    def as_response(self) -> dict[str, str]:
        fields = {
            "AppId": self.app_id,
            "CallbackType": self.callback_type,
            "CallbackURL": self.callback_url,
            "EventTypeList": self.event_type_list,
            "AuthSwitch": self.auth_switch,
            "AuthKey": self.auth_key,
            "MnsEndpoint": self.mns_endpoint,
            "MnsQueueName": self.mns_queue_name,
        }
        return {name: value for name, value in fields.items() if value is not None}


class CallbackDelivery:
    """Calls back for each job that ends, where `message_callback` points at that moment."""

    def __init__(self, message_callback: MessageCallback, queues: MnsQueues) -> None:
        self.message_callback = message_callback
        self._queues = queues
        self._http: httpx.AsyncClient | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Hold the HTTP client the callbacks go out on while inside."""
        # trust_env=False: VOD posts straight to the URL, never through this host's proxy.
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as http:
            self._http = http
            try:
                yield
            finally:
                self._http = None

    async def send(self, job: Job) -> None:
        """Call back for a job that has just ended, applying its drop and duplicate faults."""
        config = self.message_callback
        url = config.http_target(EVENT_TYPE)
        queue = config.mns_target(EVENT_TYPE)
        if url is None and queue is None:
            job.callback = "not_subscribed"
            logger.info("callback_not_subscribed", job_id=job.job_id)
            return
        if job.faults.drop:
            job.callback = "dropped_by_fault"
            logger.info("callback_dropped_by_fault", job_id=job.job_id)
            return
        body = json.dumps(dynamic_image_event(job))
        deliver: Callable[[], Awaitable[bool]]
        if url is not None:
            deliver = partial(self._deliver, job, body.encode(), url, config.signing_key)
        else:
            assert queue is not None  # one of the two, as checked above
            deliver = partial(self._write, job, body, queue)
        delivered = await deliver()
        job.callback = "delivered" if delivered else "failed_after_retries"
        if delivered and job.faults.duplicate:
            await deliver()

    async def _write(self, job: Job, body: str, queue: str) -> bool:
        """Write the event into the queue as VOD does: 3 attempts 1 s apart (VOD's retry for
        MNS as for HTTP), the JSON as the raw message body."""
        for attempt in range(1, CALLBACK_ATTEMPTS + 1):
            if attempt > 1:
                await asyncio.sleep(CALLBACK_RETRY_INTERVAL_SECONDS)
            job.attempts += 1
            try:
                self._queues.get(queue).send(body)
            except MnsError as error:
                logger.info(
                    "callback_attempt_failed",
                    job_id=job.job_id,
                    attempt=attempt,
                    reason=error.code,
                    queue=queue,
                )
            else:
                job.deliveries += 1
                logger.info("callback_delivered", job_id=job.job_id, attempt=attempt, queue=queue)
                return True
        logger.warning("callback_failed_after_retries", job_id=job.job_id, queue=queue)
        return False

    async def _deliver(self, job: Job, body: bytes, url: str, auth_key: str | None) -> bool:
        """POST the event as VOD does: 3 attempts 1 s apart, each needing a 200 within 5 s."""
        assert self._http is not None
        for attempt in range(1, CALLBACK_ATTEMPTS + 1):
            if attempt > 1:
                await asyncio.sleep(CALLBACK_RETRY_INTERVAL_SECONDS)
            headers = {"Content-Type": "application/json"}
            if auth_key is not None:
                # Signed afresh for each attempt, as the timestamp is the time of sending.
                timestamp = str(int(time.time()))
                headers["X-VOD-TIMESTAMP"] = timestamp
                headers["X-VOD-SIGNATURE"] = sign(url, timestamp, auth_key)
            job.attempts += 1
            try:
                async with asyncio.timeout(CALLBACK_TIMEOUT_SECONDS):
                    response = await self._http.post(url, content=body, headers=headers)
            except (httpx.HTTPError, TimeoutError) as error:
                reason = type(error).__name__
            else:
                if response.status_code == 200:
                    job.deliveries += 1
                    logger.info("callback_delivered", job_id=job.job_id, attempt=attempt, url=url)
                    return True
                reason = f"HTTP {response.status_code}"
            logger.info(
                "callback_attempt_failed", job_id=job.job_id, attempt=attempt, reason=reason
            )
        logger.warning("callback_failed_after_retries", job_id=job.job_id, url=url)
        return False
