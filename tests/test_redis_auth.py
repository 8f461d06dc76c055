"""Credentials in redis+cluster:// and redis+sentinel:// URLs, on password-protected real
topologies: the data nodes' password (or an ACL user's) in the URL's user info, the Sentinels'
own as the sentinel_username / sentinel_password options. A signed callback goes through the
real `serve` to `listen`; a wrong or missing password stops `serve` at once with a message
that names the variable, says who refused, and repeats no password."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from tests.conftest import AUTH_KEY, DATA_PASSWORD, SENTINEL_PASSWORD, free_port, wait_for
from tests.processes import env_for, listening, run, serving
from tests.topologies import HOST, SERVICE, LocalCluster, LocalSentinel, ask
from webhook.connection import parse_nodes
from webhook.keys import Layout
from webhook.settings import safe_url

# An ACL user on the data nodes, and one on the sentinels, made for the tests that use them.
APP_USER, APP_PASSWORD = "app", "app:p@ss/1"
WATCHER_USER, WATCHER_PASSWORD = "watcher", "watch&p@ss=2"
WRONG_PASSWORD = "not-the-password-42"
SECRETS = (DATA_PASSWORD, SENTINEL_PASSWORD, APP_PASSWORD, WATCHER_PASSWORD, WRONG_PASSWORD)


def encoded(text: str) -> str:
    return quote(text, safe="")


def hosts(ports: Iterable[int]) -> str:
    return ",".join(f"{HOST}:{port}" for port in ports)


def assert_no_secret(*outputs: Iterable[str]) -> None:
    """No password, as given or percent-encoded, in any of these lines."""
    text = "".join(line for output in outputs for line in output)
    for secret in SECRETS:
        assert secret not in text
        assert encoded(secret) not in text


def assert_refuses_without_password(port: int) -> None:
    # No retries: redis-py's default backs off for seconds before it gives up.
    with (
        redis.Redis(HOST, port, socket_timeout=2, retry=Retry(NoBackoff(), 0)) as client,
        pytest.raises(redis.AuthenticationError),
    ):
        client.ping()


@contextmanager
def acl_user(ports: Iterable[int], user: str, password: str) -> Iterator[None]:
    """`user` with `password` and every right on each of `ports` (ACLs are per node)."""
    ports = list(ports)
    for port in ports:
        assert ask(port, "ACL", "SETUSER", user, "reset", "on", f">{password}", "~*", "&*", "+@all")
    try:
        yield
    finally:
        for port in ports:
            ask(port, "ACL", "DELUSER", user)


def assert_send_test_reaches_listen(url: str, **settings: str) -> None:
    """`send-test` signs a callback to `serve`, which stores it; `listen` prints it; and
    neither process printed a password."""
    with (
        serving(redis_url=url, **settings) as (receiver, server),
        listening(redis_url=url, **settings) as live,
    ):
        sent = run("send-test", "--url", f"{receiver}/callbacks/vod", "--key", AUTH_KEY,
                   "--callback-url", f"{receiver}/callbacks/vod")  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_for(lambda: bool(live.stdout), 10, "the envelope")
    assert json.loads(live.stdout[0])["event_type"] == "DynamicImageComplete"
    assert any("listening on" in line for line in live.stderr)  # it names the URL, masked
    assert_no_secret(server.stdout, server.stderr, live.stdout, live.stderr)


def refused(url: str) -> str:
    """What `vod-webhook serve` on `url` said as it stopped, asserting it stopped as on a
    configuration error (exit code 2), without a traceback or a password."""
    port = free_port()
    env = env_for(
        redis_url=url, auth_keys=AUTH_KEY, callback_url=f"http://{HOST}:{port}/callbacks/vod"
    )
    served = run("serve", "--port", str(port), env=env, timeout=20)
    assert served.returncode == 2, served.stdout + served.stderr
    assert "Traceback" not in served.stderr
    assert_no_secret([served.stdout, served.stderr])
    return served.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://:pw@h:6379/0", "redis://***@h:6379/0"),
        ("redis+cluster://app:p%40ss@h1:1,h2:2", "redis+cluster://***@h1:1,h2:2"),
        (
            "redis+sentinel://:pw@h1,h2/m/0?sentinel_username=w&sentinel_password=s%40x",
            "redis+sentinel://***@h1,h2/m/0?sentinel_username=w&sentinel_password=***",
        ),
        (
            "redis+sentinel://h1/m?sentinel_password=s@x",
            "redis+sentinel://h1/m?sentinel_password=***",
        ),
        ("redis://h/0?password=pw", "redis://h/0?password=***"),
        ("redis://:p?w@h/0", "redis://***@h/0"),  # an unencoded "?" in the password
    ],
)
def test_urls_in_messages_show_no_password(url: str, shown: str) -> None:
    assert safe_url(url) == shown


def assert_says_why(stderr: str, password: str | None) -> None:
    """Redis's own reason: a wrong password, or none given ("NOAUTH Authentication required."
    or, to redis-py's HELLO, "HELLO must be called with the client already authenticated")."""
    why = "invalid username-password pair" if password else "authenticated"
    assert why in stderr.replace("Authentication required", "authenticated")


# --- the topologies ---------------------------------------------------------------------------


def test_password_cluster_refuses_clients_without_it_and_carries_it_in_its_url(
    cluster_auth_url: str, redis_cluster_auth: LocalCluster
) -> None:
    assert cluster_auth_url == (
        f"redis+cluster://:{encoded(DATA_PASSWORD)}@{hosts(redis_cluster_auth.seeds)}"
    )
    nodes = parse_nodes(cluster_auth_url)
    assert (nodes.username, nodes.password) == (None, DATA_PASSWORD)
    assert redis_cluster_auth.healthy()  # replicas authenticated to their masters
    for port in redis_cluster_auth.nodes:
        assert_refuses_without_password(port)


def test_password_sentinel_set_refuses_clients_without_them_and_carries_both_in_its_url(
    sentinel_auth_url: str, redis_sentinel_auth: LocalSentinel
) -> None:
    assert sentinel_auth_url == (
        f"redis+sentinel://:{encoded(DATA_PASSWORD)}@{hosts(redis_sentinel_auth.sentinels)}"
        f"/{SERVICE}/0?sentinel_password={encoded(SENTINEL_PASSWORD)}"
    )
    nodes = parse_nodes(sentinel_auth_url)
    assert (nodes.password, nodes.options) == (
        DATA_PASSWORD,
        {"sentinel_password": SENTINEL_PASSWORD},
    )
    # The replica syncs with the master's password, the sentinels reach both with auth-pass,
    # and each other with sentinel-pass.
    assert redis_sentinel_auth.healthy()
    for port in redis_sentinel_auth.nodes:
        assert_refuses_without_password(port)


# --- serve and listen on them -----------------------------------------------------------------


@pytest.mark.parametrize("user", [None, APP_USER])
def test_send_test_reaches_listen_on_the_password_cluster(
    cluster_auth_url: str, redis_cluster_auth: LocalCluster, user: str | None
) -> None:
    if user is None:
        assert_send_test_reaches_listen(cluster_auth_url)
        return
    url = f"redis+cluster://{user}:{encoded(APP_PASSWORD)}@{hosts(redis_cluster_auth.seeds)}"
    with acl_user(redis_cluster_auth.nodes, user, APP_PASSWORD):
        assert_send_test_reaches_listen(url)


def test_two_partitions_on_the_password_cluster(
    cluster_auth_url: str, redis_cluster_auth: LocalCluster
) -> None:
    assert_send_test_reaches_listen(cluster_auth_url, partitions="2")
    client = RedisCluster(
        startup_nodes=[ClusterNode(HOST, port) for port in redis_cluster_auth.seeds],
        password=DATA_PASSWORD,
        decode_responses=True,
    )
    try:
        assert client.get(Layout("vod").partitions_key) == "2"
    finally:
        client.close()


@pytest.mark.parametrize("user", [None, APP_USER])
def test_send_test_reaches_listen_through_the_password_sentinel_set(
    sentinel_auth_url: str, redis_sentinel_auth: LocalSentinel, user: str | None
) -> None:
    if user is None:
        assert_send_test_reaches_listen(sentinel_auth_url)
        return
    url = (
        f"redis+sentinel://{user}:{encoded(APP_PASSWORD)}@{hosts(redis_sentinel_auth.sentinels)}"
        f"/{SERVICE}/0?sentinel_username={WATCHER_USER}"
        f"&sentinel_password={encoded(WATCHER_PASSWORD)}"
    )
    with (
        acl_user(redis_sentinel_auth.data, user, APP_PASSWORD),
        acl_user(redis_sentinel_auth.sentinels, WATCHER_USER, WATCHER_PASSWORD),
    ):
        assert_send_test_reaches_listen(url)


# --- wrong or missing passwords ---------------------------------------------------------------


@pytest.mark.parametrize("password", [WRONG_PASSWORD, None])
def test_serve_stops_on_a_cluster_refusing_its_password(
    cluster_auth_url: str, redis_cluster_auth: LocalCluster, password: str | None
) -> None:
    userinfo = f":{password}@" if password else ""
    stderr = refused(f"redis+cluster://{userinfo}{hosts(redis_cluster_auth.seeds)}")
    shown = f"redis+cluster://{'***@' if password else ''}{hosts(redis_cluster_auth.seeds)}"
    assert f"VOD_WEBHOOK_REDIS_URL: {shown} refuses this client: " in stderr
    assert_says_why(stderr, password)


@pytest.mark.parametrize("password", [WRONG_PASSWORD, None])
def test_serve_stops_on_a_sentinel_master_refusing_its_password(
    sentinel_auth_url: str, redis_sentinel_auth: LocalSentinel, password: str | None
) -> None:
    userinfo = f":{password}@" if password else ""
    sentinels = hosts(redis_sentinel_auth.sentinels)
    options = f"/{SERVICE}/0?sentinel_password={encoded(SENTINEL_PASSWORD)}"
    stderr = refused(f"redis+sentinel://{userinfo}{sentinels}{options}")
    shown = f"redis+sentinel://{'***@' if password else ''}{sentinels}/{SERVICE}/0"
    assert f"VOD_WEBHOOK_REDIS_URL: {shown}?sentinel_password=*** refuses this client: " in stderr
    assert_says_why(stderr, password)


@pytest.mark.parametrize("password", [WRONG_PASSWORD, None])
def test_serve_stops_on_sentinels_refusing_their_password(
    sentinel_auth_url: str, redis_sentinel_auth: LocalSentinel, password: str | None
) -> None:
    sentinels = hosts(redis_sentinel_auth.sentinels)
    options = f"?sentinel_password={password}" if password else ""
    stderr = refused(f"redis+sentinel://:{encoded(DATA_PASSWORD)}@{sentinels}/{SERVICE}/0{options}")
    shown = f"redis+sentinel://***@{sentinels}/{SERVICE}/0" + (
        "?sentinel_password=***" if password else ""
    )
    first = next(iter(redis_sentinel_auth.sentinels))
    assert (
        f"VOD_WEBHOOK_REDIS_URL: {shown}: the Sentinel at {HOST}:{first} refuses this client "
        "(sentinel_username, sentinel_password): "
    ) in stderr
    assert_says_why(stderr, password)
