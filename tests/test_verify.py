"""VERIFY_OUTCOMES: held outcomes, checked with ListDynamicImage against the emulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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
    StoreFactory,
    eventually,
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
from webhook.verify import Verifier, VerifyOptions, run_verifier
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
        return Vod(client, RateLimiter(store.redis, store.shared, key_id, 100), ONE_TRY)

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
    entries = await stream_entries(store.redis, store.shared.stream)
    found = [json.loads(fields["envelope"]) for _, fields in entries]
    return [e for e in found if e["job_id"] == job_id]


async def run_until_settled(verifier: Verifier, store: Store) -> None:
    """Run passes until no held outcome is left to check."""
    async with asyncio.timeout(10):
        while await store.redis.zcard(store.shared.verify_queue):
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


async def test_an_unlisted_success_is_checked_again_then_published_unverified(
    store: Store, make_vod: MakeVod
) -> None:
    # Listing lag must not cost an outcome we answered 200 for: only a contradiction drops one.
    vod = await make_vod()
    body = outcome_body("not-listed-yet", "v1", file_url="http://cdn.example/x.gif")
    await store.hold(parse_callback(body, datetime.now(UTC)))
    with capture_logs() as logs:
        await run_until_settled(Verifier(store, vod, QUICK), store)
    [published] = await job_envelopes(store, "not-listed-yet")
    assert (published["status"], published["verified"]) == ("success", False)
    events = [log for log in logs if log["event"] != "vod_call_retried"]
    assert [log["event"] for log in events] == [
        "verify_retry",
        "verify_retry",
        "outcome_unconfirmed",
    ]
    assert events[-1]["reason"] == "not listed by ListDynamicImage after 3 checks"
    again = await store.hold(parse_callback(body, datetime.now(UTC)))
    assert again.duplicate  # VOD's re-send of it


async def test_a_success_for_a_video_vod_does_not_know_is_published_unverified_at_once(
    store: Store, make_vod: MakeVod
) -> None:
    # A deleted video, or a receiver configured for another region or account: no contradiction
    # of the outcome itself, so it is not dropped.
    vod = await make_vod()
    await store.hold(outcome("j1", "notfound-v1", file_url="http://cdn.example/x.gif"))
    with capture_logs() as logs:
        await run_until_settled(Verifier(store, vod, QUICK), store)
    [published] = await job_envelopes(store, "j1")
    assert published["verified"] is False
    [unconfirmed] = [log for log in logs if log["event"] == "outcome_unconfirmed"]
    assert unconfirmed["reason"].startswith("VOD does not know video notfound-v1")
    assert not [log for log in logs if log["event"] in {"verify_retry", "callback_forged"}]


async def test_the_same_file_is_confirmed_whatever_its_scheme_host_case_or_signing_query(
    store: Store, make_vod: MakeVod
) -> None:
    # VOD's callbacks say http:// and CDN URL signing adds an auth_key; the listing may not.
    vod = await make_vod()
    job_id, file_url = await finished_job(vod, "v1")
    listed = urlsplit(file_url)
    called_back = urlunsplit(
        ("http", listed.netloc.upper(), listed.path, "auth_key=1700000000-0-0-0123abcd", "")
    )
    await store.hold(outcome(job_id, "v1", file_url=called_back))
    other_job, other_url = await finished_job(vod, "v1")
    elsewhere = urlunsplit(urlsplit(other_url)._replace(path="/v1/other.gif"))
    await store.hold(outcome(other_job, "v1", file_url=elsewhere))
    with capture_logs() as logs:
        await run_until_settled(Verifier(store, vod, QUICK), store)
    [published] = await job_envelopes(store, job_id)
    assert (published["result"]["file_url"], published["verified"]) == (called_back, True)
    assert await job_envelopes(store, other_job) == []
    [dropped] = [log for log in logs if log["event"] == "callback_forged"]
    assert (dropped["job_id"], dropped["file_url"]) == (other_job, elsewhere)


def test_the_default_schedule_keeps_checking_for_minutes() -> None:
    attempts = Settings.model_fields["verify_attempts"].default
    options = VerifyOptions(attempts=attempts)
    assert options.attempts == VerifyOptions().attempts
    span = sum(options.delay(attempt) for attempt in range(attempts - 1))
    assert 180 <= span <= 600


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

    async def resolved() -> bool:
        state = await redis_client.hget("vod:held:" + parse_fingerprint(body), "state")
        return state == "recorded"

    await eventually(resolved, 10, "the held outcome checked")
    entries = await stream_entries(redis_client, "vod:stream")
    stream = [json.loads(fields["envelope"]) for _, fields in entries]
    assert [(e["event_type"], e["verified"]) for e in stream] == [
        ("FileUploadComplete", None),
        ("DynamicImageComplete", False),  # VOD does not know the video: unconfirmed, not lost
    ]


def parse_fingerprint(body: bytes) -> str:
    return parse_callback(body, datetime.now(UTC)).fingerprint()


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


async def test_held_outcomes_are_published_unverified_once_verification_is_turned_off(
    store: Store, start_receiver: Receiver
) -> None:
    # Answered 200 by a verifying deployment, then VERIFY_OUTCOMES was switched off.
    await store.hold(outcome("j1", "v1", file_url="http://cdn.example/a.gif"))
    await store.hold(outcome("j2", "v1", status="fail"))
    with capture_logs() as logs:
        await start_receiver()  # no VOD credentials needed: nothing is looked up

        async def drained() -> bool:
            return await store.redis.zcard(store.shared.verify_queue) == 0

        await eventually(drained, 10, "the held outcomes published")
    published = [await job_envelopes(store, job_id) for job_id in ("j1", "j2")]
    assert [[(e["status"], e["verified"]) for e in p] for p in published] == [
        [("success", False)],
        [("fail", False)],
    ]
    [draining] = [log for log in logs if log["event"] == "held_outcomes_draining"]
    assert draining["held"] == 2
    reasons = {log["reason"] for log in logs if log["event"] == "outcome_unconfirmed"}
    assert reasons == {"VOD_WEBHOOK_VERIFY_OUTCOMES is off"}


async def test_lookups_have_their_own_quota_so_they_never_delay_submissions(
    make_vod: MakeVod,
    serve_app: ServeApp,
    make_settings: Callable[..., Settings],
    store: Store,
) -> None:
    await make_vod()  # sets the credentials
    options = EmulatorOptions(access_keys={ACCESS_KEY_ID: ACCESS_KEY_SECRET})
    emulator = await serve_app(lambda _: create_emulator_app(options))
    # One submission per 20 s: a lookup taking a submission slot would hold the next one up.
    settings = make_settings(vod_endpoint=emulator, submit_qps=0.05, list_qps=100)
    vod = Vod.from_settings(settings, store.redis)
    await vod.list_dynamic_image("v1")
    async with asyncio.timeout(5):
        await vod.submit_dynamic_image_job("v1", "tpl", None)
        for _ in range(5):
            await vod.list_dynamic_image("v1")
    assert (
        await store.redis.exists(
            f"vod:quota:{ACCESS_KEY_ID}", f"vod:quota:{ACCESS_KEY_ID}:ListDynamicImage"
        )
        == 2
    )


async def test_beyond_max_held_outcomes_new_outcomes_get_503_and_re_sends_still_200(
    start_receiver: Receiver, make_vod: MakeVod, http: httpx.AsyncClient
) -> None:
    await make_vod()  # sets the credentials
    unreachable = f"http://127.0.0.1:{free_port()}"  # so held outcomes stay held
    base = await start_receiver(verify_outcomes=True, vod_endpoint=unreachable, max_held_outcomes=2)
    url = f"{base}/callbacks/vod"
    bodies = [outcome_body(f"j{n}", "v1", file_url=f"http://cdn.example/{n}.gif") for n in range(3)]
    answers = [await http.post(url, content=body, headers=vod_headers()) for body in bodies]
    assert [a.status_code for a in answers] == [200, 200, 503]
    assert answers[2].json()["error"] == "too_many_held_outcomes"
    assert answers[2].headers["retry-after"] == "1"
    again = await http.post(url, content=bodies[0], headers=vod_headers())
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")


@pytest.mark.parametrize("reconcile", [False, True])
async def test_verifying_without_reconciling_is_warned_about(
    start_receiver: Receiver, make_vod: MakeVod, reconcile: bool
) -> None:
    await make_vod()  # sets the credentials
    with capture_logs() as logs:
        await start_receiver(
            verify_outcomes=True,
            reconcile=reconcile,
            vod_endpoint=f"http://127.0.0.1:{free_port()}",
        )
    warned = [log for log in logs if log["event"] == "verify_without_reconcile"]
    assert len(warned) == (0 if reconcile else 1)


async def test_the_verifier_rides_out_redis_down_and_an_unreadable_held_entry(
    make_store: StoreFactory, make_vod: MakeVod, own_redis: RedisServer
) -> None:
    store = make_store(Redis.from_url(own_redis.url, decode_responses=True))
    vod = await make_vod()
    job_id, file_url = await finished_job(vod, "v1")
    with capture_logs() as logs:
        loop = asyncio.create_task(run_verifier(store, vod, QUICK))
        try:
            own_redis.stop()

            async def skipped() -> bool:
                return any(log["event"] == "verify_skipped" for log in logs)

            await eventually(skipped, what="a pass to find Redis down")
            own_redis.start()  # empty: it kept nothing
            await store.redis.zadd(store.shared.verify_queue, {"garbage": 0})
            await store.redis.hset(store.shared.held("garbage"), "envelope", "not an envelope")
            await store.hold(outcome(job_id, "v1", file_url=file_url))

            async def published() -> bool:
                return bool(await job_envelopes(store, job_id))

            await eventually(published, what="the held outcome to be confirmed")
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
    [envelope] = await job_envelopes(store, job_id)
    assert envelope["verified"] is True
    assert await store.redis.zcard(store.shared.verify_queue) == 0  # the garbage is let go
