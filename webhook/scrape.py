"""`GET /metrics`: what this process's workers counted (summed over their files in multiprocess
mode) and what Redis holds, read at scrape time through the status snapshot, cached a few
seconds per process. Redis not answering makes `vod_webhook_ready` 0, never the scrape fail."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from webhook.bearer import BearerToken
from webhook.errors import StoreUnavailable
from webhook.metrics import Metrics, multiprocess_directory
from webhook.settings import Settings
from webhook.status import Status, read_status
from webhook.store import Store

# Prometheus's text format 0.0.4, which every Prometheus version reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A scrape reads Redis at most this often per process, however many scrapers ask.
CACHE_SECONDS = 5.0


class MetricsEndpoint:
    """`GET /metrics`, behind VOD_WEBHOOK_METRICS_TOKEN."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics) -> None:
        assert settings.metrics_token is not None
        self.token = BearerToken(settings.metrics_token, "VOD_WEBHOOK_METRICS_TOKEN")
        self.snapshot = CachedStatus(store, CACHE_SECONDS)
        directory = multiprocess_directory()
        # Every worker's files, or this process's own registry.
        self.counted: Collector = (
            MultiProcessCollector(None, directory)  # type: ignore[no-untyped-call]
            if directory
            else metrics.registry
        )

    async def metrics(self, request: Request) -> Response:
        self.token.check(request)
        status = await self.snapshot.get()
        body = generate_latest(self.counted) + generate_latest(RedisFamilies(status))
        return Response(body, media_type=CONTENT_TYPE)


class CachedStatus:
    """The status snapshot, read at most once every `seconds` (concurrent scrapes share the
    read); None when Redis did not answer it."""

    def __init__(self, store: Store, seconds: float) -> None:
        self._store = store
        self._seconds = seconds
        self._lock = asyncio.Lock()
        self._status: Status | None = None
        self._expires = 0.0

    async def get(self) -> Status | None:
        async with self._lock:
            if time.monotonic() >= self._expires:
                try:
                    self._status = await read_status(self._store)
                except StoreUnavailable:
                    self._status = None  # counted by the store, as every Redis failure
                self._expires = time.monotonic() + self._seconds
            return self._status


class RedisFamilies:
    """The families read from Redis, from one snapshot (None: Redis did not answer, and only
    `vod_webhook_ready` 0 is shown)."""

    def __init__(self, status: Status | None) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status
        yield GaugeMetricFamily(
            "vod_webhook_ready",
            "1 when Redis answered the reads of the scrape (cached up to 5 s), else 0.",
            value=0 if status is None else 1,
        )
        if status is None:
            return
        yield from _submissions(status)
        yield from _reconciliation(status)
        yield from _stream(status)
        yield _gauge(
            "vod_webhook_deadletter_entries",
            "Entries in the dead-letter stream.",
            status.dead_letters,
        )
        yield _gauge(
            "vod_webhook_pending_jobs",
            "Submitted jobs without an outcome yet.",
            status.pending_jobs,
        )
        yield _gauge(
            "vod_webhook_oldest_pending_job_age_seconds",
            "Since the oldest pending job was submitted; 0 without any.",
            status.oldest_pending_age_seconds or 0,
        )
        yield _gauge(
            "vod_webhook_held_outcomes",
            "Callback outcomes held for verification (VERIFY_OUTCOMES).",
            status.held_outcomes,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _submissions(status: Status) -> Iterator[Metric]:
    submissions = CounterMetricFamily(
        "vod_webhook_submissions",
        "SubmitDynamicImageJob calls of every process on this Redis, by outcome (submitted, "
        "throttled, refused, failed) and VOD's error code; each retry counts.",
        labels=["outcome", "code"],
    )
    counts = {(count.outcome, count.code): count.count for count in status.submissions}
    counts.setdefault(("submitted", ""), 0)  # the family is there before the first submission
    for (outcome, code), count in sorted(counts.items()):
        submissions.add_metric([outcome, code], count)
    yield submissions
    yield SummaryMetricFamily(
        "vod_webhook_limiter_wait_seconds",
        "What VOD calls waited for a slot of the shared quotas (every quota, every process).",
        count_value=sum(quota.calls for quota in status.quotas),
        sum_value=sum(quota.wait_seconds for quota in status.quotas),
    )


def _reconciliation(status: Status) -> Iterator[Metric]:
    passes = status.reconcile
    yield _counter(
        "vod_webhook_reconcile_passes", "Reconciliation passes, any process.", passes.passes
    )
    yield _counter(
        "vod_webhook_reconcile_recovered",
        "Outcomes reconciliation found with ListDynamicImage and recorded.",
        passes.recovered,
    )
    yield _counter(
        "vod_webhook_reconcile_timed_out",
        "Jobs reconciliation ended as timed_out past the deadline.",
        passes.timed_out,
    )
    yield _gauge(
        "vod_webhook_reconcile_last_pass_timestamp_seconds",
        "When the last reconciliation pass ran (Unix time); 0 before the first.",
        (passes.last_pass_ms or 0) / 1000,
    )


def _stream(status: Status) -> Iterator[Metric]:
    yield _gauge(
        "vod_webhook_stream_length", "Envelopes in the durable stream.", status.stream_length
    )
    yield _gauge(
        "vod_webhook_stream_oldest_age_seconds",
        "Age of the stream's oldest envelope; 0 when it is empty.",
        status.oldest_entry_age_seconds or 0,
    )
    families = {
        "lag": GaugeMetricFamily(
            "vod_webhook_consumer_group_lag",
            "Stream entries not yet delivered to the group (absent when Redis cannot tell).",
            labels=["group"],
        ),
        "pending": GaugeMetricFamily(
            "vod_webhook_consumer_group_pending",
            "Entries delivered to the group's consumers and not acknowledged yet.",
            labels=["group"],
        ),
        "consumers": GaugeMetricFamily(
            "vod_webhook_consumer_group_consumers",
            "Consumers of the group.",
            labels=["group"],
        ),
        "redriven": GaugeMetricFamily(
            "vod_webhook_consumer_group_redriven",
            "Dead letters redriven to the group and not acknowledged yet.",
            labels=["group"],
        ),
    }
    for group in status.groups:
        if group.lag is not None:
            families["lag"].add_metric([group.name], group.lag)
        families["pending"].add_metric([group.name], group.pending)
        families["consumers"].add_metric([group.name], group.consumers)
        families["redriven"].add_metric([group.name], group.redriven)
    yield from families.values()
