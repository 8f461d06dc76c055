"""Redis clients for the three ways a deployment names its Redis (light: redis only):

- `redis://`, `rediss://`, `unix://`: one server;
- `redis+cluster://[user:password@]host:port[,host:port...]`: Redis Cluster, any of its nodes
  (the client learns the rest, and follows failovers and resharding);
- `redis+sentinel://[user:password@]host:port[,host:port...]/<master name>[/<db>]`: the master
  that Sentinel names, found again after a failover. The user and password are the master's;
  the query options `sentinel_username` and `sentinel_password` are the Sentinels' own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from webhook.keys import DEFAULT_PREFIX, Layout

RedisClient = Redis | RedisCluster
"""What the store, the commands and subscribers talk to."""

# Sharded pub/sub with asyncio (what subscribers on a cluster use) came with redis-py 8.0.
CLUSTER_NEEDS = (8, 0)

CLUSTER_SCHEME = "redis+cluster"
SENTINEL_SCHEME = "redis+sentinel"
SCHEMES = ("redis", "rediss", "unix", CLUSTER_SCHEME, SENTINEL_SCHEME)
SENTINEL_PORT = 26379
_SENTINEL_OPTIONS = {"sentinel_username", "sentinel_password"}


@dataclass(frozen=True)
class Nodes:
    """A cluster's or Sentinel set's URL, read: where to ask, and with which credentials."""

    addresses: list[tuple[str, int]]
    username: str | None
    password: str | None
    master: str = ""
    db: int = 0
    options: dict[str, str] | None = None


def parse_nodes(url: str) -> Nodes:
    """Read a `redis+cluster://` or `redis+sentinel://` URL; ValueError saying what is wrong."""
    scheme = url.partition("://")[0]
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    addresses = [_address(item, scheme) for item in hosts.split(",")]
    options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    path = [segment for segment in parts.path.split("/") if segment]
    if scheme == CLUSTER_SCHEME:
        if path or options:
            raise ValueError(f"a {scheme}:// URL names nodes only (a cluster has no databases)")
        return Nodes(addresses, unquote(username) or None, unquote(password) or None)
    unknown = set(options) - _SENTINEL_OPTIONS
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r} (known: sentinel_username, "
                         "sentinel_password)")  # fmt: skip
    if not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"needs the master's name after the hosts: {scheme}://host:port/mymaster"
                         " or .../mymaster/<db>")  # fmt: skip
    db = int(path[1]) if len(path) == 2 else 0
    return Nodes(
        addresses, unquote(username) or None, unquote(password) or None, path[0], db, options
    )


def _address(item: str, scheme: str) -> tuple[str, int]:
    host, colon, port = item.strip().rpartition(":")
    if not colon:
        host, port = port, str(SENTINEL_PORT if scheme == SENTINEL_SCHEME else 6379)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{item!r} is not a host:port")
    return host.strip("[]"), int(port)


def check_url(url: str) -> None:
    """ValueError if `url` is no Redis URL this project can use, saying why."""
    scheme = url.partition("://")[0]
    if "://" not in url or scheme not in SCHEMES:
        raise ValueError("must start with redis://, rediss://, unix://, redis+cluster:// or "
                         "redis+sentinel://")  # fmt: skip
    if scheme in (CLUSTER_SCHEME, SENTINEL_SCHEME):
        parse_nodes(url)
    if scheme == CLUSTER_SCHEME and not cluster_supported():
        raise ValueError(
            f"Redis Cluster needs redis-py {'.'.join(map(str, CLUSTER_NEEDS))} or newer "
            f"(sharded pub/sub with asyncio); this is {redis.__version__}"
        )


def cluster_supported() -> bool:
    """Whether this redis-py can talk to Redis Cluster as this project does."""
    return tuple(int(part) for part in redis.__version__.split(".")[:2]) >= CLUSTER_NEEDS


def is_cluster_url(url: str) -> bool:
    return url.startswith(f"{CLUSTER_SCHEME}://")


def connect(url: str, *, timeout: float, max_connections: int) -> RedisClient:
    """A client for `url` whose commands are retried once on a fresh connection when the pooled
    one died (as every one does when Redis restarts, or its master changes).

    Timeouts are not retried, and on one server a burst waits at most `timeout` for a pooled
    connection (a cluster's and Sentinel's pools refuse beyond `max_connections` instead), so a
    callback is still answered well inside VOD's 5 s.
    """
    settings: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": _retry_once(),
        "decode_responses": True,
    }
    scheme = url.partition("://")[0]
    if scheme == CLUSTER_SCHEME:
        check_url(url)
        nodes = parse_nodes(url)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes.addresses],
            username=nodes.username,
            password=nodes.password,
            max_connections=max_connections,
            **settings,
        )
    if scheme == SENTINEL_SCHEME:
        nodes = parse_nodes(url)
        options = nodes.options or {}
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            nodes.addresses,
            sentinel_kwargs={
                "username": options.get("sentinel_username"),
                "password": options.get("sentinel_password"),
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                # As the master's: redis-py's default backs off for seconds before giving up on
                # a Sentinel that is down or refuses the password, when the next one may answer.
                "retry": _retry_once(),
            },
        )
        master: Redis = sentinel.master_for(
            nodes.master,
            redis_class=Redis,
            connection_pool_class=_SentinelPool,
            db=nodes.db,
            username=nodes.username,
            password=nodes.password,
            max_connections=max_connections,
            **settings,
        )
        return master
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, **settings
    )
    return Redis.from_pool(pool)


def _retry_once() -> Retry:
    """Retry a command once, at once, on a fresh connection when the pooled one died."""
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


class _SentinelPool(SentinelConnectionPool):
    """The master's pool, which also closes the client's connections to the Sentinels (its
    own, made for it in `connect`)."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        for sentinel in self.sentinel_manager.sentinels:
            await sentinel.aclose()


async def layout_of(
    redis: RedisClient, prefix: str = DEFAULT_PREFIX, partitions: int | None = None
) -> Layout:
    """Where a deployment's keys are in `redis`: on a cluster, in `partitions` partitions, or as
    many as its processes recorded there (LookupError when none has yet)."""
    if not isinstance(redis, RedisCluster):
        return Layout(prefix, partitions or 1)
    if partitions is None:
        recorded = await redis.get(Layout(prefix).partitions_key)
        if recorded is None:
            raise LookupError(
                f"no vod-webhook process has recorded its partitions of key prefix {prefix!r} "
                "on this cluster yet: start the receiver first, or give the number of partitions"
            )
        partitions = int(recorded)
    return Layout(prefix, partitions, sharded=True)
