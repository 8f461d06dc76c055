"""Real local Redis topologies for tests: a Redis Cluster of 3 masters + 3 replicas and a
Sentinel set (master, replica, 3 sentinels), each node a `redis-server` subprocess on loopback,
with no password unless given one (then every helper here authenticates with it).

Every wait polls the topology's state (never a fixed sleep) and, on timeout, fails with what
the nodes reported, so a slow CI run says which node was not where it should be.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from tests.conftest import wait_for

HOST = "127.0.0.1"
SLOTS = 16384
SERVICE = "mymaster"
# Durable enough that a killed master's acknowledged (WAIT 1 0) writes live on in its replica
# and a restarted node comes back with its files; no RDB snapshots to slow anything down.
PERSISTENCE = ("--appendonly", "yes", "--appendfsync", "always", "--save", "")
# Full syncs (start-up, a restarted node rejoining) start at once instead of waiting 5 s for
# more replicas to share a diskless transfer.
FAST_SYNC = ("--repl-diskless-sync-delay", "0")
# Generous against a loaded CI machine; a healthy failover takes 2-4 s.
TIMEOUT = 30.0
# The password each password-protected node (data node or sentinel) asks of its clients, by
# port: `connect` and `ask` use it, so every helper below works on either kind of topology.
PASSWORDS: dict[int, str] = {}


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        # redis-cli ships with redis-server (redis-tools): one message for both.
        pytest.fail("redis-server is not installed; `make test` installs it")
    return path


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports: each socket stays bound until all are chosen, so
    the kernel cannot hand the same port out twice."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]


@contextmanager
def connect(port: int) -> Iterator[redis.Redis]:
    # Short timeouts: a node being killed or restarted must not stall a poll for long.
    client = redis.Redis(
        HOST,
        port,
        password=PASSWORDS.get(port),
        decode_responses=True,
        socket_timeout=2,
        socket_connect_timeout=1,
    )
    try:
        yield client
    finally:
        client.close()


def ask(port: int, *command: Any) -> Any:
    """The reply to one command, or None if the node does not answer (down, loading, ...).
    A refused password is raised: a node that will never answer this helper is a bug here."""
    try:
        with connect(port) as client:
            return client.execute_command(*command)
    except redis.AuthenticationError:
        raise
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
        return None


def settle(predicate: Callable[[], bool], what: str, describe: Callable[[], str]) -> None:
    """Wait for `predicate`; on timeout say what the topology looked like."""
    try:
        wait_for(predicate, timeout=TIMEOUT, what=what)
    except AssertionError as error:
        raise AssertionError(f"{error}; state:\n{describe()}") from None


class Node:
    """One redis-server process with a directory of its own, which it keeps across restarts."""

    def __init__(self, port: int, root: Path, args: list[str]) -> None:
        self.port = port
        self.dir = root / str(port)
        self.dir.mkdir()
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *once: str) -> None:
        """Start it (`once`: options for this start only, as --replicaof for the first)."""
        assert not self.alive, f"redis-server on {self.port} is running"
        self.stop()  # reap one that exited on its own (a SHUTDOWN, a crash)
        self.process = subprocess.Popen(
            [binary("redis-server"), *self.args, *once],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
        )
        # LOADING (replaying its AOF) counts as not answering yet.
        wait_for(self._answers, TIMEOUT, f"redis-server on {self.port}")

    def _answers(self) -> bool:
        if not self.alive:
            raise AssertionError(f"redis-server on {self.port} exited:\n{self.log()}")
        return ask(self.port, "PING") is True

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None

    def log(self, lines: int = 15) -> str:
        path = self.dir / "redis.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def server_args(port: int, password: str | None = None) -> list[str]:
    """A data node's options; with a password, it asks it of clients and gives it to its
    master (any node may be a replica after a failover)."""
    auth = ["--requirepass", password, "--masterauth", password] if password else []
    return [
        "--port", str(port), "--bind", HOST, "--dir", ".", "--logfile", "redis.log",
        "--loglevel", "notice", *PERSISTENCE, *FAST_SYNC, *auth,
    ]  # fmt: skip


def userinfo(password: str | None) -> str:
    """The `:password@` of the product's URLs (percent-encoded), or nothing."""
    return f":{quote(password, safe='')}@" if password else ""


def conf_value(text: str) -> str:
    """`text` as one quoted argument of a redis.conf / sentinel.conf directive."""
    assert not {'"', "\\"} & set(text), f"{text!r} needs escaping in a config file"
    return f'"{text}"'


def replication(port: int) -> dict[str, Any]:
    """INFO replication, parsed; {} if the node does not answer."""
    info: dict[str, Any] = ask(port, "INFO", "replication") or {}
    return info


def replica_ports(info: dict[str, Any], *, online: bool = True) -> set[int]:
    """The ports of the replicas a master's INFO replication lists (online ones only)."""
    return {
        int(slave["port"])
        for name, slave in info.items()
        if name.startswith("slave") and isinstance(slave, dict)
        if not online or slave.get("state") == "online"
    }


def as_dict(reply: Any) -> dict[str, str]:
    """A map reply (RESP3) or flat list of pairs (RESP2) as a dict of strings."""
    if not reply:
        return {}
    pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
    return {str(k): str(v) for k, v in pairs}


def is_empty(port: int) -> bool:
    return bool(ask(port, "DBSIZE") == 0)


# --- Redis Cluster ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterNode:
    """One line of CLUSTER NODES, as the node asked sees it."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str
    connected: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})

    def owns(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slots)


def parse_nodes(text: str) -> list[ClusterNode]:
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        # <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
        slots = tuple(
            (int(first), int(last or first))
            for first, _, last in (s.partition("-") for s in fields[8:] if not s.startswith("["))
        )
        nodes.append(
            ClusterNode(
                id=fields[0],
                port=int(fields[1].split("@")[0].rsplit(":", 1)[1]),
                flags=frozenset(fields[2].split(",")),
                master_id=fields[3],
                connected=fields[7] == "connected",
                slots=slots,
            )
        )
    return nodes


def parse_info(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class LocalCluster:
    """A Redis Cluster of 6 nodes on loopback: 3 masters, each with one replica; with a
    `password`, every node asks it of clients (and of each other's replication links)."""

    SIZE = 6

    def __init__(self, password: str | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="vod-webhook-cluster-"))
        self.password = password
        # Each node's cluster bus on a free port of its own (not port + 10000, which may be
        # taken or past 65535).
        ports = free_ports(2 * self.SIZE)
        self.nodes = {
            port: Node(port, self.root, [*server_args(port, password), *self.cluster_args(bus)])
            for port, bus in zip(ports[: self.SIZE], ports[self.SIZE :], strict=True)
        }
        if password:
            PASSWORDS.update(dict.fromkeys(self.nodes, password))
        self.seeds: list[int] = []

    @staticmethod
    def cluster_args(bus: int) -> list[str]:
        return [
            "--cluster-enabled", "yes", "--cluster-port", str(bus),
            "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        """The product's URL: the three initial masters as seeds (still valid after failovers,
        since a replica answers with the slot map too)."""
        hosts = ",".join(f"{HOST}:{port}" for port in self.seeds)
        return f"redis+cluster://{userinfo(self.password)}{hosts}"

    def start(self) -> None:
        atexit.register(self.stop)  # should the session die before the fixture's teardown
        try:
            self._create()
        except BaseException:
            self.stop()
            raise

    def _create(self) -> None:
        for node in self.nodes.values():
            node.start()
        # REDISCLI_AUTH is `-a` without its warning (nor the password in `ps`).
        auth = {"REDISCLI_AUTH": self.password} if self.password else {}
        created = subprocess.run(
            [binary("redis-cli"), "--cluster", "create",
             *(f"{HOST}:{port}" for port in self.nodes), "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=TIMEOUT, check=False, env=os.environ | auth,
        )  # fmt: skip
        if created.returncode != 0:
            pytest.fail(f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}")
        settle(self.healthy, "the cluster to form", self.describe)
        self.seeds = self.seeds or self.masters()  # a rebuild keeps the URL

    def view(self, port: int | None = None) -> list[ClusterNode]:
        """CLUSTER NODES as `port` (else the first live node) sees it; [] if it does not answer."""
        for asked in [port] if port else self.live():
            text = ask(asked, "CLUSTER", "NODES")
            if text:
                return parse_nodes(text)
        return []

    def live(self) -> list[int]:
        return [port for port, node in self.nodes.items() if node.alive]

    def masters(self) -> list[int]:
        """The ports of the masters serving slots now (failovers change them)."""
        return sorted(n.port for n in self.view() if n.is_master and n.slots and not n.failing)

    def replicas(self) -> list[int]:
        return sorted(n.port for n in self.view() if not n.is_master and not n.failing)

    def master_of(self, key: str) -> int:
        """The port of the master owning `key`'s slot."""
        slot = ask(self.live()[0], "CLUSTER", "KEYSLOT", key)
        owners = [n.port for n in self.view() if n.is_master and not n.failing and n.owns(slot)]
        assert len(owners) == 1, f"slot {slot} of {key!r} is served by {owners}"
        return owners[0]

    def kill_master_of(self, key: str) -> int:
        """SIGKILL the master owning `key`'s slot; its port."""
        port = self.master_of(key)
        self.nodes[port].kill()
        return port

    def _state_ok(self, port: int) -> bool:
        text = ask(port, "CLUSTER", "INFO")
        if not text:
            return False
        info = parse_info(text)
        return info.get("cluster_state") == "ok" and info.get("cluster_slots_ok") == str(SLOTS)

    def wait_for_failover(self, killed_port: int) -> None:
        """Until a replica serves the killed master's slots, as every surviving node sees it,
        and each says cluster_state:ok."""

        def failed_over() -> bool:
            for port in self.live():
                view = self.view(port)
                if not view or not self._state_ok(port):
                    return False
                if any(n.port == killed_port and n.slots for n in view):
                    return False  # the failure is not detected yet, or not known here
            return True

        settle(failed_over, f"a replica to take over from {killed_port}", self.describe)

    def restart(self, port: int) -> None:
        """Start a killed node again with its directory (nodes.conf, AOF): it rejoins as a
        replica of whichever node took its slots. Waits until it is a connected replica (or,
        restarted before anyone noticed, a master with one) that every live node sees as up."""
        self.nodes[port].start()

        def rejoined() -> bool:
            info = replication(port)
            if info.get("role") == "slave":
                if info.get("master_link_status") != "up":
                    return False
            elif not replica_ports(info):
                return False
            if not self._state_ok(port):
                return False
            views = [self.view(p) for p in self.live()]
            return all(
                any(n.port == port and not n.failing and not n.is_master for n in view)
                for view in views
            )

        settle(rejoined, f"{port} to rejoin as a replica", self.describe)

    def healthy(self) -> bool:
        """All 6 up; each sees cluster_state:ok, all slots, and the same 3 masters, each with
        one replica whose link is up."""
        if len(self.live()) != self.SIZE:
            return False
        masters: set[int] | None = None
        for port in self.nodes:
            view = self.view(port)
            if len(view) != self.SIZE or any(n.failing or not n.connected for n in view):
                return False
            if not self._state_ok(port):
                return False
            seen = {n.port for n in view if n.is_master}
            if len(seen) != 3 or (masters is not None and seen != masters):
                return False
            masters = seen
        assert masters is not None
        return all(len(replica_ports(replication(port))) == 1 for port in masters)

    def ensure_healthy(self) -> None:
        """Leave 3 masters each with a connected replica whatever the last test did: restart
        dead nodes; should the cluster still not recover (say a whole shard was killed),
        build it again on the same ports."""
        if self.healthy():
            return
        for node in self.nodes.values():
            if not node.alive:
                node.start()
        try:
            settle(self.healthy, "the cluster to heal", self.describe)
        except AssertionError:
            self.rebuild()

    def rebuild(self) -> None:
        for node in self.nodes.values():
            node.stop(signal.SIGKILL)
            shutil.rmtree(node.dir)
            node.dir.mkdir()
        self._create()

    def flush(self) -> None:
        """FLUSHALL on every master until every node is empty (a write still in flight when
        asked, say a bench round's last callbacks, is flushed by the next one)."""
        masters = self.masters()
        nodes = [*masters, *(port for port in self.live() if port not in masters)]

        def empty() -> bool:
            if all(is_empty(port) for port in nodes):
                return True
            for port in masters:
                ask(port, "FLUSHALL", "SYNC")
            return False

        settle(empty, "the cluster to be empty", self.describe)

    def describe(self) -> str:
        lines = []
        for port, node in self.nodes.items():
            if not node.alive:
                lines.append(f"{port}: down")
                continue
            info = parse_info(ask(port, "CLUSTER", "INFO") or "")
            lines.append(
                f"{port}: {info.get('cluster_state')} slots_ok={info.get('cluster_slots_ok')} "
                f"sees "
                + "; ".join(
                    f"{n.port} {','.join(sorted(n.flags - {'myself'}))} {n.slots or ''}"
                    for n in self.view(port)
                )
            )
        return "\n".join(lines)

    def stop(self) -> None:
        """Terminate every node and remove their directories."""
        for port, node in self.nodes.items():
            node.stop()
            PASSWORDS.pop(port, None)
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.stop)


# --- Redis Sentinel ---------------------------------------------------------------------------


class LocalSentinel:
    """A master, one replica and 3 sentinels (quorum 2) monitoring them as `mymaster`.

    With a `password`, the master and replica ask it of clients and of each other, and the
    sentinels give it to them; with a `sentinel_password`, the sentinels ask that one of
    clients and give it to each other."""

    def __init__(self, password: str | None = None, sentinel_password: str | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="vod-webhook-sentinel-"))
        self.password = password
        self.sentinel_password = sentinel_password
        master, replica, *sentinels = free_ports(5)
        self.data = {
            port: Node(port, self.root, server_args(port, password)) for port in (master, replica)
        }
        self.first_master = master
        self.sentinels = {
            port: Node(port, self.root, ["sentinel.conf", "--sentinel"]) for port in sentinels
        }
        if password:
            PASSWORDS.update(dict.fromkeys(self.data, password))
        if sentinel_password:
            PASSWORDS.update(dict.fromkeys(self.sentinels, sentinel_password))

    @property
    def nodes(self) -> dict[int, Node]:
        return self.data | self.sentinels

    @property
    def url(self) -> str:
        """The product's URL: the data nodes' password before the sentinels, the sentinels'
        own as the `sentinel_password` option."""
        options = (
            f"?sentinel_password={quote(self.sentinel_password, safe='')}"
            if self.sentinel_password
            else ""
        )
        hosts = ",".join(f"{HOST}:{port}" for port in self.sentinels)
        return f"redis+sentinel://{userinfo(self.password)}{hosts}/{SERVICE}/0{options}"

    def start(self) -> None:
        atexit.register(self.stop)
        try:
            self._create()
        except BaseException:
            self.stop()
            raise

    def _create(self) -> None:
        master, replica = self.data
        self.data[master].start()
        self.data[replica].start("--replicaof", HOST, str(master))
        # Sentinels learn of replicas from the master's INFO, first asked as they connect: have
        # the replica listed by then rather than wait for the next INFO (every 10 s).
        settle(
            lambda: replica_ports(replication(master)) == {replica},
            "the replica to sync",
            self.describe,
        )
        for port, node in self.sentinels.items():
            # Sentinels rewrite their configuration file: one of its own, writable.
            (node.dir / "sentinel.conf").write_text(
                f"port {port}\n"
                f"bind {HOST}\n"
                f"dir {node.dir}\n"
                "logfile redis.log\n"
                f"sentinel monitor {SERVICE} {HOST} {master} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
                f"{self._auth_conf()}"
            )
            self._start(port)
        settle(self.healthy, "the sentinels to know each other", self.describe)

    def _auth_conf(self) -> str:
        """sentinel.conf's passwords: the data nodes' (auth-pass), and the sentinels' own,
        asked of clients (requirepass) and given to the other sentinels (sentinel-pass)."""
        lines = []
        if self.password:
            lines.append(f"sentinel auth-pass {SERVICE} {conf_value(self.password)}\n")
        if self.sentinel_password:
            value = conf_value(self.sentinel_password)
            lines += [f"requirepass {value}\n", f"sentinel sentinel-pass {value}\n"]
        return "".join(lines)

    def _start(self, port: int) -> None:
        self.nodes[port].start()
        if port in self.sentinels:
            # A sentinel turns a restarted old master into a replica only once it has reported
            # itself a master for 4 hello periods, seen in INFO (every 10 s for a replica): 20 s
            # as shipped. Poll INFO every 1 s and say hello every 0.5 s (discovery at start-up
            # is faster too): ~3 s. Not kept in sentinel.conf, so set at every start.
            with connect(port) as client:
                client.execute_command(
                    "SENTINEL", "DEBUG", "INFO-PERIOD", 1000, "PUBLISH-PERIOD", 500
                )

    def master_port(self) -> int:
        """The master's port, as the first sentinel that answers names it."""
        for port in self.sentinels:
            addr = ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            if addr:
                return int(addr[1])
        raise AssertionError("no sentinel answers")

    def _named(self) -> set[int | None]:
        """The master each sentinel names (None for one that does not answer)."""
        named: set[int | None] = set()
        for port in self.sentinels:
            addr = ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            named.add(int(addr[1]) if addr else None)
        return named

    def _sentinel_state(self, port: int) -> dict[str, str]:
        return as_dict(ask(port, "SENTINEL", "MASTER", SERVICE))

    def _known_replicas(self, port: int) -> list[dict[str, str]]:
        return [as_dict(r) for r in ask(port, "SENTINEL", "REPLICAS", SERVICE) or []]

    def kill_master(self) -> int:
        """SIGKILL the master; its port."""
        port = self.master_port()
        self.data[port].kill()
        return port

    def _is_master(self, port: int) -> bool:
        role = ask(port, "ROLE")
        return bool(role) and role[0] == "master"

    def wait_for_failover(self, old_port: int) -> None:
        """Until every sentinel names the same new master, and it answers ROLE as master."""

        def failed_over() -> bool:
            named = self._named()
            if len(named) != 1:
                return False
            (port,) = named
            return port is not None and port != old_port and self._is_master(port)

        settle(failed_over, f"a new master in place of {old_port}", self.describe)

    def restart(self, port: int) -> None:
        """Start a killed node again with its directory. A data node comes back as it was
        killed (a master); the sentinels make it a replica of the current master. Waits until
        that master lists it as an online replica and every sentinel sees it as a healthy one
        (or, restarted before the sentinels noticed, it is still the master they all name)."""
        self._start(port)
        if port in self.sentinels:
            settle(self.healthy, f"sentinel {port} to rejoin", self.describe)
            return

        def reconfigured() -> bool:
            if self._named() == {port}:
                return self._is_master(port)
            master = self.master_port()
            if port == master or port not in replica_ports(replication(master)):
                return False
            # The master may list it a moment before it says so itself.
            if self._is_master(port):
                return False
            return all(self._replica_ok(s, port) for s in self.sentinels)

        settle(reconfigured, f"{port} to be a replica again", self.describe)

    def _replica_ok(self, sentinel: int, port: int) -> bool:
        return any(
            int(r["port"]) == port and r["flags"] == "slave" and r["master-link-status"] == "ok"
            for r in self._known_replicas(sentinel)
        )

    def healthy(self) -> bool:
        """Every node up; every sentinel names the same master, which answers as master with
        the other data node as its online replica; and every sentinel sees that replica as
        fit and knows the 2 other sentinels."""
        if not all(node.alive for node in self.nodes.values()):
            return False
        named = self._named()
        if len(named) != 1 or None in named:
            return False
        (master,) = named
        assert master is not None
        (replica,) = set(self.data) - {master}
        if not self._is_master(master) or replica_ports(replication(master)) != {replica}:
            return False
        for port in self.sentinels:
            state = self._sentinel_state(port)
            if state.get("flags") != "master" or state.get("num-other-sentinels") != "2":
                return False
            if state.get("num-slaves") != "1" or not self._replica_ok(port, replica):
                return False
        return True

    def ensure_healthy(self) -> None:
        """Leave a master with a connected replica and 3 sentinels whatever the last test did:
        restart dead nodes; should that not heal it, build the set again on the same ports."""
        if self.healthy():
            return
        for port, node in self.nodes.items():
            if not node.alive:
                self._start(port)
        try:
            settle(self.healthy, "the sentinel set to heal", self.describe)
        except AssertionError:
            self.rebuild()

    def rebuild(self) -> None:
        for node in self.nodes.values():
            node.stop(signal.SIGKILL)
            shutil.rmtree(node.dir)
            node.dir.mkdir()
        self.data = {
            p: self.data[p] for p in sorted(self.data, key=lambda p: p != self.first_master)
        }
        self._create()

    def flush(self) -> None:
        """FLUSHALL on the master, and wait until the replica is empty too."""
        ask(self.master_port(), "FLUSHALL", "SYNC")
        settle(
            lambda: all(is_empty(port) for port, node in self.data.items() if node.alive),
            "the sentinel set to be empty",
            self.describe,
        )

    def describe(self) -> str:
        lines = []
        for port, node in self.data.items():
            role = ask(port, "ROLE") if node.alive else None
            lines.append(f"{port}: {role[:4] if role else 'down'}")
        for port, node in self.sentinels.items():
            if not node.alive:
                lines.append(f"sentinel {port}: down")
                continue
            state = self._sentinel_state(port)
            lines.append(
                f"sentinel {port}: master {state.get('port')} {state.get('flags')} "
                f"slaves={state.get('num-slaves')} sentinels={state.get('num-other-sentinels')} "
                f"replicas="
                + "; ".join(f"{r['port']} {r['flags']}" for r in self._known_replicas(port))
            )
        return "\n".join(lines)

    def stop(self) -> None:
        """Terminate every process and remove their directories."""
        for port, node in self.nodes.items():
            node.stop()
            PASSWORDS.pop(port, None)
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.stop)
