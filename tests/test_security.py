"""Key strength at start-up and the read API's token check (README "Security")."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Receiver, RedisServer, free_port
from tests.processes import emulating, env_for, run, serving
from webhook.settings import ConfigError, check_receiver_settings, load_settings

TOKEN = "s3cret-api-token"


@pytest.mark.parametrize(
    ("keys", "why"),
    [
        ("Demo1234Key", "key #1 has 11 characters; at least 16"),
        ("StrongAuthKey2026abc,Old1Key", "key #2 has 7 characters"),
        ("alllowercaseletters1234", "key #1 must contain upper case"),
    ],
)
def test_weak_auth_keys_stop_the_receiver(keys: str, why: str) -> None:
    settings = load_settings(_env_file=None, auth_keys=keys, callback_url="https://h.example/cb")
    with pytest.raises(ConfigError) as caught:
        check_receiver_settings(settings)
    assert "VOD_WEBHOOK_AUTH_KEYS" in str(caught.value)
    assert why in str(caught.value)
    assert "VOD_WEBHOOK_ALLOW_WEAK_AUTH_KEYS" in str(caught.value)


def test_serve_with_a_short_key_exits_2_naming_the_variable() -> None:
    env = env_for(auth_keys="Demo1234Key", callback_url="https://h.example.com/cb")
    result = run("serve", "--port", str(free_port()), env=env)
    assert result.returncode == 2
    assert "VOD_WEBHOOK_AUTH_KEYS: key #1 has 11 characters" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_weak_key_runs_only_when_allowed_and_is_logged() -> None:
    with serving(
        auth_keys="Demo1234Key", allow_weak_auth_keys="true", embedded_port=str(free_port())
    ) as (base, server):
        sent = run("send-test", "--url", f"{base}/callbacks/vod", "--key", "Demo1234Key")
        assert sent.returncode == 0, sent.stdout + sent.stderr
    warnings = [log for log in server.json_logs() if log["event"] == "weak_auth_keys_allowed"]
    assert warnings
    assert warnings[0]["level"] == "warning"
    assert "Demo1234Key" not in "".join(server.stderr)  # the key itself is never logged


def test_register_refuses_a_key_the_receiver_would_refuse(redis_server: RedisServer) -> None:
    with emulating() as (emulator, _):
        env = env_for(vod_endpoint=emulator, redis_url=redis_server.url)
        args = ["register", "--callback-url", "https://h.example.com/cb", "--auth-key", "Sh0rtKey"]
        short = run(*args, env=env)
        assert short.returncode == 2
        assert "--auth-key has 8 characters; at least 16" in short.stderr
        allowed = run(*args, env=env | {"VOD_WEBHOOK_ALLOW_WEAK_AUTH_KEYS": "true"})
        assert allowed.returncode == 0, allowed.stderr


@pytest.mark.parametrize(
    "given",
    ["", "s", TOKEN[:-1], TOKEN + "x", "x" * len(TOKEN), TOKEN.upper(), "t" * 5000, "tökén"],
)
async def test_read_api_refuses_a_wrong_token_of_any_length(
    start_receiver: Receiver, http: httpx.AsyncClient, given: str
) -> None:
    base = await start_receiver(api_token=TOKEN)
    response = await http.get(
        f"{base}/jobs/j1", headers={b"Authorization": f"Bearer {given}".strip().encode()}
    )
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert (
        await http.get(f"{base}/jobs/j1", headers={"Authorization": f"Bearer {TOKEN}"})
    ).status_code == 404
