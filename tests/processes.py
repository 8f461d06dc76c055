"""Running the real `vod-webhook` command in subprocesses, for the CLI and end-to-end tests."""

from __future__ import annotations

import atexit
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import AUTH_KEY, clean_env, free_port, wait_for

# The AccessKey pair every CLI subprocess signs with, and emulators accept.
ACCESS_KEY_ID = "LTAI5tEmulatorKey"
ACCESS_KEY_SECRET = "emulator-secret-0123456789"
COMMAND = str(Path(sys.executable).parent / "vod-webhook")
# CLI subprocesses run in an empty directory: a `.env` where the suite was started is not theirs.
WORKDIR = tempfile.mkdtemp(prefix="vod-webhook-tests-")
atexit.register(shutil.rmtree, WORKDIR, ignore_errors=True)


class Process:
    """A CLI subprocess whose output lines are collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            [COMMAND, *args],
            env=env,
            cwd=WORKDIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._collect, args=(stream, lines), daemon=True)
            for stream, lines in (
                (self.popen.stdout, self.stdout),
                (self.popen.stderr, self.stderr),
            )
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(stream: object, lines: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.append(line)
        stream.close()  # type: ignore[attr-defined]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            # Killed so that nothing outlives the test, and its last words say where it hung.
            self.popen.kill()
            self.popen.wait(timeout)
            for reader in self._readers:
                reader.join(timeout)
            raise AssertionError(
                f"{self.popen.args!r} did not stop within {timeout} s of signal {sig}; its last "
                "output:\n" + "".join(self.stderr[-30:])
            ) from None
        for reader in self._readers:  # they end at the pipes' end: every line is in
            reader.join(timeout)
        return code

    def json_logs(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.stderr if line.startswith("{")]


def env_for(**settings: str) -> dict[str, str]:
    # A test never calls the real VOD: without an emulator, calls go to a closed loopback port.
    settings.setdefault("vod_endpoint", "http://127.0.0.1:9")
    env = clean_env()
    env.update({f"VOD_WEBHOOK_{name.upper()}": value for name, value in settings.items()})
    env.setdefault("VOD_WEBHOOK_LOG_FORMAT", "json")
    env["ALIBABA_CLOUD_ACCESS_KEY_ID"] = ACCESS_KEY_ID
    env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = ACCESS_KEY_SECRET
    return env


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [COMMAND, *args],
        env=env or env_for(),
        cwd=WORKDIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_until_answering(process: Process, url: str) -> None:
    """Until `url` answers 200; fails at once, with its output, if the process exits."""

    def answering() -> bool:
        if process.popen.poll() is not None:
            raise AssertionError(f"{process.popen.args!r} exited:\n" + "".join(process.stderr))
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(answering, 20, url)


@contextmanager
def serving(*args: str, **settings: str) -> Iterator[tuple[str, Process]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings.setdefault("callback_url", f"{base}/callbacks/vod")
    settings.setdefault("auth_keys", AUTH_KEY)
    process = Process(["serve", "--port", str(port), *args], env_for(**settings))
    try:
        wait_until_answering(process, f"{base}/readyz")
        yield base, process
    finally:
        process.stop()


@contextmanager
def listening(*args: str, **settings: str) -> Iterator[Process]:
    process = Process(["listen", *args], env_for(**settings))
    try:
        wait_for(lambda: any("listening on" in line for line in process.stderr), 15, "listen")
        yield process
    finally:
        process.stop(signal.SIGINT)


@contextmanager
def emulating(*args: str, port: int | None = None) -> Iterator[tuple[str, Process]]:
    """`vod-webhook emulator` accepting the test AccessKey; yields its base URL."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    process = Process(
        ["emulator", "--port", str(port), "--access-key", f"{ACCESS_KEY_ID}:{ACCESS_KEY_SECRET}",
         *args],
        env_for(),
    )  # fmt: skip
    try:
        wait_until_answering(process, f"{base}/_emulator/state")
        yield base, process
    finally:
        process.stop()


def emulator_jobs(base: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = httpx.get(f"{base}/_emulator/state").json()["jobs"]
    return jobs
