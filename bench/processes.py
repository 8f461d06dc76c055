"""The processes the benchmarks and fault scenarios run: their own redis-server, the real
`vod-webhook serve`, `emulator` and `ingest-mns`, any other server command, and the CPU time and
memory of a process tree."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx
import redis

from webhook.mns import AccessKey

COMMAND = str(Path(sys.executable).parent / "vod-webhook")
# At least 16 characters, upper and lower case letters and digits, as VOD allows.
AUTH_KEY = "FaultSuite1234Key5678"
START_SECONDS = 30
# The AccessKey pair the emulator accepts, at VOD's API and at its MNS.
ACCESS_KEY = AccessKey("LTAI5tFaultSuiteKey", "fault-suite-secret-0123456789")


class SetupError(RuntimeError):
    """A process of the run did not come up or broke: the run proves nothing."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def poll(ready: Callable[[], bool], what: str, timeout: float = START_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise SetupError(f"{what} did not come up within {timeout:.0f} s")
        time.sleep(0.02)


class _Server:
    """A server subprocess that `start` launches; killed or stopped, and a context manager."""

    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last save."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def stop(self) -> int | None:
        """SIGTERM, SIGKILL if it is not gone in 20 s; its exit code (None: it was not running)."""
        if self.process is None:
            return None
        self.process.terminate()
        try:
            code = self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
        self.process = None
        return code

    def _launch(self, args: list[str], env: dict[str, str], log: Path) -> None:
        with log.open("ab") as output:
            self.process = subprocess.Popen([COMMAND, *args], env=env, stdout=output, stderr=output)

    def _check_running(self, what: str, log: Path) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise SetupError(f"{what} exited with {self.process.returncode}; see {log}")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def own_env() -> dict[str, str]:
    """This environment without its VOD_WEBHOOK_* and ALIBABA_* settings: a process of the run
    is configured by the run alone (and never reaches Alibaba Cloud's metadata service)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOD_WEBHOOK_", "ALIBABA_"))}
    env["ALIBABA_CLOUD_ECS_METADATA_DISABLED"] = "true"
    return env


class RedisProcess(_Server):
    """redis-server on a fixed loopback port with its data in `directory`.

    With `aof` every write is fsynced to the append-only file before Redis answers it
    (`appendfsync always`), so what Redis acknowledged survives kill -9.
    """

    def __init__(self, directory: Path, *, aof: bool = True, port: int | None = None) -> None:
        self.directory = directory
        self.aof = aof
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SetupError("redis-server is not installed; `make faults` installs it")
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.aof
            else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", *persistence, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        poll(self.answers, f"redis-server on port {self.port}")

    def answers(self) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=10)


class Receiver(_Server):
    """`vod-webhook serve` on a fixed loopback port, logging JSON lines to a file."""

    def __init__(
        self,
        redis_url: str,
        log: Path,
        *,
        port: int | None = None,
        workers: int = 1,
        **settings: str,
    ):
        self.port = port or free_port()
        self.workers = workers
        self.base = f"http://127.0.0.1:{self.port}"
        self.callback_url = f"{self.base}/callbacks/vod"
        self.log = log
        self.env = own_env()
        self.env.update(
            {
                "VOD_WEBHOOK_REDIS_URL": redis_url,
                "VOD_WEBHOOK_AUTH_KEYS": AUTH_KEY,
                "VOD_WEBHOOK_CALLBACK_URL": self.callback_url,
                "VOD_WEBHOOK_LOG_FORMAT": "json",
                "VOD_WEBHOOK_LOG_LEVEL": "warning",
                "VOD_WEBHOOK_VOD_ENDPOINT": "http://127.0.0.1:9",
            }
        )
        self.env.update({f"VOD_WEBHOOK_{k.upper()}": v for k, v in settings.items()})
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, *, wait_ready: bool = True) -> None:
        args = ["serve", "--port", str(self.port), "--workers", str(self.workers)]
        self._launch(args, self.env, self.log)
        self.starts += 1
        poll(self.ready if wait_ready else self.listening, f"vod-webhook serve on {self.base}")

    def _get(self, path: str) -> int | None:
        self._check_running("vod-webhook serve", self.log)
        try:
            return httpx.get(f"{self.base}{path}", timeout=2).status_code
        except httpx.HTTPError:
            return None

    def ready(self) -> bool:
        return self._get("/readyz") == 200

    def listening(self) -> bool:
        return self._get("/healthz") == 200

    def stores_opened(self) -> int:
        """Workers that have opened the store (logged at the info level): a cluster's receiver
        records its number of partitions then, and checks it against the one recorded."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text.count('"store_ready"')

    def tracebacks(self) -> int:
        """Log lines carrying a traceback (an unexpected exception in the receiver)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return sum(1 for line in text.splitlines() if "Traceback" in line)


class Emulator(_Server):
    """`vod-webhook emulator` on a fixed loopback port, accepting ACCESS_KEY; also the MNS
    endpoint of the queues created on it."""

    def __init__(self, log: Path, *, port: int | None = None):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        access_key = f"{ACCESS_KEY.id}:{ACCESS_KEY.secret}"
        self._launch(["emulator", "--port", str(self.port), "--access-key", access_key],
                     own_env(), self.log)  # fmt: skip
        poll(self.answers, f"vod-webhook emulator on {self.base}")

    def answers(self) -> bool:
        self._check_running("vod-webhook emulator", self.log)
        try:
            return httpx.get(f"{self.base}/_emulator/state", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def queue_counts(self, name: str) -> dict[str, int]:
        """The queue's messages now (visible, invisible, delayed) and so far (sent, received,
        deleted)."""
        state = httpx.get(f"{self.base}/_emulator/state", timeout=10).json()
        counts: dict[str, int] = state["queues"][name]
        return counts


class Ingester(_Server):
    """`vod-webhook ingest-mns` taking MNS queue `queue` at `endpoint` (signing with
    ACCESS_KEY) into Redis at `redis_url`, logging JSON lines to a file."""

    def __init__(
        self, redis_url: str, endpoint: str, queue: str, log: Path, **settings: str
    ) -> None:
        self.log = log
        self.env = own_env()
        self.env.update(
            {
                "ALIBABA_CLOUD_ACCESS_KEY_ID": ACCESS_KEY.id,
                "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ACCESS_KEY.secret,
                "VOD_WEBHOOK_REDIS_URL": redis_url,
                "VOD_WEBHOOK_MNS_ENDPOINT": endpoint,
                "VOD_WEBHOOK_MNS_QUEUE": queue,
                "VOD_WEBHOOK_LOG_FORMAT": "json",
                # Info: the log tells each message's fate, and each pause and resumption.
                "VOD_WEBHOOK_LOG_LEVEL": "info",
                "VOD_WEBHOOK_VOD_ENDPOINT": "http://127.0.0.1:9",
            }
        )
        self.env.update({f"VOD_WEBHOOK_{k.upper()}": v for k, v in settings.items()})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Once it has checked the queue and ingests (it says so on stderr)."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        self._launch(["ingest-mns"], self.env, self.log)

        def ingesting() -> bool:
            self._check_running("vod-webhook ingest-mns", self.log)
            with self.log.open("rb") as log:
                log.seek(offset)
                return b"ingesting MNS queue" in log.read()

        poll(ingesting, f"vod-webhook ingest-mns ({self.log.name})")


@contextmanager
def started(args: list[str], probe: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A server command, once `probe` answers; stopped on exit. Its output goes to a file (a
    pipe nobody reads would block it), shown if it exits early."""
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(args, env=env, stdout=output, stderr=output)

        def up() -> bool:
            if process.poll() is not None:
                output.seek(0)
                text = output.read().decode(errors="replace")[-2000:]
                raise SetupError(f"{args[:3]} exited with {process.returncode}:\n{text}")
            try:
                return httpx.get(probe, timeout=1).status_code < 500
            except httpx.HTTPError:
                return False

        try:
            poll(up, probe)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (a `--workers` supervisor and its workers)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parents[int(stat.parent.name)] = int(fields[1])
    tree = [pid]
    for parent in tree:  # grows while walked: breadth first
        tree.extend(child for child, its_parent in parents.items() if its_parent == parent)
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the live processes `pids` have used (every thread included)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
