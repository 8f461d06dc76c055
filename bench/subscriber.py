"""A subscriber on the receiver's pub/sub channel, in its own process: how long after a paced
callback was due its envelope arrived (the due time is in the JobId, see bench/load.py).

    python -m bench.subscriber REDIS_URL CHANNEL COUNT

Prints `subscribed` once listening, then one JSON line when COUNT envelopes arrived or none
came for 10 s: received, p50_ms, p99_ms.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import redis

from bench.load import due_of

QUIET_SECONDS = 10


def main() -> None:
    url, channel, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(channel)
    pubsub.get_message(timeout=5)  # the subscription's confirmation
    print("subscribed", flush=True)
    latencies: list[float] = []
    last = time.monotonic()
    while len(latencies) < count and time.monotonic() - last < QUIET_SECONDS:
        message = pubsub.get_message(timeout=1)
        if message is None:
            continue
        arrived = time.time()
        last = time.monotonic()
        latencies.append(arrived - due_of(json.loads(message["data"])["job_id"]))
    pubsub.close()
    client.close()
    latencies.sort()
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] if latencies else 0.0
    print(
        json.dumps(
            {
                "received": len(latencies),
                "p50_ms": statistics.median(latencies) * 1000 if latencies else 0.0,
                "p99_ms": p99 * 1000,
            }
        )
    )


if __name__ == "__main__":
    main()
