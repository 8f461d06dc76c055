"""A distributed rate limiter (GCRA in Redis): one quota shared by every process using the Redis."""

from __future__ import annotations

import asyncio

from webhook.connection import RedisClient
from webhook.keys import Keys
from webhook.store import script_source, unavailable

# Slots are spaced 2 % wider than 1/qps: any 1-second window then holds at most `qps` calls even
# with a little scheduling jitter, while 98 % of the quota stays usable.
MARGIN = 0.98


class RateLimiter:
    """The quota `name` under `keys` (see Keys.quota); each reservation is also counted in the
    limiter's stats hash, in the same script call."""

    def __init__(self, redis: RedisClient, keys: Keys, name: str, qps: float) -> None:
        self.redis = redis
        self.keys = keys
        self.name = name
        self.key = keys.quota(name)
        self.interval_us = round(1_000_000 / (qps * MARGIN))
        self._reserve = redis.register_script(script_source("gcra"))

    async def acquire(self) -> float:
        """Wait for this caller's slot (handed out in order of arrival); returns the slot's time,
        seconds since the epoch on Redis's clock."""
        with unavailable("Redis is unavailable for the rate limiter: {error}"):
            slot_us, wait_us = await self._reserve(
                keys=[self.key, self.keys.limiter_stats], args=[self.interval_us, self.name]
            )
        if wait_us > 0:
            await asyncio.sleep(wait_us / 1_000_000)
        return int(slot_us) / 1_000_000
