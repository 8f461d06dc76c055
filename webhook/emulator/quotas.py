"""VOD's call quotas: per AccessKeyId and per API, over any one-second window."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping

QUOTA_WINDOW_SECONDS = 1.0


class Quotas:
    """At most `limits[action]` calls per AccessKeyId in any window (no burst above)."""

    def __init__(self, limits: Mapping[str, float]) -> None:
        self._limits = limits
        self._admitted: dict[tuple[str, str], deque[float]] = {}

    def admit(self, access_key_id: str, action: str) -> bool:
        now = time.monotonic()
        admitted = self._admitted.setdefault((access_key_id, action), deque())
        while admitted and admitted[0] <= now - QUOTA_WINDOW_SECONDS:
            admitted.popleft()
        if len(admitted) >= self._limits[action]:
            return False
        admitted.append(now)
        return True
