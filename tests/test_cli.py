"""The `vod-webhook` command, run as real subprocesses over loopback; and how its errors end it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis
from redis.exceptions import RedisError

from tests.conftest import AUTH_KEY, RedisServer, free_port, sample_path, wait_for
from tests.processes import COMMAND, WORKDIR, Process, env_for, listening, run, serving
from tests.test_client import job_event
from webhook.cli import exit_status
from webhook.errors import StoreUnavailable
from webhook.settings import ConfigError, Settings
from webhook.submitter import UnrecordedSubmission
from webhook.vod import VodError


def test_quick_start_send_test_shows_up_in_listen_on_the_embedded_store() -> None:
    embedded = str(free_port())
    with (
        serving(embedded_port=embedded) as (base, server),
        listening(embedded_port=embedded) as listener,
    ):
        sent = run("send-test", "--url", f"{base}/callbacks/vod", "--key", AUTH_KEY)
        assert sent.returncode == 0, sent.stderr
        assert "HTTP 200" in sent.stdout
        job_id = sent.stdout.split("JobId=")[1].split(")")[0]
        wait_for(lambda: len(listener.stdout) == 1, 10, "the envelope in listen")
        envelope = json.loads(listener.stdout[0])
        assert envelope["job_id"] == job_id
        assert envelope["event_type"] == "DynamicImageComplete"
        assert envelope["result"]["width"] == 320
        assert envelope["id"] in sent.stdout
    assert any(log["event"] == "embedded_store_started" for log in server.json_logs())


def test_serve_on_redis_with_two_workers(
    redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    with (
        serving("--workers", "2", redis_url=redis_server.url) as (base, _),
        listening(
            "--channel", "vod:events:DynamicImageComplete", redis_url=redis_server.url
        ) as listener,
    ):
        for _ in range(6):
            sent = run("send-test", "--url", f"{base}/callbacks/vod", "--key", AUTH_KEY)
            assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_for(lambda: len(listener.stdout) == 6, 10, "six envelopes")
    assert redis_sync.xlen("vod:stream") == 6


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"auth_keys": ""}, "no VOD_WEBHOOK_AUTH_KEYS set"),
        ({"callback_url": ""}, "VOD_WEBHOOK_CALLBACK_URL is required"),
        ({"max_skew_seconds": "soon"}, "VOD_WEBHOOK_MAX_SKEW_SECONDS"),
        ({"redis_url": "localhost:6379"}, "VOD_WEBHOOK_REDIS_URL: must start with"),
        ({"callback_url": "ftp://x"}, "VOD_WEBHOOK_CALLBACK_URL"),
        ({"auth_keys": "x" * 33}, "VOD_WEBHOOK_AUTH_KEYS"),
    ],
)
def test_invalid_configuration_stops_serve_with_exit_2(
    settings: dict[str, str], message: str
) -> None:
    env = env_for(**{"auth_keys": AUTH_KEY, "callback_url": "https://h.example.com/cb", **settings})
    result = run("serve", "--port", str(free_port()), env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_reconciling_inside_serve_needs_credentials() -> None:
    env = env_for(auth_keys=AUTH_KEY, callback_url="https://h.example.com/cb", reconcile="true")
    del env["ALIBABA_CLOUD_ACCESS_KEY_ID"]
    result = run("serve", "--port", str(free_port()), env=env)
    assert result.returncode == 2
    assert "no Alibaba Cloud credentials" in result.stderr


def test_embedded_port_in_use_is_a_clear_configuration_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = env_for(
            auth_keys=AUTH_KEY,
            callback_url="https://h.example.com/cb",
            embedded_port=str(taken.getsockname()[1]),
        )
        result = run("serve", "--port", str(free_port()), env=env)
    assert result.returncode == 2
    assert "embedded store cannot listen" in result.stderr


def test_unsigned_mode_starts_only_when_asked_and_warns() -> None:
    with serving(
        auth_keys="", callback_url="", allow_unsigned="true", embedded_port=str(free_port())
    ) as (base, server):
        body = sample_path("dynamic_image_fail.json").read_bytes()
        assert httpx.post(f"{base}/callbacks/vod", content=body).status_code == 200
    assert any(log["event"] == "signature_check_disabled" for log in server.json_logs())


def test_one_log_line_per_callback_and_no_secrets(redis_server: RedisServer) -> None:
    with serving(redis_url=redis_server.url, key_prefix="logs") as (base, server):
        sent = run("send-test", "--url", f"{base}/callbacks/vod", "--key", AUTH_KEY)
        forged = run("send-test", "--url", f"{base}/callbacks/vod", "--key", "Wrong1234")
        assert forged.returncode == 1
        assert "HTTP 401" in forged.stdout
    logs = server.json_logs()
    accepted = [log for log in logs if log["event"] == "callback_accepted"]
    rejected = [log for log in logs if log["event"] == "callback_rejected"]
    assert len(accepted) == 1
    assert len(rejected) == 1
    job_id = sent.stdout.split("JobId=")[1].split(")")[0]
    assert accepted[0]["job_id"] == job_id
    assert accepted[0]["event_type"] == "DynamicImageComplete"
    for log in (accepted[0], rejected[0]):
        assert log["request_id"]
        assert isinstance(log["duration_ms"], float)
    assert rejected[0]["error"] == "signature_mismatch"
    everything = "".join(server.stderr)
    assert AUTH_KEY not in everything
    assert "Wrong1234" not in everything
    assert "X-VOD-SIGNATURE:" not in everything


def test_console_logs_name_each_line_s_logger_and_event(redis_server: RedisServer) -> None:
    with serving(redis_url=redis_server.url, key_prefix="console", log_format="console") as (
        base,
        server,
    ):
        sent = run("send-test", "--url", f"{base}/callbacks/vod", "--key", AUTH_KEY)
        assert sent.returncode == 0, sent.stderr
    job_id = sent.stdout.split("JobId=")[1].split(")")[0]
    lines = "".join(server.stderr).splitlines()
    assert not [line for line in lines if line.startswith("{")]  # no JSON
    [accepted] = [line for line in lines if "callback_accepted" in line]
    assert "[webhook.receiver]" in accepted
    assert f"job_id={job_id}" in accepted
    # uvicorn's own records go through the same renderer.
    assert [line for line in lines if "Uvicorn running on" in line and "[uvicorn.error]" in line]


def unread_by_server(server_port: int, client_port: int) -> int | None:
    """Bytes the server has not read yet from this loopback connection (Linux's view of the
    server's socket), None while it has no such socket."""
    wanted = (f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == wanted:
            return int(fields[4].split(":")[1], 16)
    return None


def test_sigterm_lets_an_in_flight_callback_finish(
    redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    with serving(redis_url=redis_server.url, key_prefix="drain") as (base, server):
        from webhook.sender import signed_headers

        body = sample_path("dynamic_image_success.json").read_bytes()
        headers = signed_headers(f"{base}/callbacks/vod", AUTH_KEY)
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as conn:
            head = (
                f"POST /callbacks/vod HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
            )
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
            conn.sendall(head.encode() + body[:20])
            client_port = conn.getsockname()[1]
            wait_for(lambda: unread_by_server(int(port), client_port) == 0, 10, "the read")
            server.popen.send_signal(signal.SIGTERM)
            # The server is draining, with this request's body still incomplete.
            wait_for(lambda: "Shutting down" in "".join(server.stderr), 10, "the drain")
            conn.sendall(body[20:])
            answer = conn.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 200"), answer
        server.popen.wait(15)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{base}/healthz", timeout=1)
    assert redis_sync.xlen("drain:stream") == 1


def test_send_test_with_a_file_and_its_failure_modes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with serving(redis_url=redis_server.url, key_prefix="files") as (base, _):
        url = f"{base}/callbacks/vod"
        fail_event = run("send-test", "--url", url, "--key", AUTH_KEY,
                         "--file", str(sample_path("dynamic_image_fail.json")))  # fmt: skip
        assert fail_event.returncode == 0
        assert '"duplicate":false' in fail_event.stdout
        broken = tmp_path / "broken.json"
        broken.write_text("{nope")
        bad = run("send-test", "--url", url, "--key", AUTH_KEY, "--file", str(broken))
        assert bad.returncode == 1
        assert "HTTP 400" in bad.stdout
        assert "invalid_json" in bad.stdout
        missing = run("send-test", "--url", url, "--key", AUTH_KEY, "--file", str(tmp_path / "no"))
        assert missing.returncode == 2
        assert "cannot read" in missing.stderr
        proxied = run("send-test", "--url", url, "--key", AUTH_KEY,
                      "--callback-url", "https://public.example.com/callbacks/vod")  # fmt: skip
        assert proxied.returncode == 1
        assert "signature_mismatch" in proxied.stdout
    unreachable = run("send-test", "--url", f"http://127.0.0.1:{free_port()}/cb", "--key", AUTH_KEY)
    assert unreachable.returncode == 1
    assert "cannot reach" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def test_listen_reports_an_unreachable_redis() -> None:
    result = run("listen", env=env_for(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    assert result.returncode == 1
    assert "is unavailable" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "command", [["jobs", "pending"], ["submit", "--video-id", "v", "--template-id", "t"]]
)
def test_commands_on_the_embedded_store_say_it_needs_serve(command: list[str]) -> None:
    result = run(*command, env=env_for(embedded_port=str(free_port())))  # no serve runs
    assert result.returncode == 1
    assert "the embedded store lives inside a running `vod-webhook serve`" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["serve", "listen", "send-test"])
def test_every_command_explains_itself(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0
    assert f"usage: vod-webhook {command}" in result.stdout


def test_usage_errors_exit_2() -> None:
    assert run("serve", "--workers", "0").returncode == 2
    assert run("send-test", "--url", "http://x").returncode == 2
    assert run("frobnicate").returncode == 2
    for port in ("99999", "-1", "0"):
        bad = run("serve", "--port", port)
        assert bad.returncode == 2
        assert "--port: must be a TCP port, 1 to 65535" in bad.stderr


def test_a_port_in_use_is_a_clear_configuration_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        env = env_for(auth_keys=AUTH_KEY, callback_url="https://h.example.com/cb")
        result = run("serve", "--port", port, env=env)
    assert result.returncode == 2
    assert f"--host 127.0.0.1 --port {port}: cannot listen there" in result.stderr
    assert "address already in use" in result.stderr.lower()  # uvicorn's line: why


def test_durable_listen_prints_what_it_missed_and_nothing_twice(redis_url: str) -> None:
    settings = {"redis_url": redis_url, "key_prefix": "durable"}
    with serving(**settings) as (base, _):
        url = f"{base}/callbacks/vod"

        def send(count: int) -> list[str]:
            sent = [run("send-test", "--url", url, "--key", AUTH_KEY) for _ in range(count)]
            assert all(s.returncode == 0 for s in sent)
            return [s.stdout.split("JobId=")[1].split(")")[0] for s in sent]

        with listening("--group", "billing", "--consumer", "c1", **settings) as first:
            before = send(2)
            wait_for(lambda: len(first.stdout) == 2, 10, "two envelopes")
        missed = send(3)  # while no consumer runs
        with listening("--group", "billing", "--consumer", "c1", **settings) as second:
            wait_for(lambda: len(second.stdout) == 3, 10, "what was missed")
            after = send(1)
            wait_for(lambda: len(second.stdout) == 4, 10, "the next one")
    assert [json.loads(line)["job_id"] for line in first.stdout] == before
    assert [json.loads(line)["job_id"] for line in second.stdout] == missed + after
    assert second.popen.returncode == 0


def test_replay_prints_history_with_filters(redis_url: str) -> None:
    settings = {"redis_url": redis_url, "key_prefix": "history"}
    with serving(**settings) as (base, _):
        url = f"{base}/callbacks/vod"
        for _ in range(3):
            assert run("send-test", "--url", url, "--key", AUTH_KEY).returncode == 0
        upload = sample_path("ai_media_audit.json")
        assert (
            run("send-test", "--url", url, "--key", AUTH_KEY, "--file", str(upload)).returncode == 0
        )
    env = env_for(**settings)
    everything = [json.loads(line) for line in run("replay", env=env).stdout.splitlines()]
    assert [e["event_type"] for e in everything] == ["DynamicImageComplete"] * 3 + [
        "AIMediaAuditComplete"
    ]
    after_first = run("replay", "--since", everything[0]["id"], env=env).stdout.splitlines()
    assert len(after_first) == 3
    only_ai = run("replay", "--type", "AIMediaAuditComplete", env=env).stdout.splitlines()
    assert [json.loads(line)["id"] for line in only_ai] == [everything[3]["id"]]
    one_job = run("replay", "--job", everything[1]["job_id"], env=env).stdout.splitlines()
    assert [json.loads(line)["id"] for line in one_job] == [everything[1]["id"]]
    assert run("replay", "--since", "2999-01-01T00:00:00+00:00", env=env).stdout == ""
    bad = run("replay", "--since", "last tuesday", env=env)
    assert bad.returncode == 2
    assert "neither a stream id nor an ISO time" in bad.stderr


def test_events_over_http_on_the_embedded_store() -> None:
    embedded = str(free_port())
    with serving(embedded_port=embedded, api_token="tok3n") as (base, _):
        sent = run("send-test", "--url", f"{base}/callbacks/vod", "--key", AUTH_KEY)
        job_id = sent.stdout.split("JobId=")[1].split(")")[0]
        auth = {"Authorization": "Bearer tok3n"}
        with httpx.stream("GET", f"{base}/events?since=0", headers=auth, timeout=10) as stream:
            lines = stream.iter_lines()
            data = next(line for line in lines if line.startswith("data:"))
        assert json.loads(data.removeprefix("data:"))["job_id"] == job_id
        job = httpx.get(f"{base}/jobs/{job_id}", headers=auth)
        assert job.json()["status"] == "success"


def test_a_reader_that_goes_away_ends_the_output_quietly(
    redis_sync: redis.Redis, redis_url: str
) -> None:
    envelope = job_event("j1").model_dump_json()
    with redis_sync.pipeline(transaction=False) as pipe:
        for _ in range(5000):  # far more than a pipe holds
            pipe.xadd("vod:stream", {"envelope": envelope})
        pipe.execute()
    command = [COMMAND, "replay"]
    with subprocess.Popen(
        command, env=env_for(redis_url=redis_url), cwd=WORKDIR, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    ) as replay:  # fmt: skip
        assert replay.stdout is not None
        assert json.loads(replay.stdout.readline())["job_id"] == "j1"
        replay.stdout.close()  # as `| head -1` does
        _, errors = replay.communicate(timeout=30)
    assert errors == ""
    assert replay.returncode == 1


def test_a_redis_url_that_can_never_work_stops_serve(redis_server: RedisServer) -> None:
    env = env_for(
        auth_keys=AUTH_KEY,
        callback_url="https://h.example.com/cb",
        redis_url=f"redis://127.0.0.1:{redis_server.port}/99",  # no such database
    )
    result = run("serve", "--port", str(free_port()), env=env)
    assert result.returncode == 2
    assert "VOD_WEBHOOK_REDIS_URL: redis://127.0.0.1" in result.stderr
    assert "DB index is out of range" in result.stderr


def test_a_redis_not_answering_yet_is_named_and_readiness_stays_down() -> None:
    port = free_port()
    settings = {"redis_url": f"redis://127.0.0.1:{free_port()}/0", "auth_keys": AUTH_KEY,
                "callback_url": "https://h.example.com/cb"}  # fmt: skip
    server = Process(["serve", "--port", str(port)], env_for(**settings))
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 15, "serve to listen")
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 503
    finally:
        server.stop()
    [warning] = [log for log in server.json_logs() if log["event"] == "redis_unreachable"]
    assert warning["variable"] == "VOD_WEBHOOK_REDIS_URL"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_an_install_without_the_commands_extras_says_what_to_install() -> None:
    # As a bare `pip install vod-webhook` would be: orjson (of the [cli] extra) missing.
    code = (
        "import sys; sys.modules['orjson'] = None; sys.argv = ['vod-webhook', '--help']; "
        "from webhook.__main__ import main; sys.exit(main())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=WORKDIR, timeout=60
    )
    assert result.returncode == 2
    assert "needs the package 'orjson'" in result.stderr
    assert "pip install 'vod-webhook[all]'" in result.stderr


EMBEDDED = Settings(_env_file=None, redis_url=None)
ON_REDIS = Settings(_env_file=None, redis_url="redis://127.0.0.1:6379/0")
HINT = (
    " (no VOD_WEBHOOK_REDIS_URL is set: the embedded store lives inside a running "
    "`vod-webhook serve`; start that first, or point VOD_WEBHOOK_REDIS_URL at Redis)"
)
DOWN = StoreUnavailable("Redis is unavailable: Connection refused")
THROTTLED = VodError("Throttling", "slow down", request_id="r1")


@pytest.mark.parametrize(
    ("error", "settings", "status"),
    [
        (DOWN, EMBEDDED, (1, f"Redis is unavailable: Connection refused{HINT}")),
        (DOWN, ON_REDIS, (1, "Redis is unavailable: Connection refused")),
        (UnrecordedSubmission("j1", "r1", "Redis is unavailable: Connection refused"), ON_REDIS,
         (1, "job j1 was submitted (request id r1) but could not be recorded: Redis is unavailable: Connection refused")),
        (RedisError("Connection refused"), None, (1, "Redis is unavailable: Connection refused")),
        (ConfigError("no Alibaba Cloud credentials"), None, (2, "no Alibaba Cloud credentials")),
        (THROTTLED, None, (1, "VOD refused: Throttling: slow down (request id r1)")),
        (KeyboardInterrupt(), None, (130, None)),
    ],
)  # fmt: skip
def test_an_error_ends_a_command_with_its_exit_code_and_message(
    error: BaseException, settings: Settings | None, status: tuple[int, str | None]
) -> None:
    assert exit_status(error, settings) == status
    # As a TaskGroup raises it (an ExceptionGroup unless it holds a KeyboardInterrupt).
    assert exit_status(BaseExceptionGroup("tasks", [error]), settings) == status


def test_a_group_of_errors_ends_a_command_as_its_first_error() -> None:
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [DOWN]), THROTTLED])
    assert exit_status(nested, EMBEDDED) == (1, f"Redis is unavailable: Connection refused{HINT}")
    both = ExceptionGroup("tasks", [THROTTLED, ConfigError("no Alibaba Cloud credentials")])
    assert exit_status(both) == (1, "VOD refused: Throttling: slow down (request id r1)")


def test_an_error_no_command_should_end_in_is_left_to_raise() -> None:
    bug = RuntimeError("a bug")
    assert exit_status(bug) is None
    # Not even beside errors of ours: the traceback must show it.
    assert exit_status(ExceptionGroup("tasks", [DOWN, bug])) is None
    assert exit_status(ExceptionGroup("tasks", [bug, THROTTLED])) is None
