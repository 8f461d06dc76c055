"""Fuzzing every endpoint over real loopback HTTP against the real (healthy) test Redis: whatever
comes in, no 5xx, not even a 503, every rejection is JSON with `error` and `detail`, and no
answer shows a traceback. And every MNS message body through ingest.

`make test` runs a few hundred cases a test; `make faults` runs 10,000
(`pytest --hypothesis-profile=faults tests/test_fuzz.py`), see tests/fuzz_profiles.py.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from redis.asyncio import Redis

from tests.conftest import Receiver, ServeApp, sample_path, stream_entries, vod_headers
from tests.fuzz_profiles import fuzz_settings
from tests.fuzz_strategies import (
    callback_bodies,
    extra_headers,
    header_text,
    nasty_text,
    signed_callback_headers,
)
from webhook.emulator import EmulatorOptions, create_emulator_app
from webhook.ingest import MnsIngest
from webhook.mns import AccessKey, MnsMessage, MnsQueue, static_credentials
from webhook.store import Store

TOKEN = "fuzz-read-api-token-0123456789"
CALLBACK_PATH = "/callbacks/vod"
SAMPLE = sample_path("dynamic_image_success.json").read_bytes()
SAMPLE_JOB = json.loads(SAMPLE)["JobId"]
FUZZ = fuzz_settings()
LIMIT = 65536  # VOD_WEBHOOK_MAX_BODY_BYTES default
FUZZ_HEADERS = fuzz_settings(0.3)
FUZZ_OTHERS = fuzz_settings(0.2)
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@pytest.fixture
async def base(start_receiver: Receiver) -> str:
    return await start_receiver(api_token=TOKEN)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    chunked: bool = False,
) -> tuple[httpx.Response, str]:
    """The answer and its text; an event stream is left unread (it does not end)."""

    async def chunks() -> AsyncIterator[bytes]:
        yield content or b""

    body = chunks() if chunked else content
    # Header values go out as the bytes they are (latin-1), as a raw client would send them;
    # HTTP allows no whitespace around a value (the client refuses to send it).
    raw = {
        name.encode(): value.strip(" \t").encode("latin-1")
        for name, value in (headers or {}).items()
    }
    async with client.stream(method, url, headers=raw, content=body) as response:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return response, ""
        await response.aread()
        return response, response.text


def assert_sound(response: httpx.Response, text: str, what: object) -> None:
    status = response.status_code
    context = f"{response.request.method} {response.request.url.raw_path!r} -> {status} {text[:300]!r}; case: {what!r}"[
        :2000
    ]
    assert "Traceback" not in text, context
    assert 'File "' not in text, context
    if status < 400 or response.request.method == "HEAD":
        return
    data = json.loads(text)
    assert isinstance(data, dict), context
    assert isinstance(data.get("error"), str), context
    assert isinstance(data.get("detail"), str), context
    # Redis is healthy here: a 503 would be a bug hiding behind "retry later".
    assert status < 500 or data["error"] == "too_many_streams", context


def _job_info_body(info: str) -> bytes:
    event = json.loads(SAMPLE)
    event["DynamicImageJobInfo"] = info
    return json.dumps(event).encode()


@FUZZ
@given(body=callback_bodies())
# Found by this fuzzer (issue 7, defect 3), always tried first.
@example(body=_job_info_body("[" * 20000 + "]" * 20000))
@example(
    body=_job_info_body(
        json.dumps({"JobId": SAMPLE_JOB, "Status": "success", "FileURL": "http://x/\ud800"})
    )
)
async def test_callback_bodies(base: str, client: httpx.AsyncClient, body: bytes) -> None:
    """Validly signed callbacks with bodies built from the DynamicImageComplete schema, mutated."""
    response, text = await request(
        client, "POST", base + CALLBACK_PATH, headers=vod_headers(), content=body
    )
    assert_sound(response, text, body[:500])


@FUZZ_HEADERS
@given(
    headers=signed_callback_headers(),
    body=st.one_of(st.just(SAMPLE), callback_bodies()),
    framing=st.sampled_from(["length", "chunked", "over the limit", "declared zero"]),
)
async def test_callback_headers(
    base: str, client: httpx.AsyncClient, headers: dict[str, str], body: bytes, framing: str
) -> None:
    """Timestamps, signatures, Content-Length, X-Request-Id and other headers, mutated."""
    if framing == "over the limit":
        body = body + b" " * (LIMIT + 1 - len(body))
    elif framing == "declared zero":
        headers = {**headers, "Content-Length": "0"}
        body = b""
    response, text = await request(
        client, "POST", base + CALLBACK_PATH, headers=headers, content=body,
        chunked=framing == "chunked",
    )  # fmt: skip
    assert_sound(response, text, (headers, framing, body[:300]))
    given_id = headers.get("X-Request-Id", "")
    echoed = response.headers.get("x-request-id", "")
    assert SANE_REQUEST_ID.fullmatch(echoed), "every answer carries a sane X-Request-Id"
    if SANE_REQUEST_ID.fullmatch(given_id):
        assert echoed == given_id


authorizations = st.one_of(
    st.just(f"Bearer {TOKEN}"),
    st.just(f"bearer  {TOKEN} "),
    st.just(f"Bearer {TOKEN[:-1]}"),
    st.just(f"Bearer {TOKEN}x"),
    st.just(f"Basic {TOKEN}"),
    header_text,
    st.none(),
)
stream_ids = st.one_of(
    st.sampled_from(
        ["0", "0-0", "$", "-", "+", ">", "1-", "-1", "1-1-1", "18446744073709551616-0"]
    ),
    st.integers(-(10**25), 10**25).map(str),
    st.builds(lambda a, b: f"{a}-{b}", st.integers(-5, 10**21), st.integers(-5, 10**21)),
    header_text,
)


@FUZZ_OTHERS
@given(
    authorization=authorizations,
    since=st.one_of(st.none(), stream_ids),
    last_event_id=st.one_of(st.none(), stream_ids),
    event_type=st.one_of(st.none(), nasty_text),
    job=st.one_of(st.none(), nasty_text),
)
async def test_events(
    base: str,
    client: httpx.AsyncClient,
    authorization: str | None,
    since: str | None,
    last_event_id: str | None,
    event_type: str | None,
    job: str | None,
) -> None:
    """GET /events with every query parameter and Last-Event-ID mutated."""
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    params = {
        name: value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        for name, value in (("since", since), ("type", event_type), ("job", job))
        if value is not None
    }
    url = httpx.URL(base + "/events", params=params)
    response, text = await request(client, "GET", str(url), headers=headers)
    assert_sound(response, text, (headers, params))


@FUZZ_OTHERS
@given(authorization=authorizations, job_id=nasty_text, extra=extra_headers())
async def test_jobs(
    base: str,
    client: httpx.AsyncClient,
    authorization: str | None,
    job_id: str,
    extra: dict[str, str],
) -> None:
    """GET /jobs/{id} with any id (percent-encoded, surrogates included) and any Authorization."""
    headers = dict(extra)
    if authorization is not None:
        headers["Authorization"] = authorization
    path = quote(job_id.encode("utf-8", "surrogatepass"), safe="")
    response, text = await request(client, "GET", f"{base}/jobs/{path}", headers=headers)
    assert_sound(response, text, (headers, job_id))


paths = st.one_of(
    st.sampled_from(
        ["/healthz", "/readyz", CALLBACK_PATH, CALLBACK_PATH + "/", "/events", "/jobs/x", "/jobs/",
         "/", "/callbacks", "//healthz", "/healthz?x=1", "/%2e%2e/%2e%2e/etc/passwd", "/jobs/%00",
         "/events?since=%ff"]
    ),
    nasty_text.map(lambda text: "/" + quote(text.encode("utf-8", "surrogatepass"), safe="/?=&")),
)  # fmt: skip
methods = st.sampled_from(
    ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "PROPFIND"]
)


@FUZZ_OTHERS
@given(method=methods, path=paths, headers=extra_headers(), body=st.binary(max_size=100))
async def test_any_method_and_path(
    base: str,
    client: httpx.AsyncClient,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
) -> None:
    """Probes, unknown paths and unknown methods, with any headers and body."""
    response, text = await request(
        client, method, base + path, headers=headers, content=body if body else None
    )
    assert_sound(response, text, (method, path, headers, body))
    if path == "/healthz" and method == "GET":
        assert response.status_code == 200, text


def test_profiles_are_bounded() -> None:
    """The default keeps `make test` fast; the fault suite's runs at least 10,000 cases."""
    from hypothesis import settings

    from tests.fuzz_profiles import FAULTS_PROFILE, FUZZ_PROFILE

    assert 100 <= settings.get_profile(FUZZ_PROFILE).max_examples <= 500
    assert settings.get_profile(FAULTS_PROFILE).max_examples >= 10_000


@pytest.fixture
async def mns_ingest(
    serve_app: ServeApp, store: Store
) -> AsyncIterator[tuple[MnsIngest, list[str]]]:
    """Ingest of the emulator's queue into the test Redis, and the outcomes it counts (its
    deletes of the made-up receipt handles below are refused: logged, as for a stale handle)."""
    options = EmulatorOptions(access_keys={"LTAI5tFuzz": "fuzz-secret"}, mns_queues=("fuzz",))
    endpoint = await serve_app(lambda _: create_emulator_app(options))
    queue = MnsQueue(endpoint, "fuzz", static_credentials(AccessKey("LTAI5tFuzz", "fuzz-secret")))
    counted: list[str] = []
    yield (
        MnsIngest(queue, store, verify_outcomes=False, max_dequeues=5, count=counted.append),
        counted,
    )
    await queue.aclose()


@FUZZ_OTHERS
@given(
    body=st.one_of(
        callback_bodies().map(lambda raw: raw.decode("utf-8", "replace")),
        callback_bodies().map(lambda raw: base64.b64encode(raw).decode()),
        st.text(max_size=300),
    ),
    dequeue_count=st.integers(1, 6),
)
async def test_mns_message_bodies(
    mns_ingest: tuple[MnsIngest, list[str]], redis_client: Redis, body: str, dequeue_count: int
) -> None:
    """Whatever a message holds, ingest records it, leaves it to come back, or dead-letters it;
    it never raises, and records nothing but an envelope from MNS."""
    ingest, counted = mns_ingest
    await redis_client.flushall()
    counted.clear()
    await ingest.ingest([MnsMessage("fuzz-id", "1-bWFkZSB1cA==", body, dequeue_count, 0)])
    [outcome] = counted
    stream = await stream_entries(redis_client, "vod:stream")
    letters = await stream_entries(redis_client, "vod:deadletter")
    if outcome == "accepted":
        [(_, fields)] = stream
        assert json.loads(fields["envelope"])["source"] == "mns", body
    else:
        assert outcome == ("dead_lettered" if dequeue_count >= 5 else "retried"), body
        assert stream == []
        assert len(letters) == (outcome == "dead_lettered")
