"""VERIFY_OUTCOMES: held outcomes, checked with ListDynamicImage against the emulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis
from redis.asyncio import Redis
from structlog.testing import capture_logs

from tests.conftest import (
    AUTH_KEY,
    Receiver,
    RedisServer,
    ServeApp,
    free_port,
    stream_entries,
    vod_headers,
    wait_for,
)
from tests.processes import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    emulating,
    emulator_jobs,
    env_for,
    listening,
    run,
    serving,
)
from webhook.emulator import EmulatorOptions, create_emulator_app
from webhook.events import Envelope, parse_callback
from webhook.limiter import RateLimiter
from webhook.sender import send_callback
from webhook.settings import Settings
from webhook.store import Store
from webhook.verify import Verifier, VerifyOptions
from webhook.vod import RetryPolicy, Vod

ONE_TRY = RetryPolicy(attempts=1)
QUICK = VerifyOptions(attempts=3, base_delay=0.05, max_delay=0.1, poll_seconds=0.05)


def outcome_body(
    job_id: str, video_id: str, *, file_url: str | None = None, status: str = "success"
) -> bytes:
    event: dict[str, Any] = {
        "EventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "EventType": "DynamicImageComplete",
        "VideoId": video_id,
        "Status": status,
        "JobId": job_id,
    }
    if status == "success":
        info = {"JobId": job_id, "Status": "success", "FileURL": file_url, "Width": "320"}
        event["DynamicImageJobInfo"] = json.dumps(info)
    else:
        event.update(ErrorCode="InvalidParameter", ErrorMessage="could not decode")
    return json.dumps(event).encode()


def outcome(job_id: str, video_id: str, **fields: Any) -> Envelope:
    return parse_callback(outcome_body(job_id, video_id, **fields), datetime.now(UTC))


MakeVod = Callable[..., Awaitable[Vod]]


@pytest.fixture
async def store(redis_client: Redis) -> Store:
    return Store(redis_client, prefix="vod", stream_maxlen=10_000, dedup_ttl_seconds=3600)


@pytest.fixture
def make_vod(
    serve_app: ServeApp,
    make_settings: Callable[..., Settings],
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> MakeVod:
    """A Vod on an in-process emulator (no callbacks), or on `endpoint` when given."""
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET)

    async def make(endpoint: str | None = None, **emulator: Any) -> Vod:
        if endpoint is None:
            options = EmulatorOptions(
                access_keys={ACCESS_KEY_ID: ACCESS_KEY_SECRET}, **{"delay": 0.05, **emulator}
            )
            endpoint = await serve_app(lambda _: create_emulator_app(options))
        client, key_id = Vod.sdk_client(make_settings(vod_endpoint=endpoint))
        return Vod(client, RateLimiter(store.redis, f"vod:quota:{key_id}", 100), ONE_TRY)

    return make


async def finished_job(vod: Vod, video_id: str) -> tuple[str, str]:
    """Submit a job and wait until ListDynamicImage lists it; returns (JobId, FileURL)."""
    job_id, _ = await vod.submit_dynamic_image_job(video_id, "tpl", None)
    return job_id, await listed_url(vod, video_id, job_id)


async def listed_url(vod: Vod, video_id: str, job_id: str) -> str:
    """The job's FileURL once ListDynamicImage lists it."""
    async with asyncio.timeout(10):
        while True:
            listed = {i.job_id: i for i in await vod.list_dynamic_image(video_id)}
            if job_id in listed:
                return str(listed[job_id].raw["FileURL"])
            await asyncio.sleep(0.05)


async def job_envelopes(store: Store, job_id: str) -> list[dict[str, Any]]:
    entries = await stream_entries(store.redis, store.keys.stream)
    found = [json.loads(fields["envelope"]) for _, fields in entries]
    return [e for e in found if e["job_id"] == job_id]


async def run_until_settled(verifier: Verifier, store: Store) -> None:
    """Run passes until no held outcome is left to check."""
    async with asyncio.timeout(10):
        while await store.redis.zcard(store.keys.verify_queue):
            await verifier.run_once()
            await asyncio.sleep(0.02)


async def test_a_forged_success_is_dropped_and_the_real_one_published(
    store: Store, make_vod: MakeVod
) -> None:
    vod = await make_vod()
    job_id, file_url = await finished_job(vod, "v1")
    forged = await store.hold(outcome(job_id, "v1", file_url="http://evil/pre.gif"))
    real = await store.hold(outcome(job_id, "v1", file_url=file_url))
    assert (forged.duplicate, real.duplicate) == (False, False)  # held side by side
    with capture_logs() as logs:
        await run_until_settled(Verifier(store, vod, QUICK), store)
    [published] = await job_envelopes(store, job_id)
    assert (published["result"]["file_url"], published["verified"]) == (file_url, True)
    [dropped] = [log for log in logs if log["event"] == "callback_forged"]
    assert dropped["file_url"] == "http://evil/pre.gif"
    assert dropped["reason"] == "FileURL differs from ListDynamicImage's"
    job = await store.job(job_id)
    assert job is not None
    assert (job["verified"], job["file_url"]) == ("true", file_url)
    again = await store.hold(outcome(job_id, "v1", file_url="http://evil/late.gif"))
    assert (again.duplicate, again.id) == (True, published["id"])


async def test_a_forged_fail_of_a_successful_job_is_dropped(
    store: Store, make_vod: MakeVod
) -> None:
    vod = await make_vod()
    job_id, _ = await finished_job(vod, "v1")
    await store.hold(outcome(job_id, "v1", status="fail"))
    with capture_logs() as logs:
        await run_until_settled(Verifier(store, vod, QUICK), store)
    assert await job_envelopes(store, job_id) == []
    assert [log["reason"] for log in logs if log["event"] == "callback_forged"] == [
        "ListDynamicImage lists the job as successful"
    ]


async def test_an_unlisted_success_is_checked_again_then_dropped(
    store: Store, make_vod: MakeVod
) -> None:
    vod = await make_vod()
    await store.hold(outcome("no-such-job", "v1", file_url="http://evil/x.gif"))
    with capture_logs() as logs:
        await run_until_settled(Verifier(store, vod, QUICK), store)
    assert await job_envelopes(store, "no-such-job") == []
    events = [log["event"] for log in logs if log["event"] != "vod_call_retried"]
    assert events == ["verify_retry", "verify_retry", "callback_forged"]


async def test_an_unconfirmable_fail_goes_out_unverified_and_a_confirmed_success_supersedes_it(
    store: Store, make_vod: MakeVod
) -> None:
    vod = await make_vod(delay=0.5)
    job_id, _ = await vod.submit_dynamic_image_job("v1", "tpl", None)
    await store.hold(outcome(job_id, "v1", status="fail"))  # forged while the job runs
    verifier = Verifier(store, vod, QUICK)
    await run_until_settled(verifier, store)
    [unconfirmed] = await job_envelopes(store, job_id)
    assert (unconfirmed["status"], unconfirmed["verified"]) == ("fail", False)

    file_url = await listed_url(vod, "v1", job_id)
    real = await store.hold(outcome(job_id, "v1", file_url=file_url))
    assert not real.duplicate
    await run_until_settled(verifier, store)
    _, confirmed = await job_envelopes(store, job_id)
    assert (confirmed["status"], confirmed["verified"]) == ("success", True)
    assert (await store.job(job_id) or {})["status"] == "success"


async def test_vod_out_of_reach_publishes_unverified_after_the_bounded_checks(
    store: Store, make_vod: MakeVod
) -> None:
    vod = await make_vod(endpoint=f"http://127.0.0.1:{free_port()}")
    await store.hold(outcome("j1", "v1", file_url="http://cdn.example/a.gif"))
    with capture_logs() as logs:
        await run_until_settled(Verifier(store, vod, QUICK), store)
    [published] = await job_envelopes(store, "j1")
    assert published["verified"] is False
    [unconfirmed] = [log for log in logs if log["event"] == "outcome_unconfirmed"]
    assert "VOD out of reach" in unconfirmed["reason"]
    assert [log["event"] for log in logs].count("verify_retry") == QUICK.attempts - 1


async def test_a_claimed_check_is_one_process_s_until_its_lease_ends(
    store: Store, make_vod: MakeVod
) -> None:
    vod = await make_vod()
    job_id, file_url = await finished_job(vod, "v1")
    await store.hold(outcome(job_id, "v1", file_url=file_url))
    leased = VerifyOptions(lease_seconds=0.3, poll_seconds=0.05)
    crashed = Verifier(store, vod, leased)
    assert len(await crashed._claim_due()) == 1  # claimed, then the process "dies"
    survivor = Verifier(store, vod, leased)
    assert await survivor.run_once() == 0  # not its to check while the lease runs
    await run_until_settled(survivor, store)
    [published] = await job_envelopes(store, job_id)
    assert published["verified"] is True


async def test_the_receiver_holds_outcomes_and_records_other_events_at_once(
    start_receiver: Receiver,
    make_vod: MakeVod,
    serve_app: ServeApp,
    http: httpx.AsyncClient,
    redis_client: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = EmulatorOptions(access_keys={ACCESS_KEY_ID: ACCESS_KEY_SECRET})
    emulator = await serve_app(lambda _: create_emulator_app(options))
    await make_vod()  # sets the credentials
    base = await start_receiver(verify_outcomes=True, vod_endpoint=emulator)
    url = f"{base}/callbacks/vod"
    body = outcome_body("j1", "notfound-v", file_url="http://evil/pre.gif")
    held = await http.post(url, content=body, headers=vod_headers())
    assert held.status_code == 200
    assert held.json()["status"] == "held"
    again = await http.post(url, content=body, headers=vod_headers())
    assert again.json()["status"] == "duplicate"
    upload = {"EventType": "FileUploadComplete", "VideoId": "v9", "Status": "success"}
    accepted = await http.post(url, content=json.dumps(upload), headers=vod_headers())
    assert accepted.json()["status"] == "accepted"

    async def forged() -> bool:
        state = await redis_client.hget("vod:held:" + parse_fingerprint(body), "state")
        return state == "forged"

    for _ in range(200):
        if await forged():
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the forged outcome was not dropped")
    entries = await stream_entries(redis_client, "vod:stream")
    stream = [json.loads(fields["envelope"]) for _, fields in entries]
    assert [(e["event_type"], e["verified"]) for e in stream] == [("FileUploadComplete", None)]


def parse_fingerprint(body: bytes) -> str:
    return parse_callback(body, datetime.now(UTC)).fingerprint()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


def test_end_to_end_a_forged_callback_before_the_real_one_is_dropped(redis_url: str) -> None:
    emulator_port = free_port()
    vod = f"http://127.0.0.1:{emulator_port}"
    with (
        serving(redis_url=redis_url, vod_endpoint=vod, verify_outcomes="true") as (receiver, server),
        emulating("--callback-url", f"{receiver}/callbacks/vod", "--auth-key", AUTH_KEY,
                  "--delay", "2", port=emulator_port) as (emulator, _),
        listening(redis_url=redis_url) as listener,
    ):  # fmt: skip
        submitted = run("submit", "--video-id", "v1", "--template-id", "t",
                        env=env_for(redis_url=redis_url, vod_endpoint=vod))  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        # An attacker who saw one signed request posts its own body first.
        forged = send_callback(
            f"{receiver}/callbacks/vod",
            outcome_body(job_id, "v1", file_url="http://evil/pre.gif"),
            auth_key=AUTH_KEY,
        )
        assert forged.json()["status"] == "held"
        assert forged.json()["duplicate"] is False  # it came first: the job had no outcome

        wait_for(lambda: len(listener.stdout) >= 1, 20, "the verified outcome")
        [job] = emulator_jobs(emulator)
        assert job["callback"] == "delivered"  # the real callback was answered 200
        wait_for(
            lambda: any(log["event"] == "callback_forged" for log in server.json_logs()),
            10,
            "callback_forged",
        )
    [envelope] = [json.loads(line) for line in listener.stdout]
    assert envelope["job_id"] == job_id
    assert envelope["verified"] is True
    assert envelope["result"]["file_url"] != "http://evil/pre.gif"
    assert envelope["submission"]["video_id"] == "v1"  # correlated with the submission
    [dropped] = [log for log in server.json_logs() if log["event"] == "callback_forged"]
    assert (dropped["job_id"], dropped["file_url"]) == (job_id, "http://evil/pre.gif")
    with redis.Redis.from_url(redis_url) as client:
        assert client.xlen("vod:stream") == 1


def test_verifying_inside_serve_needs_credentials() -> None:
    env = env_for(
        auth_keys=AUTH_KEY, callback_url="https://h.example.com/cb", verify_outcomes="true"
    )
    del env["ALIBABA_CLOUD_ACCESS_KEY_ID"]
    result = run("serve", "--port", str(free_port()), env=env)
    assert result.returncode == 2
    assert "no Alibaba Cloud credentials" in result.stderr
