import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from tests.conftest import (
    AUTH_KEY,
    CALLBACK_URL,
    Receiver,
    RedisServer,
    eventually,
    free_port,
    job_callback,
    published,
    sample_path,
    stream_entries,
    vod_headers,
)
from tests.processes import serving
from webhook.app import _cancel, create_app
from webhook.settings import ConfigError, Settings
from webhook.signature import sign
from webhook.store import Store

SUCCESS = sample_path("dynamic_image_success.json").read_bytes()
JOB_ID = json.loads(SUCCESS)["JobId"]


async def post(
    http: httpx.AsyncClient, base: str, body: bytes = SUCCESS, **header_options: object
) -> httpx.Response:
    headers = vod_headers(**header_options)  # type: ignore[arg-type]
    return await http.post(f"{base}/callbacks/vod", content=body, headers=headers)


async def test_signed_callback_is_stored_and_acknowledged(
    start_receiver: Receiver, http: httpx.AsyncClient, redis_client: Redis
) -> None:
    base = await start_receiver()
    response = await post(http, base)
    assert response.status_code == 200
    answer = response.json()
    assert answer["status"] == "accepted"
    assert answer["duplicate"] is False
    assert answer["job_id"] == JOB_ID
    assert response.headers["x-request-id"]
    entries = await stream_entries(redis_client, "vod:stream")
    assert [entry_id for entry_id, _ in entries] == [answer["id"]]
    assert (await redis_client.hgetall(f"vod:job:{JOB_ID}"))["status"] == "success"


async def test_a_bug_answers_500_as_json_and_is_logged(
    start_receiver: Receiver, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Store, envelope: object) -> None:
        raise RuntimeError("a bug")

    base = await start_receiver()
    monkeypatch.setattr(Store, "record", broken)
    with capture_logs() as logs:
        response = await post(http, base)
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal_error",
        "detail": "internal error; see the server log",
    }
    [failure] = [log for log in logs if log["event"] == "request_failed"]
    assert failure["path"] == "/callbacks/vod"
    assert failure["exc_info"]  # with its traceback, in the log only


async def test_signature_covers_the_registered_url_not_the_request_url(
    start_receiver: Receiver, http: httpx.AsyncClient
) -> None:
    base = await start_receiver()
    response = await post(http, base, url=f"{base}/callbacks/vod")
    assert response.status_code == 401
    assert response.json()["error"] == "signature_mismatch"


@pytest.mark.parametrize(
    ("drop", "replace", "code"),
    [
        ("X-VOD-TIMESTAMP", {}, "missing_timestamp"),
        ("X-VOD-SIGNATURE", {}, "missing_signature"),
        (None, {"X-VOD-TIMESTAMP": "12345"}, "malformed_timestamp"),
        (None, {"X-VOD-SIGNATURE": "not-hex"}, "malformed_signature"),
        (None, {"X-VOD-SIGNATURE": "0" * 32}, "signature_mismatch"),
    ],
)
async def test_bad_signature_headers_get_401(
    start_receiver: Receiver,
    http: httpx.AsyncClient,
    redis_client: Redis,
    drop: str | None,
    replace: dict[str, str],
    code: str,
) -> None:
    base = await start_receiver()
    headers = vod_headers()
    expected = headers["X-VOD-SIGNATURE"]
    if drop:
        del headers[drop]
    headers.update(replace)
    response = await http.post(f"{base}/callbacks/vod", content=SUCCESS, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == code
    assert expected not in response.text
    assert AUTH_KEY not in response.text
    assert await redis_client.exists("vod:stream") == 0


async def test_clock_skew_is_bounded_in_both_directions(
    start_receiver: Receiver, http: httpx.AsyncClient
) -> None:
    base = await start_receiver(max_skew_seconds=60)
    now = int(time.time())
    assert (await post(http, base, timestamp=now - 90)).json()["error"] == "stale_timestamp"
    assert (await post(http, base, timestamp=now + 90)).json()["error"] == "future_timestamp"
    assert (await post(http, base, timestamp=now - 30)).status_code == 200
    assert (await post(http, base, timestamp=now + 30)).status_code == 200


async def test_uppercase_signature_and_rotated_keys_verify(
    start_receiver: Receiver, http: httpx.AsyncClient
) -> None:
    base = await start_receiver(auth_keys="NewKey2026xAbcdef, " + AUTH_KEY)
    stamp = str(int(time.time()))
    for key in ("NewKey2026xAbcdef", AUTH_KEY):
        headers = {
            "X-VOD-TIMESTAMP": stamp,
            "X-VOD-SIGNATURE": sign(CALLBACK_URL, stamp, key).upper(),
        }
        response = await http.post(f"{base}/callbacks/vod", content=SUCCESS, headers=headers)
        assert response.status_code == 200, response.text
    retired = await post(http, base, key="OldKey2025x")
    assert retired.status_code == 401


# One body per kind of refusal: which bodies are refused, and why, is tests/test_events.py's.
@pytest.mark.parametrize(
    ("body", "code", "mentions"),
    [
        (b"{oops", "invalid_json", "not valid JSON"),
        (b"", "invalid_json", "empty"),
        (b'{"VideoId": "v1"}', "invalid_event", "EventType"),
    ],
)
async def test_malformed_bodies_get_400_with_a_precise_message(
    start_receiver: Receiver, http: httpx.AsyncClient, body: bytes, code: str, mentions: str
) -> None:
    base = await start_receiver()
    response = await post(http, base, body)
    assert response.status_code == 400
    assert response.json()["error"] == code
    assert mentions in response.json()["detail"]


async def test_oversized_bodies_get_413_declared_or_streamed(
    start_receiver: Receiver, http: httpx.AsyncClient, redis_client: Redis
) -> None:
    base = await start_receiver(max_body_bytes=2048)
    big = json.dumps({"EventType": "FileUploadComplete", "Pad": "x" * 5000}).encode()
    declared = await post(http, base, big)
    assert declared.status_code == 413
    assert declared.json()["error"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the receiver must stop reading once the limit is passed.
        for _ in range(1000):
            yield b" " * 1024

    streamed = await http.post(f"{base}/callbacks/vod", content=chunks(), headers=vod_headers())
    assert streamed.status_code == 413
    assert await redis_client.exists("vod:stream") == 0


async def test_every_other_event_type_is_accepted_and_fanned_out_under_its_type(
    start_receiver: Receiver, http: httpx.AsyncClient, redis_client: Redis
) -> None:
    base = await start_receiver()
    pubsub = redis_client.pubsub()
    await pubsub.subscribe("vod:events:AIMediaAuditComplete", "vod:events:FileUploadComplete")
    for body in (
        sample_path("ai_media_audit.json").read_bytes(),
        b'{"EventType": "FileUploadComplete", "VideoId": "v9", "Status": "success", '
        b'"EventTime": "2026-11-24T10:00:00Z", "Size": 99, "Extend": "{\\"k\\": 1}"}',
    ):
        response = await post(http, base, body)
        assert response.status_code == 200, response.text
    seen = [json.loads(message["data"]) for message in await published(pubsub, 2)]
    assert [e["event_type"] for e in seen] == ["AIMediaAuditComplete", "FileUploadComplete"]
    assert seen[0]["video_id"] == "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"
    assert seen[1]["payload"]["Size"] == 99
    await pubsub.aclose()


async def test_resends_are_acknowledged_as_duplicates(
    start_receiver: Receiver, http: httpx.AsyncClient, redis_client: Redis
) -> None:
    base = await start_receiver()
    first = (await post(http, base)).json()
    resent = json.loads(SUCCESS)
    resent["EventTime"] = "2017-03-20T07:49:21Z"
    again = await post(http, base, json.dumps(resent).encode())
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["id"] == first["id"]
    assert await redis_client.xlen("vod:stream") == 1


async def test_twenty_concurrent_identical_callbacks_fan_out_once(
    start_receiver: Receiver, http: httpx.AsyncClient, redis_client: Redis
) -> None:
    base = await start_receiver()
    pubsub = redis_client.pubsub()
    await pubsub.subscribe("vod:events")
    responses = await asyncio.gather(*(post(http, base) for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert sum(not r.json()["duplicate"] for r in responses) == 1
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(await published(pubsub, 2, within=1)) == 1
    assert await redis_client.xlen("vod:stream") == 1
    await pubsub.aclose()


async def test_redis_down_gives_503_and_the_retry_is_recorded_after_recovery(
    start_receiver: Receiver,
    http: httpx.AsyncClient,
    own_redis: RedisServer,
) -> None:
    base = await start_receiver(redis_url=own_redis.url, redis_timeout_seconds=1)
    assert (await http.get(f"{base}/readyz")).status_code == 200
    own_redis.stop()
    down = await post(http, base)
    assert down.status_code == 503
    assert down.json()["error"] == "store_unavailable"
    assert down.headers["retry-after"] == "1"
    assert (await http.get(f"{base}/readyz")).status_code == 503

    own_redis.start()
    assert (await http.get(f"{base}/readyz")).status_code == 200
    retried = await post(http, base)
    assert retried.status_code == 200
    # Nothing was half-written by the failed attempt, so the retry is not a duplicate.
    assert retried.json()["duplicate"] is False


async def test_redis_refusing_writes_gives_503_and_writes_nothing(
    start_receiver: Receiver,
    http: httpx.AsyncClient,
    own_redis: RedisServer,
) -> None:
    base = await start_receiver(redis_url=own_redis.url)
    admin = Redis.from_url(own_redis.url, decode_responses=True)
    await admin.config_set("maxmemory-policy", "noeviction")
    await admin.config_set("maxmemory", "1")
    refused = await post(http, base)
    assert refused.status_code == 503
    assert refused.json()["error"] == "store_unavailable"
    assert await admin.keys("vod:*") == ["vod:ready"]  # the start-up readiness probe
    await admin.config_set("maxmemory", "0")
    assert (await post(http, base)).json()["duplicate"] is False
    await admin.aclose()


def job_body(number: int) -> bytes:
    return json.dumps(job_callback(f"{number:032x}")).encode()


async def test_every_callback_after_a_redis_restart_is_stored(
    start_receiver: Receiver,
    http: httpx.AsyncClient,
    own_redis: RedisServer,
) -> None:
    base = await start_receiver(redis_url=own_redis.url)
    # Concurrent callbacks leave that many connections idle in the pool.
    warm = await asyncio.gather(*(post(http, base, job_body(n)) for n in range(40)))
    assert {r.status_code for r in warm} == {200}
    own_redis.stop()
    own_redis.start()
    # Every pooled connection is dead now; each is re-made, not answered with 503.
    after = await asyncio.gather(*(post(http, base, job_body(n)) for n in range(40, 80)))
    assert [r.status_code for r in after] == [200] * 40
    assert all(r.json()["status"] == "accepted" for r in after)


async def test_a_burst_of_callbacks_is_stored_once_without_extra_connections(
    own_redis: RedisServer,
) -> None:
    # The real server in its own process: in this one, the test's client would eat the loop.
    with serving(redis_url=own_redis.url, redis_max_connections="8", callback_url=CALLBACK_URL) as (
        base,
        _,
    ):
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(timeout=30, limits=limits) as many:
            responses = await asyncio.gather(*(post(many, base) for _ in range(1000)))
        admin = Redis.from_url(own_redis.url, decode_responses=True)
        # The scripts' one connection, the pool's (probes, the held-outcome drain) within its
        # cap, and the admin's.
        connections = len(await admin.client_list())
        stored = await admin.xlen("vod:stream")
        await admin.aclose()
    assert [r.status_code for r in responses] == [200] * 1000
    assert sum(r.json()["status"] == "accepted" for r in responses) == 1
    assert stored == 1
    assert connections <= 8 + 2


async def fill_memory(admin: Redis) -> None:
    await admin.config_set("maxmemory-policy", "noeviction")
    await admin.config_set("maxmemory", "1")


async def become_a_replica(admin: Redis) -> None:
    # Of an address nobody serves: it stays a read-only replica, as after a failover.
    await admin.replicaof("127.0.0.1", str(free_port()))


async def fail_a_snapshot(admin: Redis) -> None:
    # A snapshot that cannot be written makes Redis refuse writes (MISCONF) until one succeeds:
    # its directory (see below) is gone.
    await admin.config_set("save", "3600 1")
    await admin.config_set("stop-writes-on-bgsave-error", "yes")
    await admin.bgsave()

    async def snapshot_failed() -> bool:
        return bool((await admin.info("persistence"))["rdb_last_bgsave_status"] == "err")

    await eventually(snapshot_failed, what="the snapshot to fail")


@pytest.mark.parametrize(
    "refuse_writes",
    [fill_memory, become_a_replica, fail_a_snapshot],
    ids=["maxmemory with noeviction", "read-only replica", "MISCONF"],
)
async def test_readyz_is_503_while_redis_refuses_writes(
    start_receiver: Receiver,
    http: httpx.AsyncClient,
    refuse_writes: Callable[[Redis], Awaitable[None]],
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        own = RedisServer(free_port(), "--dir", directory)
        own.start()
    admin = Redis.from_url(own.url, decode_responses=True)
    try:
        base = await start_receiver(redis_url=own.url)
        assert (await http.get(f"{base}/readyz")).status_code == 200
        await refuse_writes(admin)
        not_ready = await http.get(f"{base}/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["error"] == "store_unavailable"
        assert (await post(http, base)).status_code == 503
    finally:
        await admin.config_set("save", "")  # or it would not stop, failing its last snapshot
        await admin.aclose()
        own.stop()


async def test_receiver_starts_while_redis_is_down_and_becomes_ready(
    start_receiver: Receiver, http: httpx.AsyncClient
) -> None:
    own = RedisServer(free_port())
    base = await start_receiver(redis_url=own.url, redis_timeout_seconds=1)
    try:
        assert (await http.get(f"{base}/healthz")).json() == {"status": "ok"}
        not_ready = await http.get(f"{base}/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["error"] == "store_unavailable"
        assert (await post(http, base)).status_code == 503
        own.start()
        assert (await http.get(f"{base}/readyz")).json() == {"status": "ready"}
        assert (await post(http, base)).status_code == 200
    finally:
        own.stop()


async def test_unsigned_mode_accepts_callbacks_without_headers(
    start_receiver: Receiver, http: httpx.AsyncClient
) -> None:
    base = await start_receiver(auth_keys="", callback_url=None, allow_unsigned=True)
    response = await http.post(f"{base}/callbacks/vod", content=SUCCESS)
    assert response.status_code == 200


async def test_custom_callback_path_and_json_errors_for_other_routes(
    start_receiver: Receiver, http: httpx.AsyncClient
) -> None:
    base = await start_receiver(callback_path="/hooks/vod")
    assert (
        await http.post(f"{base}/hooks/vod", content=SUCCESS, headers=vod_headers())
    ).status_code == 200
    missing = await http.post(f"{base}/callbacks/vod", content=SUCCESS, headers=vod_headers())
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    wrong_method = await http.get(f"{base}/hooks/vod")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "method_not_allowed"


async def test_request_id_is_echoed_or_made(
    start_receiver: Receiver, http: httpx.AsyncClient
) -> None:
    base = await start_receiver()
    given = await http.get(f"{base}/healthz", headers={"X-Request-Id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await http.get(f"{base}/healthz", headers={"X-Request-Id": "bad id\twith spaces"})
    assert len(made.headers["x-request-id"]) == 32


async def test_invalid_content_length_is_a_400(start_receiver: Receiver) -> None:
    base = await start_receiver()
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    headers = vod_headers()
    request = (
        "POST /callbacks/vod HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    )
    writer.write(request.encode())
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    # uvicorn itself refuses a non-numeric Content-Length before the app sees it.
    assert status_line.split()[1] == b"400"


async def test_readyz_reports_503_once_shutdown_begins(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.get("/readyz")).status_code == 200
            app.state.draining = True
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert response.json()["error"] == "shutting_down"


def test_refuses_to_run_unsigned_or_without_the_registered_url(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ConfigError, match="AUTH_KEYS"):
        create_app(make_settings(auth_keys=""))
    with pytest.raises(ConfigError, match="CALLBACK_URL is required"):
        create_app(make_settings(callback_url=None))


async def test_background_work_that_lost_a_cancellation_is_cancelled_again() -> None:
    """As a redis-py read can swallow a cancellation: shutdown must not wait for ever."""
    swallowed = 0

    async def loop_on() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # lost, as a library might lose it

    task = asyncio.create_task(loop_on())
    await asyncio.sleep(0)
    cancelling = asyncio.create_task(_cancel(task))
    await asyncio.wait({cancelling}, timeout=5)  # unlike wait_for, it cancels nothing itself
    assert cancelling.done(), "a lost cancellation held it up"
    assert task.cancelled()
    assert swallowed == 1
