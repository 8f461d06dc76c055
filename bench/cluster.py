"""`make bench-cluster`: the receiver (`vod-webhook serve`, 1 and 2 workers) on a local Redis
Cluster (tests/topologies.py: 3 masters + 3 replicas on loopback, AOF fsynced always) with
VOD_WEBHOOK_PARTITIONS 1, 2 and 3, against a single redis-server of the same persistence run
beside it as the baseline.

Load as in `make bench` (bench/load.py: wrk in its own process, every callback a new job).
Rounds run interleaved (single, p1, p2, p3 with 1 worker, then with 2, single, ...) after a 1 s
warm-up, Redis flushed before each; the table shows medians. Beside the receiver's figures,
each master's CPU (INFO cpu) per callback its partitions received (their streams' XLEN), and
how the callbacks spread over the masters.

On a 2-core box wrk and the receiver take the cores, so req/s cannot show writes spreading over
masters: the CPU each master spends per callback does, as callbacks/s one master core could take.

    python -m bench.cluster [--seconds S] [--rounds R] [--json PATH]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from bench import load
from bench.processes import AUTH_KEY, RedisProcess, SetupError
from bench.receiver import CONNECTIONS, arguments, load_average, median, receiver
from tests.topologies import LocalCluster, ask
from webhook.keys import DEFAULT_PREFIX, Layout

PARTITIONS = (1, 2, 3)
WORKERS = (1, 2)


@dataclass(frozen=True)
class Backend:
    """A Redis the receiver runs on: `streams` names, for each master holding partitions, their
    stream keys (one entry per callback: each is a new job)."""

    name: str
    label: str
    url: str
    partitions: int
    streams: dict[int, list[str]]
    flush: Callable[[], None]


@dataclass
class Round:
    """One round against one receiver: wrk's and the receiver's figures, and per Redis node
    (port) its CPU seconds and the callbacks its partitions received."""

    load: load.Round
    load_average: float
    cpu_s: dict[int, float]
    callbacks: dict[int, int]


def placement(cluster: LocalCluster) -> dict[str, Any]:
    """Where each partition of the default prefix lands: its slot and the master serving it."""
    ranges = {
        n.port: [f"{a}-{b}" for a, b in n.slots] for n in cluster.view() if n.is_master and n.slots
    }
    partitions = [
        {
            "tag": keys.prefix,
            "slot": ask(cluster.masters()[0], "CLUSTER", "KEYSLOT", keys.prefix),
            "master": cluster.master_of(keys.stream),
        }
        for keys in Layout(DEFAULT_PREFIX, max(PARTITIONS), sharded=True).keys
    ]
    masters = {p["master"] for p in partitions}
    return {"partitions": partitions, "slots": ranges, "distinct": len(masters) == len(partitions)}


def print_placement(where: dict[str, Any]) -> None:
    print("partitions (CLUSTER KEYSLOT) and the masters serving their slots:")
    for p in where["partitions"]:
        slots = ",".join(where["slots"][p["master"]])
        print(f"  {p['tag']}: slot {p['slot']:5} on master :{p['master']} (slots {slots})")
    if where["distinct"]:
        print("  each on a master of its own: p2 writes to 2 masters, p3 to all 3")
    else:
        print("  two partitions share a master: p3 spreads over 2 masters only")


def stream_keys(cluster: LocalCluster, partitions: int) -> dict[int, list[str]]:
    streams: dict[int, list[str]] = {}
    for keys in Layout(DEFAULT_PREFIX, partitions, sharded=True).keys:
        streams.setdefault(cluster.master_of(keys.stream), []).append(keys.stream)
    return streams


@contextmanager
def node_clients(ports: list[int]) -> Iterator[dict[int, redis.Redis]]:
    with ExitStack() as stack:
        yield {p: stack.enter_context(redis.Redis(port=p, socket_timeout=10)) for p in ports}


def cpu_seconds(clients: dict[int, redis.Redis]) -> dict[int, float]:
    """Each node's own CPU (user + system, every thread; not its AOF rewrite children)."""
    info = {port: client.info("cpu") for port, client in clients.items()}
    return {port: i["used_cpu_sys"] + i["used_cpu_user"] for port, i in info.items()}


def measured(
    load_round: Callable[..., load.Round],
    url: str,
    pid: int,
    backend: Backend,
    nodes: dict[int, redis.Redis],
    seconds: float,
) -> Round:
    before = cpu_seconds(nodes)
    figures = load_round(url, AUTH_KEY, seconds=seconds, connections=CONNECTIONS, server_pid=pid)
    after = cpu_seconds(nodes)
    callbacks = {
        port: sum(int(nodes[port].xlen(key)) for key in keys)
        for port, keys in backend.streams.items()
    }
    # Every answered callback was recorded first (plus some still in flight when wrk stopped).
    if sum(callbacks.values()) < figures.requests:
        raise SetupError(
            f"{backend.label}: {sum(callbacks.values())} stream entries for "
            f"{figures.requests} callbacks answered"
        )
    return Round(
        load=figures,
        load_average=os.getloadavg()[0],
        cpu_s={port: after[port] - before[port] for port in nodes},
        callbacks=callbacks,
    )


def summary(backend: Backend, rounds: list[Round]) -> dict[str, Any]:
    """Medians over the rounds: the receiver's, each master's CPU per callback it received and
    its share of the callbacks, and Redis CPU per callback of the masters holding partitions
    and of every other node (the replicas, the masters left idle)."""
    masters = list(backend.streams)

    def per_round(r: Round) -> dict[str, float]:
        total = sum(r.callbacks.values())
        return {
            "redis_us": masters_us(r),
            "busiest_us": busiest_us(r),
            "others_us": sum(r.cpu_s.values()) / total * 1e6 - masters_us(r),
            **{f"us:{p}": r.cpu_s[p] / r.callbacks[p] * 1e6 for p in masters},
            **{f"share:{p}": r.callbacks[p] / total for p in masters},
        }

    figures = [per_round(r) for r in rounds]
    m = {key: statistics.median(f[key] for f in figures) for key in figures[0]}
    return {
        "receiver": median([r.load for r in rounds]),
        "redis_us": m["redis_us"],
        "busiest_master_us": m["busiest_us"],
        "other_nodes_us": m["others_us"],
        "masters": {p: {"us": m[f"us:{p}"], "share": m[f"share:{p}"]} for p in masters},
        "load_average": statistics.median(r.load_average for r in rounds),
    }


def masters_us(r: Round) -> float:
    """The CPU of the masters holding partitions per callback: does splitting cost more?"""
    return sum(r.cpu_s[p] for p in r.callbacks) / sum(r.callbacks.values()) * 1e6


def busiest_us(r: Round) -> float:
    """The busiest master's CPU per callback of the whole load: what caps the cluster."""
    return max(r.cpu_s[p] for p in r.callbacks) / sum(r.callbacks.values()) * 1e6


FIGURES: dict[str, Callable[[Round], float]] = {
    "req/s": lambda r: r.load.per_s,
    "receiver us/cb": lambda r: r.load.server_cpu_us,
    "redis us/cb": masters_us,
    "busiest master us/cb": busiest_us,
}


def ratios(results: dict[str, list[Round]]) -> dict[str, dict[str, float]]:
    """Per-round ratios (neighbouring rounds ran under the same neighbours' load), medians."""
    pairs = {
        "cluster p1 / single": ("p1", "single"),
        "p2 / p1": ("p2", "p1"),
        "p3 / p1": ("p3", "p1"),
    }
    out: dict[str, dict[str, float]] = {}
    for workers in WORKERS:
        for name, (top, bottom) in pairs.items():
            paired = list(
                zip(results[f"{top}_{workers}"], results[f"{bottom}_{workers}"], strict=True)
            )
            out[f"{name}, {workers}w"] = {
                figure: statistics.median(of(a) / of(b) for a, b in paired)
                for figure, of in FIGURES.items()
            }
    return out


def measure(seconds: float, rounds: int, folder: Path, cluster: LocalCluster) -> dict[str, Any]:
    """Run the rounds on `cluster` (started, healthy) and a redis-server of the bench's own."""
    load_round, generator = load.generator()
    where = placement(cluster)
    # The same persistence as the cluster's nodes (AOF, fsync always), without a replica.
    with RedisProcess(folder, aof=True) as single, ExitStack() as stack:
        single_client = stack.enter_context(single.client())
        streams = {single.port: [Layout().shared.stream]}
        backends = [Backend("single", "single", single.url, 1, streams, single_client.flushall)]
        backends += [
            Backend(
                f"p{n}", f"cluster p{n}", cluster.url, n, stream_keys(cluster, n), cluster.flush
            )
            for n in PARTITIONS
        ]
        servers: dict[str, tuple[Backend, str, int]] = {}
        labels: dict[str, str] = {}
        for workers in WORKERS:
            for b in backends:
                log = folder / f"{b.name}-{workers}.log"
                url, pid = stack.enter_context(receiver(b.url, log, workers, b.partitions))
                servers[f"{b.name}_{workers}"] = (b, url, pid)
                labels[f"{b.name}_{workers}"] = f"{b.label}, {workers} worker{'s' * (workers > 1)}"
                # Each has recorded its number of partitions: leave the next its own.
                b.flush()
        nodes = stack.enter_context(node_clients([single.port, *cluster.live()]))
        results: dict[str, list[Round]] = {name: [] for name in servers}
        for n in range(rounds + 1):  # the first round warms up and is not counted
            for name, (b, url, pid) in servers.items():
                b.flush()
                # A backend's nodes only: the other Redis idles meanwhile.
                on_single = b.name == "single"
                mine = {p: c for p, c in nodes.items() if (p == single.port) == on_single}
                figures = measured(load_round, url, pid, b, mine, 1 if n == 0 else seconds)
                if n:
                    results[name].append(figures)
                    print(f"round {n} {name}: {figures}", file=sys.stderr)
    return {
        "generator": generator,
        "placement": where,
        "labels": labels,
        "rounds": {name: [asdict(r) for r in runs] for name, runs in results.items()},
        "medians": {name: summary(servers[name][0], runs) for name, runs in results.items()},
        "ratios": ratios(results),
    }


def capacity(report: dict[str, Any]) -> list[str]:
    """What one receiver worker and one master core could take, from the 1-worker medians."""
    lines = []
    for name in ("single_1", "p1_1", "p3_1"):
        m = report["medians"][name]
        r = m["receiver"]
        lines.append(
            f"  one receiver worker, {report['labels'][name].split(',')[0]}: {r['per_s']:.0f} "
            f"callbacks/s at {r['server_cpu']:.0%} of a core, {r['server_cpu_us']:.0f} us CPU "
            f"each -> {1e6 / r['server_cpu_us']:.0f}/s per full core"
        )
    for name in ("single_1", *(f"p{n}_1" for n in PARTITIONS)):
        m = report["medians"][name]
        masters = ", ".join(
            f":{port} {v['us']:.0f} us -> {1e6 / v['us']:.0f}/s" for port, v in m["masters"].items()
        )
        lines.append(
            f"  Redis, {report['labels'][name].split(',')[0]}: per callback a master holds: "
            f"{masters}; the busiest master saturates one core at "
            f"{1e6 / m['busiest_master_us']:.0f} callbacks/s in all"
        )
    return lines


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\nvod-webhook cluster bench, {report['date']}: {report['generator']} -c{CONNECTIONS}, "
        f"{report['seconds']:g} s x {report['rounds_run']} rounds interleaved, medians; "
        f"{report['cores']} cores, load average {report['load_average']} at the start, "
        f"{report['load_average_end']} at the end"
    )
    print_placement(report["placement"])
    print(
        f"{'receiver on':28} {'req/s':>6} {'p50 ms':>6} {'p99 ms':>6} {'rcv us/cb':>9} "
        f"{'rcv CPU':>7} {'wrk CPU':>7} {'Redis us/cb':>11} {'others':>6} {'load':>5}  "
        "per master: us per callback it holds (share of callbacks)"
    )
    for name, m in report["medians"].items():
        r = m["receiver"]
        masters = "  ".join(
            f":{port} {v['us']:.0f} ({v['share']:.0%})" for port, v in m["masters"].items()
        )
        print(
            f"{report['labels'][name]:28} {r['per_s']:6.0f} {r['p50_ms']:6.2f} {r['p99_ms']:6.2f} "
            f"{r['server_cpu_us']:9.0f} {r['server_cpu']:7.0%} {r['generator_cpu']:7.0%} "
            f"{m['redis_us']:11.0f} {m['other_nodes_us']:6.0f} {m['load_average']:5.2f}  {masters}"
        )
    print(
        "(Redis us/cb: the masters holding partitions, per callback; others: the replicas and "
        "idle masters, per callback; load: 1-min load average after the round)"
    )
    print(
        f"\n{'ratio (median of per-round ratios)':34} {'req/s':>6} {'rcv us/cb':>9} "
        f"{'Redis us/cb':>11} {'busiest master us/cb':>20}"
    )
    for name, r in report["ratios"].items():
        print(
            f"{name:34} {r['req/s']:6.2f} {r['receiver us/cb']:9.2f} {r['redis us/cb']:11.2f} "
            f"{r['busiest master us/cb']:20.2f}"
        )
    print("\ncapacity (1 worker):")
    print("\n".join(capacity(report)))
    print(
        f"\nOn {report['cores']} cores wrk, the receiver and 7 redis-servers share the CPU, so "
        "req/s here is neither what a master nor what the cluster could take: Redis CPU per "
        "callback per master is, as above. The cluster's masters also feed a replica each "
        "(their CPU under others), the single server none."
    )
    print(bottleneck(report))


def bottleneck(report: dict[str, Any]) -> str:
    """What held the 1-worker receiver back, from its CPU share (one worker runs on one core)."""
    share = statistics.median(
        m["receiver"]["server_cpu"] for name, m in report["medians"].items() if name.endswith("_1")
    )
    if share >= 0.9:
        return f"The receiver is the bottleneck: 1 worker used {share:.0%} of a core."
    # Every write is fsynced to the AOF before Redis answers it: the worker waits on the disk.
    return (
        f"The receiver was not CPU-bound (1 worker used {share:.0%} of a core): it waited on "
        "Redis, which fsyncs every write to its AOF before answering (appendfsync always), "
        "or for a core (load average "
        f"{report['load_average_end'].split()[0]} on {report['cores']} cores at the end)."
    )


def main() -> None:
    args = arguments(__doc__, ".bench/cluster.json")
    started_at = datetime.now(UTC)
    at_start = load_average()
    cluster = LocalCluster()
    try:
        with tempfile.TemporaryDirectory() as folder:
            try:
                cluster.start()
            except (AssertionError, pytest.fail.Exception) as exc:  # tests.topologies' failures
                raise SetupError(f"the local cluster did not form: {exc}") from None
            report = measure(args.seconds, args.rounds, Path(folder), cluster)
    except SetupError as exc:
        raise SystemExit(f"bench: the setup broke, no figures: {exc}") from None
    finally:
        cluster.stop()
    report |= {
        "date": started_at.isoformat(timespec="seconds"),
        "seconds": args.seconds,
        "rounds_run": args.rounds,
        "cores": os.cpu_count(),
        "load_average": at_start,
        "load_average_end": load_average(),
    }
    print_report(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
