"""The Redis Cluster and Sentinel fixtures do what the product's tests rely on: real
topologies, failovers that keep acknowledged writes, and killed nodes that come back."""

from __future__ import annotations

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from tests.topologies import HOST, SERVICE, LocalCluster, LocalSentinel, ask, connect, replication

KEY = "vod:topology:probe"


def cluster_client(cluster: LocalCluster) -> RedisCluster:
    return RedisCluster(
        startup_nodes=[ClusterNode(HOST, port) for port in cluster.seeds], decode_responses=True
    )


def role(port: int) -> str:
    reply = ask(port, "ROLE")
    assert reply, f"{port} does not answer"
    return str(reply[0])


def assert_three_shards(cluster: LocalCluster) -> None:
    masters = cluster.masters()
    assert len(masters) == 3
    assert sorted(masters + cluster.replicas()) == sorted(cluster.nodes)
    for port in masters:
        assert role(port) == "master"
        assert replication(port)["connected_slaves"] == 1
    for port in cluster.replicas():
        info = replication(port)
        assert (info["role"], info["master_link_status"]) == ("slave", "up")
        assert info["master_port"] in masters
    for port in cluster.nodes:
        assert "cluster_state:ok" in ask(port, "CLUSTER", "INFO")


def test_cluster_has_three_masters_each_with_a_connected_replica(
    cluster_url: str, redis_cluster: LocalCluster
) -> None:
    assert cluster_url == "redis+cluster://" + ",".join(
        f"127.0.0.1:{port}" for port in redis_cluster.seeds
    )
    assert len(redis_cluster.seeds) == 3
    assert_three_shards(redis_cluster)
    assert all(ask(port, "DBSIZE") == 0 for port in redis_cluster.nodes)


def test_cluster_keeps_an_acknowledged_key_through_a_failover_and_the_node_rejoins(
    cluster_url: str, redis_cluster: LocalCluster
) -> None:
    client = cluster_client(redis_cluster)
    try:
        client.set(KEY, "kept")
        owner = redis_cluster.master_of(KEY)
        assert client.execute_command("WAIT", 1, 0, target_nodes=client.get_node(HOST, owner)) == 1
    finally:
        client.close()
    (replica,) = (p for p in redis_cluster.replicas() if replication(p)["master_port"] == owner)
    assert ask(replica, "DBSIZE") == 1  # the replica has it, whichever connection WAITed

    killed = redis_cluster.kill_master_of(KEY)
    assert killed == owner
    redis_cluster.wait_for_failover(killed)

    assert redis_cluster.master_of(KEY) == replica
    client = cluster_client(redis_cluster)
    try:
        assert client.get(KEY) == "kept"
        client.set(KEY, "written after")  # the promoted replica takes writes
    finally:
        client.close()

    redis_cluster.restart(killed)
    assert role(killed) == "slave"
    assert replication(killed)["master_port"] == replica
    assert_three_shards(redis_cluster)
    assert redis_cluster.healthy()


def test_cluster_heals_for_the_next_test_after_one_that_left_a_master_dead(
    cluster_url: str, redis_cluster: LocalCluster
) -> None:
    killed = redis_cluster.kill_master_of(KEY)  # and no restart, as a failing test would
    assert not redis_cluster.healthy()
    redis_cluster.ensure_healthy()
    assert redis_cluster.nodes[killed].alive
    assert_three_shards(redis_cluster)


def assert_master_with_replica(sentinel: LocalSentinel) -> int:
    master = sentinel.master_port()
    (replica,) = set(sentinel.data) - {master}
    assert role(master) == "master"
    info = replication(replica)
    assert (info["role"], info["master_port"], info["master_link_status"]) == (
        "slave",
        master,
        "up",
    )
    assert replication(master)["connected_slaves"] == 1
    for port in sentinel.sentinels:
        state = ask(port, "SENTINEL", "MASTER", SERVICE)
        assert (state["num-slaves"], state["num-other-sentinels"]) == ("1", "2")
    return master


def test_sentinel_names_the_master_and_knows_its_replica_and_peers(
    sentinel_url: str, redis_sentinel: LocalSentinel
) -> None:
    ports = ",".join(f"127.0.0.1:{port}" for port in redis_sentinel.sentinels)
    assert sentinel_url == f"redis+sentinel://{ports}/mymaster/0"
    assert len(redis_sentinel.sentinels) == 3
    assert_master_with_replica(redis_sentinel)


def test_sentinel_fails_over_to_a_replica_holding_acknowledged_writes(
    sentinel_url: str, redis_sentinel: LocalSentinel
) -> None:
    old = assert_master_with_replica(redis_sentinel)
    with connect(old) as client:
        client.set(KEY, "kept")
        assert client.execute_command("WAIT", 1, 0) == 1  # on the connection that wrote

    assert redis_sentinel.kill_master() == old
    redis_sentinel.wait_for_failover(old)

    new = redis_sentinel.master_port()
    assert new != old
    with connect(new) as client:
        assert client.get(KEY) == "kept"
        assert client.set(KEY, "written after")

    redis_sentinel.restart(old)
    assert role(old) == "slave"
    assert assert_master_with_replica(redis_sentinel) == new
    with connect(old) as client:
        assert client.get(KEY) == "written after"  # synced from the new master
        with pytest.raises(redis.ReadOnlyError):
            client.set(KEY, "refused")


def test_sentinel_heals_for_the_next_test_after_one_that_left_the_master_dead(
    sentinel_url: str, redis_sentinel: LocalSentinel
) -> None:
    killed = redis_sentinel.kill_master()
    assert not redis_sentinel.healthy()
    redis_sentinel.ensure_healthy()
    assert redis_sentinel.data[killed].alive
    assert_master_with_replica(redis_sentinel)
