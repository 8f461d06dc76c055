"""The distributed limiter: several real processes share one quota through Redis."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from redis.asyncio import Redis

from tests.conftest import RedisServer
from webhook.keys import Keys
from webhook.limiter import MARGIN, RateLimiter

GRAB = textwrap.dedent(
    """
    import asyncio, sys
    from redis.asyncio import Redis
    from webhook.keys import Keys
    from webhook.limiter import RateLimiter

    async def main() -> None:
        redis = Redis.from_url(sys.argv[1])
        limiter = RateLimiter(redis, Keys("limit"), "account", float(sys.argv[2]))
        for _ in range(int(sys.argv[3])):
            print(await limiter.acquire(), flush=True)
        await redis.aclose()

    asyncio.run(main())
    """
)


def most_in_any_second(slots: list[float]) -> int:
    slots = sorted(slots)
    most, start = 0, 0
    for end, slot in enumerate(slots):
        while slot - slots[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_processes_sharing_a_quota_never_exceed_it_and_use_it(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    qps, processes, each = 30, 3, 25
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", GRAB, redis_server.url, str(qps), str(each)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    slots = []
    for run in runs:
        out, _ = run.communicate(timeout=60)
        assert run.returncode == 0
        slots += [float(line) for line in out.split()]
    assert len(slots) == processes * each
    assert len(set(slots)) == len(slots)
    assert most_in_any_second(slots) <= qps
    rate = (len(slots) - 1) / (max(slots) - min(slots))
    assert rate >= 0.95 * qps, f"only {rate:.1f} of {qps} calls per second used"


async def test_an_idle_quota_grants_at_once_then_spaces_callers(redis_client: Redis) -> None:
    limiter = RateLimiter(redis_client, Keys("limit"), "idle", 10)
    first = await limiter.acquire()
    second = await limiter.acquire()
    assert abs((second - first) - 1 / (10 * MARGIN)) < 0.001
    assert await redis_client.pttl("limit:quota:idle") > 0
