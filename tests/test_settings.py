import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic_core import PydanticUndefined

from webhook.settings import (
    ConfigError,
    Settings,
    check_receiver_settings,
    load_settings,
    redis_url_of,
)

README = Path(__file__).parent.parent / "README.md"


def config_table() -> str:
    """The README's configuration table, rendered from the Settings field descriptions."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if default is None or default == [] or default is PydanticUndefined:
            shown = "(unset)"
        else:
            shown = f"`{str(default).lower() if isinstance(default, bool) else default}`"
        rows.append(f"| `VOD_WEBHOOK_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)


def test_readme_documents_every_setting() -> None:
    table = config_table()
    assert table in README.read_text(), f"update the README's configuration table to:\n{table}"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOD_WEBHOOK_AUTH_KEYS", " OldKey123 ,NewKey456,")
    monkeypatch.setenv("VOD_WEBHOOK_MAX_SKEW_SECONDS", "120")
    monkeypatch.setenv("VOD_WEBHOOK_REDIS_URL", "redis://cache:6379/2")
    settings = load_settings(_env_file=None)
    assert [key.get_secret_value() for key in settings.auth_keys] == ["OldKey123", "NewKey456"]
    assert settings.max_skew_seconds == 120
    assert redis_url_of(settings) == "redis://cache:6379/2"
    assert "OldKey123" not in repr(settings)


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("VOD_WEBHOOK_KEY_PREFIX=from-dotenv\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().key_prefix == "from-dotenv"


def test_defaults() -> None:
    settings = load_settings(_env_file=None)
    assert settings.max_skew_seconds == 300
    assert settings.callback_path == "/callbacks/vod"
    assert settings.max_body_bytes == 65536
    assert settings.key_prefix == "vod"
    assert redis_url_of(settings) == "redis://127.0.0.1:6399/0"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_skew_seconds": 0}, "VOD_WEBHOOK_MAX_SKEW_SECONDS: Input should be greater"),
        ({"redis_url": "http://x"}, "VOD_WEBHOOK_REDIS_URL"),
        ({"callback_url": "https://x/" + "a" * 300}, "at most 256 bytes"),
        ({"callback_path": "callbacks"}, "VOD_WEBHOOK_CALLBACK_PATH"),
        ({"callback_path": "/readyz"}, "VOD_WEBHOOK_CALLBACK_PATH"),
        ({"auth_keys": "good1,has space"}, "key #2 is not a VOD AuthKey"),
        ({"log_format": "xml"}, "VOD_WEBHOOK_LOG_FORMAT"),
        ({"redis_timeout_seconds": 10}, "VOD_WEBHOOK_REDIS_TIMEOUT_SECONDS"),
    ],
)
def test_invalid_values_name_the_variable(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="invalid configuration") as caught:
        load_settings(_env_file=None, **overrides)
    assert message in str(caught.value)


def test_receiver_requires_keys_or_an_explicit_opt_out() -> None:
    with pytest.raises(ConfigError, match="ALLOW_UNSIGNED"):
        check_receiver_settings(load_settings(_env_file=None))
    check_receiver_settings(load_settings(_env_file=None, allow_unsigned=True))
    with pytest.raises(ConfigError, match="CALLBACK_URL is required"):
        check_receiver_settings(load_settings(_env_file=None, auth_keys="Key12345Abcdefghij"))
    check_receiver_settings(
        load_settings(
            _env_file=None, auth_keys="Key12345Abcdefghij", callback_url="https://h.example/cb"
        )
    )


def test_the_suite_ignores_the_callers_environment_and_dotenv(tmp_path: Path) -> None:
    """With the README's exports (and more) still set in the shell, and a `.env` where pytest is
    started, tests that read settings in process and in CLI subprocesses still pass."""
    (tmp_path / ".env").write_text("VOD_WEBHOOK_KEY_PREFIX=from-dotenv\nVOD_WEBHOOK_API_TOKEN=t\n")
    shell = os.environ | {
        "VOD_WEBHOOK_AUTH_KEYS": "DemoAuthKey2026xyz",
        "VOD_WEBHOOK_CALLBACK_URL": "http://127.0.0.1:8000/callbacks/vod",
        "VOD_WEBHOOK_API_TOKEN": "a-token-from-the-shell",
        "VOD_WEBHOOK_KEY_PREFIX": "myapp",
        "VOD_WEBHOOK_VOD_ENDPOINT": "http://127.0.0.1:9000",
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "DemoKeyId",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "DemoSecret",
    }
    tests = Path(__file__).parent
    chosen = [
        f"{tests / 'test_api.py'}::test_read_api_is_off_without_a_token",
        f"{tests / 'test_settings.py'}::test_receiver_requires_keys_or_an_explicit_opt_out",
        f"{tests / 'test_cli.py'}::test_serve_on_redis_with_two_workers",
    ]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *chosen],
        cwd=tmp_path,
        env=shell,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout
