"""A subscriber on the receiver's pub/sub channel, in its own process: how long after a paced
callback was sent its envelope arrived, and how long after it was due (the sender's own
lateness included; both times are in the JobId, see bench/load.py).

    python -m bench.subscriber REDIS_URL CHANNEL COUNT

Prints `subscribed` once listening, then one JSON line when COUNT envelopes arrived or none
came for 10 s: received, p50_ms and p99_ms (from sending), due_p50_ms and due_p99_ms.
"""

from __future__ import annotations

import json
import sys
import time

import redis

from bench.load import due_and_sent

QUIET_SECONDS = 10


def main() -> None:
    url, channel, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(channel)
    pubsub.get_message(timeout=5)  # the subscription's confirmation
    print("subscribed", flush=True)
    latencies: list[float] = []
    since_due: list[float] = []
    last = time.monotonic()
    while len(latencies) < count and time.monotonic() - last < QUIET_SECONDS:
        message = pubsub.get_message(timeout=1)
        if message is None:
            continue
        arrived = time.time()
        last = time.monotonic()
        due, sent = due_and_sent(json.loads(message["data"])["job_id"])
        latencies.append(arrived - sent)
        since_due.append(arrived - due)
    pubsub.close()
    client.close()
    print(
        json.dumps(
            {
                "received": len(latencies),
                "p50_ms": percentile(latencies, 50),
                "p99_ms": percentile(latencies, 99),
                "due_p50_ms": percentile(since_due, 50),
                "due_p99_ms": percentile(since_due, 99),
            }
        )
    )


def percentile(seconds: list[float], p: int) -> float:
    """The p-th percentile, in ms (nearest rank)."""
    if not seconds:
        return 0.0
    ordered = sorted(seconds)
    return ordered[max(0, -(-len(ordered) * p // 100) - 1)] * 1000


if __name__ == "__main__":
    main()
