"""The receiver's Prometheus metrics: their names (the contract dashboards and alert rules are
written against: METRIC_NAMES), and the families each `serve` process counts in.

Every label value is bounded whatever a client sends: event types outside VOD's list are
"other", routes are the app's templates or "other", error codes and statuses are the app's own.
The counting happens on the callback's hot path, so the children of the labels it uses are
bound once and kept (a dict lookup and an increment per callback).

Under `serve --workers N` prometheus-client runs in multiprocess mode (the values in files of
PROMETHEUS_MULTIPROC_DIR, which `serve` prepares: webhook/server.py) and /metrics sums the
workers' files (webhook/scrape.py); with one worker they stay in this process's registry.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import disable_created_metrics

from webhook.errors import WebhookError
from webhook.events import DYNAMIC_IMAGE_COMPLETE, KNOWN_EVENT_TYPES
from webhook.ingest import OUTCOMES

# The families /metrics always shows, and their types. Labelled ones list their labels in the
# README's table; some of their series appear only once counted (see the README).
METRIC_NAMES: dict[str, str] = {
    # Counted by each `serve` process, summed over its workers.
    "vod_webhook_callbacks_total": "counter",
    "vod_webhook_callback_duration_seconds": "histogram",
    "vod_webhook_http_responses_total": "counter",
    "vod_webhook_redis_errors_total": "counter",
    "vod_webhook_sse_clients": "gauge",
    "vod_webhook_sse_disconnects_total": "counter",
    "vod_webhook_mns_messages_total": "counter",
    # Read from Redis at scrape time (webhook/status.py): whichever process did the work.
    "vod_webhook_ready": "gauge",
    "vod_webhook_submissions_total": "counter",
    "vod_webhook_limiter_wait_seconds": "summary",
    "vod_webhook_reconcile_passes_total": "counter",
    "vod_webhook_reconcile_recovered_total": "counter",
    "vod_webhook_reconcile_timed_out_total": "counter",
    "vod_webhook_reconcile_last_pass_timestamp_seconds": "gauge",
    "vod_webhook_stream_length": "gauge",
    "vod_webhook_stream_oldest_age_seconds": "gauge",
    "vod_webhook_consumer_group_lag": "gauge",
    "vod_webhook_consumer_group_pending": "gauge",
    "vod_webhook_consumer_group_consumers": "gauge",
    "vod_webhook_consumer_group_redriven": "gauge",
    "vod_webhook_deadletter_entries": "gauge",
    "vod_webhook_pending_jobs": "gauge",
    "vod_webhook_oldest_pending_job_age_seconds": "gauge",
    "vod_webhook_held_outcomes": "gauge",
}

_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def series_names() -> set[str]:
    """Every name a query can use: the families, and their histograms' and summaries'
    `_bucket`, `_sum` and `_count` series."""
    return {
        name + suffix
        for name, kind in METRIC_NAMES.items()
        for suffix in _SUFFIXES.get(kind, ("",))
    }


OTHER = "other"  # an event type VOD does not list, or a path that is no route of the app
UNKNOWN = "unknown"  # the event type of a body that was not parsed
REDIS_ERROR_KINDS = ("connection", "timeout", "out_of_memory", "busy", "not_replicated", "other")
SSE_DISCONNECT_REASONS = ("lagging", "shutdown", "redis_unavailable", "client_closed")
# Callbacks take ~0.5 ms on an idle receiver and must be answered within VOD's 5 s.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# The same series in both modes: multiprocess mode has no `_created` series.
disable_created_metrics()  # type: ignore[no-untyped-call]


def multiprocess_directory() -> str | None:
    """The directory prometheus-client keeps this process's values in, if in multiprocess mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """One app's families, in a registry of its own (so that apps in one process, as in tests,
    count apart; in multiprocess mode the values go to the process's files all the same)."""

    def __init__(self, *, callback_path: str, verify_outcomes: bool) -> None:
        self.registry = registry = CollectorRegistry()
        self.callbacks = Counter(
            "vod_webhook_callbacks",
            "Callbacks by event type (VOD's, other, or unknown when not parsed), outcome and, "
            "for rejected and unavailable ones, error code.",
            ["event_type", "outcome", "error"],
            registry=registry,
        )
        self.callback_duration = Histogram(
            "vod_webhook_callback_duration_seconds",
            "Time from a callback's arrival to its answer being decided, by outcome.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.http_responses = Counter(
            "vod_webhook_http_responses",
            "Responses of the app by route template (or other) and status code.",
            ["route", "status"],
            registry=registry,
        )
        self.redis_errors = Counter(
            "vod_webhook_redis_errors",
            "Redis failures that made an operation of this process unavailable, by kind.",
            ["kind"],
            registry=registry,
        )
        self.sse_clients = Gauge(
            "vod_webhook_sse_clients",
            "Open GET /events streams.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.sse_disconnects = Counter(
            "vod_webhook_sse_disconnects",
            "GET /events streams ended, by reason: lagging (fell too far behind), shutdown, "
            "redis_unavailable (replay interrupted), client_closed.",
            ["reason"],
            registry=registry,
        )
        self.mns_messages = Counter(
            "vod_webhook_mns_messages",
            "MNS messages ingested (VOD_WEBHOOK_MNS_QUEUE), by outcome: accepted, duplicate, "
            "held, retried (left to come back), dead_lettered.",
            ["outcome"],
            registry=registry,
        )
        self.callback = CallbackMetrics(self, verify_outcomes=verify_outcomes)
        self.responses = ResponseMetrics(self.http_responses, callback_path)
        self._redis_errors = {kind: self.redis_errors.labels(kind) for kind in REDIS_ERROR_KINDS}
        self._mns_outcomes = {outcome: self.mns_messages.labels(outcome) for outcome in OUTCOMES}
        self._disconnects = {
            reason: self.sse_disconnects.labels(reason) for reason in SSE_DISCONNECT_REASONS
        }

    def mns_message(self, outcome: str) -> None:
        """Count an ingested MNS message (MnsIngest's `count`)."""
        self._mns_outcomes[outcome].inc()

    def redis_failed(self, kind: str) -> None:
        """Count a Redis failure (store.unavailable's observer)."""
        self._redis_errors[kind].inc()

    def stream_opened(self) -> None:
        self.sse_clients.inc()

    def stream_closed(self, reason: str) -> None:
        self.sse_clients.dec()
        self._disconnects[reason].inc()


class CallbackMetrics:
    """Callbacks by event type and outcome, and their durations. The series alerts watch are
    there from the start (at 0, so the first increase counts); the others appear when first
    counted, their children bound then and kept."""

    def __init__(self, metrics: Metrics, *, verify_outcomes: bool) -> None:
        self._callbacks = metrics.callbacks
        self._duration_family = metrics.callback_duration
        self._durations: dict[str, Histogram] = {}
        # outcome -> (event type label -> child, the outcome's duration): one lookup a callback.
        self._stored: dict[str, tuple[dict[str, Counter], Histogram]] = {}
        self._failed: dict[tuple[str, str, str], Counter] = {}
        answered = (
            ("accepted", "duplicate", "held") if verify_outcomes else ("accepted", "duplicate")
        )
        for outcome in answered:
            children: dict[str, Counter] = {}
            self._stored[outcome] = (children, self._duration(outcome))
            self._child(children, DYNAMIC_IMAGE_COMPLETE, outcome)
        for label, outcome, code in (
            (UNKNOWN, "rejected", "signature_mismatch"),
            (DYNAMIC_IMAGE_COMPLETE, "unavailable", "store_unavailable"),
        ):
            self._failed_child(label, outcome, code)
            self._duration(outcome)

    def stored(self, event_type: str, outcome: str, seconds: float) -> None:
        """A callback answered 200: accepted, held or duplicate."""
        label = event_type if event_type in KNOWN_EVENT_TYPES else OTHER
        children, duration = self._stored[outcome]
        child = children.get(label) or self._child(children, label, outcome)
        child.inc()
        duration.observe(seconds)

    def failed(self, event_type: str | None, error: WebhookError, seconds: float) -> None:
        """A callback refused (4xx: rejected) or not stored (503: unavailable)."""
        if event_type is None:
            label = UNKNOWN
        else:
            label = event_type if event_type in KNOWN_EVENT_TYPES else OTHER
        outcome = "unavailable" if error.status_code == 503 else "rejected"
        self._failed_child(label, outcome, error.code).inc()
        self._duration(outcome).observe(seconds)

    def _child(self, children: dict[str, Counter], label: str, outcome: str) -> Counter:
        child = children[label] = self._callbacks.labels(label, outcome, "")
        return child

    def _failed_child(self, label: str, outcome: str, code: str) -> Counter:
        key = (label, outcome, code)
        child = self._failed.get(key)
        if child is None:
            child = self._failed[key] = self._callbacks.labels(label, outcome, code)
        return child

    def _duration(self, outcome: str) -> Histogram:
        child = self._durations.get(outcome)
        if child is None:
            child = self._durations[outcome] = self._duration_family.labels(outcome)
        return child


class ResponseMetrics:
    """Responses by route template and status; children bound the first time and kept."""

    def __init__(self, family: Counter, callback_path: str) -> None:
        self._family = family
        self._children: dict[str, dict[int, Counter]] = {}
        for status in (500, 503):  # what "any 5xx" alerts watch, there from the start
            family.labels(callback_path, str(status))

    def count(self, route: Any, status: int) -> None:
        """`route`: the app's route that matched (its template is the label), or None."""
        template = OTHER if route is None else route.path
        by_status = self._children.get(template)
        if by_status is None:
            by_status = self._children[template] = {}
        child = by_status.get(status)
        if child is None:
            child = by_status[status] = self._family.labels(template, str(status))
        child.inc()
