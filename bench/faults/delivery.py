"""Callbacks delivered the way VOD delivers them, and a ledger of every answer.

VOD posts a callback with a 5 s timeout, tries up to 3 times 1 s apart, counts only a 200 and
then drops the callback for good; it sometimes delivers one callback twice.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.processes import AUTH_KEY
from webhook.sender import sample_dynamic_image_event, signed_headers

SAMPLES = Path(__file__).resolve().parents[2] / "tests" / "samples"
VOD_ATTEMPTS = 3
VOD_INTERVAL_SECONDS = 1.0
VOD_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Answer:
    started: float  # time.monotonic()
    ended: float
    status: int | None  # None: no HTTP answer (refused, reset, timed out)
    error: str  # the answer's `error`, or the transport failure's name
    well_formed: bool  # a 200, or a JSON body with `error` and `detail` and no traceback

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class Ledger:
    """Everything sent in a scenario and every answer it got."""

    answers: list[Answer] = field(default_factory=list)
    sent: set[str] = field(default_factory=set)  # JobIds of every callback
    acknowledged: set[str] = field(default_factory=set)  # JobIds answered 200 at least once
    deliveries: int = 0

    def statuses(self) -> Counter[str]:
        return Counter("none" if a.status is None else str(a.status) for a in self.answers)

    def gave_up(self) -> int:
        """Callbacks VOD would have dropped: no delivery of them got a 200."""
        return len(self.sent - self.acknowledged)


def callback_body(job_id: str, rng: random.Random) -> bytes:
    """A DynamicImageComplete for `job_id`: mostly successes, some failures (VOD's sample)."""
    if rng.random() < 0.1:
        event = json.loads((SAMPLES / "dynamic_image_fail.json").read_text())
        event["JobId"] = job_id
    else:
        event = sample_dynamic_image_event(job_id)
    return json.dumps(event).encode()


def new_job_id() -> str:
    return uuid.uuid4().hex


async def post(
    client: httpx.AsyncClient,
    url: str,
    callback_url: str,
    body: bytes,
    ledger: Ledger,
    *,
    within: float = VOD_TIMEOUT_SECONDS,
) -> Answer:
    """One signed POST; its answer goes into the ledger."""
    headers = signed_headers(callback_url, AUTH_KEY)
    started = time.monotonic()
    try:
        # VOD's timeout bounds the whole exchange; httpx's bounds each read and write.
        async with asyncio.timeout(within):
            response = await client.post(url, content=body, headers=headers, timeout=within)
    except (httpx.HTTPError, TimeoutError) as exc:
        answer = Answer(started, time.monotonic(), None, type(exc).__name__, True)
    else:
        answer = Answer(started, time.monotonic(), response.status_code, *_judge(response))
    ledger.answers.append(answer)
    return answer


def _judge(response: httpx.Response) -> tuple[str, bool]:
    if "Traceback" in response.text:
        return "traceback", False
    if response.status_code == 200:
        return "", True
    try:
        data = response.json()
    except ValueError:
        return "not_json", False
    if not isinstance(data, dict):
        return "not_json", False
    return str(data.get("error", "")), "error" in data and "detail" in data


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    callback_url: str,
    job_id: str,
    body: bytes,
    ledger: Ledger,
    *,
    attempts: int = VOD_ATTEMPTS,
    within: float = VOD_TIMEOUT_SECONDS,
) -> bool:
    """Deliver one callback like VOD: True once answered 200, False when VOD gives up."""
    ledger.sent.add(job_id)
    ledger.deliveries += 1
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(VOD_INTERVAL_SECONDS)
        answer = await post(client, url, callback_url, body, ledger, within=within)
        if answer.status == 200:
            ledger.acknowledged.add(job_id)
            return True
    return False


@dataclass(frozen=True)
class Load:
    """`count` callbacks, `rate` per second at most (0: as fast as `concurrency` allows), a
    share of them delivered twice; stopped at `deadline` seconds whatever is left."""

    count: int
    concurrency: int = 32
    rate: float = 0
    duplicate_rate: float = 0.05
    attempts: int = VOD_ATTEMPTS
    timeout: float = VOD_TIMEOUT_SECONDS
    deadline: float = 300
    seed: int = 7


def http_client(connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(limits=limits)


async def run_load(
    url: str,
    callback_url: str,
    load: Load,
    ledger: Ledger,
    progress: Callable[[int], Awaitable[None]] | None = None,
) -> None:
    """Deliver `load` to `url`; `progress(n)` is awaited after the n-th callback is launched."""
    rng = random.Random(load.seed)
    gate = asyncio.Semaphore(load.concurrency)
    started = time.monotonic()
    ends_at = started + load.deadline
    async with http_client(load.concurrency * 2) as client:

        async def one(job_id: str, body: bytes, delay: float) -> None:
            try:
                await asyncio.sleep(delay)
                await deliver(
                    client, url, callback_url, job_id, body, ledger,
                    attempts=load.attempts, within=load.timeout,
                )  # fmt: skip
            finally:
                gate.release()

        tasks: set[asyncio.Task[None]] = set()
        for n in range(load.count):
            if time.monotonic() > ends_at:
                break
            if load.rate:
                await asyncio.sleep(max(0.0, started + n / load.rate - time.monotonic()))
            job_id = new_job_id()
            body = callback_body(job_id, rng)
            copies = [0.0] + ([rng.uniform(0, 0.5)] if rng.random() < load.duplicate_rate else [])
            for delay in copies:
                await gate.acquire()
                task = asyncio.create_task(one(job_id, body, delay))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if progress is not None:
                await progress(n + 1)
        if tasks:
            await asyncio.wait(tasks, timeout=max(1.0, ends_at - time.monotonic()) + 30)
        for task in tasks:
            task.cancel()
