"""Failover at small scale (`make faults` runs it at full scale): a master killed under load on
the session's Redis Cluster and Sentinel set, with the real `vod-webhook serve` and a consumer
group; see bench/faults/failover.py for what each proves."""

from __future__ import annotations

from pathlib import Path

from bench.faults.failover import cluster_failover, sentinel_failover
from tests.test_faults import assert_kept
from tests.topologies import LocalCluster, LocalSentinel


async def test_cluster_master_killed_loses_nothing_acknowledged(
    cluster_url: str, redis_cluster: LocalCluster, tmp_path: Path
) -> None:
    """503 only during the failover, 0 acknowledged lost, the consumer group goes on."""
    assert_kept(await cluster_failover(tmp_path, redis_cluster, callbacks=400, rate=100))


async def test_sentinel_master_killed_loses_nothing_acknowledged(
    sentinel_url: str, redis_sentinel: LocalSentinel, tmp_path: Path
) -> None:
    """The receiver finds the master Sentinel promotes by itself; nothing acknowledged lost."""
    assert_kept(await sentinel_failover(tmp_path, redis_sentinel, callbacks=400, rate=100))
