"""Every knob of vod-webhook, read from the environment (prefix VOD_WEBHOOK_) or `.env`."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from webhook.connection import check_url, is_cluster_url
from webhook.keys import DEFAULT_PREFIX, Layout
from webhook.mns import QUEUE_NAME, QUEUE_NAME_RULE, endpoint_problem
from webhook.signature import auth_key_weakness, callback_url_problem

ENV_PREFIX = "VOD_WEBHOOK_"


class ConfigError(Exception):
    """The configuration cannot run the service; the message says which variable and why."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )

    redis_url: str | None = Field(
        None,
        description="Redis to store and publish events in: one server (`redis://`, `rediss://`, "
        "`unix://`), Redis Cluster (`redis+cluster://host:port[,host:port...]`) or the master "
        "Sentinel names (`redis+sentinel://host:port[,host:port...]/<master>[/<db>]`, see "
        '"Scaling"). Unset: an embedded in-memory store inside `serve` (development only).',
    )
    partitions: int = Field(
        1,
        ge=1,
        le=1024,
        description="On Redis Cluster, how many partitions (each in one hash slot) the stream, "
        "pending jobs and job records are split into by JobId, so that many masters share the "
        "writes. Every process of a deployment uses the same number; changing it is a "
        'migration (see "Scaling"). 1 on one server or Sentinel.',
    )
    embedded_port: int = Field(
        6399,
        ge=1,
        le=65535,
        description="Loopback port the embedded store listens on when `REDIS_URL` is unset, "
        "so `listen` and other processes can reach it.",
    )
    callback_url: str | None = Field(
        None,
        description="The callback URL exactly as registered in VOD. The signature covers this "
        "string, not the URL a request arrives at. Required when `AUTH_KEYS` is set.",
    )
    auth_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated VOD AuthKeys; any of them verifies a callback "
        "(list old and new while rotating).",
    )
    allow_weak_auth_keys: bool = Field(
        False,
        description="Start even if an `AUTH_KEYS` key is shorter than 16 characters or lacks "
        "upper case, lower case or digits (logged as a warning). A short key can be guessed "
        "offline from one captured signature.",
    )
    allow_unsigned: bool = Field(
        False,
        description="Accept callbacks without verifying X-VOD-SIGNATURE when no `AUTH_KEYS` are "
        "set. Never in production.",
    )
    max_skew_seconds: int = Field(
        300,
        ge=1,
        le=86_400,
        description="Largest accepted distance, past or future, between X-VOD-TIMESTAMP and "
        "this host's clock.",
    )
    callback_path: str = Field(
        "/callbacks/vod", description="Path the receiver accepts VOD's POSTs on."
    )
    max_body_bytes: int = Field(
        65_536,
        ge=1_024,
        le=16 * 1024 * 1024,
        description="Largest callback body accepted; larger ones get 413.",
    )
    dedup_ttl_seconds: int = Field(
        7 * 86_400,
        ge=60,
        description="How long an outcome is remembered to recognise re-sends: the lifetime of "
        "dedup markers and of finished job records.",
    )
    key_prefix: str = Field(
        DEFAULT_PREFIX,
        min_length=1,
        description="Prefix of every Redis key and channel, so several deployments can share "
        "one Redis.",
    )
    stream_maxlen: int = Field(
        100_000,
        ge=1,
        description="Approximate number of envelopes the durable stream retains.",
    )
    redis_timeout_seconds: float = Field(
        2.0,
        gt=0,
        le=4.5,
        description="Connect and command timeout for Redis; kept under VOD's 5 s answer deadline.",
    )
    redis_max_connections: int = Field(
        50,
        ge=1,
        le=10_000,
        description="Pooled Redis connections each worker may open, for reads, pub/sub, "
        "`/events` streams and probes (beyond the cap, a caller waits its turn, at most "
        "`REDIS_TIMEOUT_SECONDS`). Scripts, the callback's one round trip among them, go out "
        "pipelined on one more connection of the worker's own.",
    )
    redis_wait_replicas: int = Field(
        0,
        ge=0,
        le=16,
        description="Answer a callback 200 only once this many replicas hold what it wrote "
        "(Redis WAIT, once per pipelined batch); else 503, and VOD's retry is answered once "
        "they do. 1 with Redis Cluster or Sentinel: a failover then loses no acknowledged "
        "callback. 0: off (one server has no replicas to wait for).",
    )
    redis_wait_timeout_ms: int = Field(
        500,
        ge=1,
        le=3_000,
        description="How long a batch waits for `REDIS_WAIT_REPLICAS` replicas before its "
        "callbacks are answered 503; below `REDIS_TIMEOUT_SECONDS`, which bounds the batch.",
    )
    shutdown_timeout_seconds: float = Field(
        10.0,
        ge=0,
        description="On SIGTERM, how long in-flight requests may take to finish (rounded up to "
        "whole seconds).",
    )
    read_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description="How long a client may take to send a whole request (headers and body); a "
        "late one gets 408 and is disconnected, so half-sent requests cannot pile up.",
    )
    send_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description="A client that accepts none of an answer's bytes for this long (an `/events` "
        "reader that stopped reading) is disconnected, freeing what was queued for it.",
    )
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token for the read API (`GET /events`, `GET /jobs/{job_id}`); "
        "unset, those endpoints are off (404).",
    )
    metrics_token: SecretStr | None = Field(
        None,
        description='Bearer token for `GET /metrics` (Prometheus text format, see "Metrics"), '
        "separate from `API_TOKEN` so a scraper cannot read events or jobs; unset, `/metrics` "
        "is off (404).",
    )
    sse_queue_size: int = Field(
        1000,
        ge=1,
        description="Envelopes buffered per `/events` connection; a client that falls further "
        "behind is disconnected and resumes from the stream with Last-Event-ID.",
    )
    sse_queue_bytes: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        description="Bytes of envelopes buffered per `/events` connection, the same way; "
        "connections share the envelopes they hold, so all of them together hold about this "
        "much, plus up to 1 MiB each in flight.",
    )
    max_event_streams: int = Field(
        100,
        ge=0,
        description="Most `/events` connections one worker serves at once; more get 503 with "
        "Retry-After, so subscribers cannot starve callbacks (0 turns `/events` off).",
    )
    sse_heartbeat_seconds: float = Field(
        15, gt=0, description="Idle `/events` connections get a comment line this often."
    )
    region: str = Field("cn-shanghai", min_length=1, description="VOD region of the account.")
    vod_endpoint: str | None = Field(
        None,
        description="VOD API endpoint override: a host (`vod.cn-shanghai.aliyuncs.com`) or a full "
        "URL such as `http://127.0.0.1:9000` for the emulator or a private endpoint.",
    )
    submit_qps: float = Field(
        30,
        gt=0,
        le=1000,
        description="VOD API calls per second allowed per account other than ListDynamicImage "
        "(submissions, callback settings), shared by every process and host using this Redis "
        "(VOD's limit for SubmitDynamicImageJob is 30).",
    )
    list_qps: float = Field(
        100,
        gt=0,
        le=1000,
        description="ListDynamicImage calls per second allowed per account (verification and "
        "reconciliation), a quota of its own as at VOD (whose limit is 100), so lookups never "
        "delay submissions.",
    )
    account_id: str | None = Field(
        None,
        description="Name of the quota the limiter enforces; default the AccessKey ID. Give "
        "several AccessKeys of one Alibaba Cloud account the same value to share its quota.",
    )
    reconcile: bool = Field(
        False, description="Run reconciliation inside `serve` (one process at a time reconciles)."
    )
    reconcile_interval_seconds: float = Field(
        60, gt=0, description="Seconds between reconciliation passes."
    )
    reconcile_grace_seconds: float = Field(
        300,
        ge=0,
        description="A submitted job without a callback this long is looked up with "
        "ListDynamicImage.",
    )
    reconcile_deadline_seconds: float = Field(
        3600,
        gt=0,
        description="A job neither called back nor listed this long after submission gets a "
        "terminal `timed_out` envelope.",
    )
    verify_outcomes: bool = Field(
        False,
        description="Check a callback's job outcome with ListDynamicImage before publishing it "
        "(VOD does not sign the body): confirmed, it says `verified: true`; contradicted, it is "
        "dropped; otherwise `verified: false`. Held in Redis meanwhile; needs VOD credentials. "
        "Off, `serve` publishes any still held.",
    )
    verify_attempts: int = Field(
        12,
        ge=1,
        le=50,
        description="ListDynamicImage checks of a held outcome (1, 2, 4, 8, 16 s apart, then "
        "every 30 s: the default spans about 3.5 minutes) before one still not listed, or with "
        "VOD out of reach, is published with `verified: false`.",
    )
    max_held_outcomes: int = Field(
        10_000,
        ge=1,
        description="Most outcomes held for verification at once (all processes); beyond it a "
        "new outcome gets 503 `too_many_held_outcomes` (VOD retries, reconciliation recovers "
        "what VOD then drops), so forged bodies cannot grow Redis without bound.",
    )
    mns_endpoint: str | None = Field(
        None,
        description="MNS endpoint of the queue VOD delivers its events into when its callback "
        "type is MNS: `https://<account-id>.mns.<region>.aliyuncs.com` (or the emulator's URL). "
        "Signed with the Alibaba Cloud default credential chain.",
    )
    mns_queue: str | None = Field(
        None,
        description="Name of that MNS queue. Set (with `MNS_ENDPOINT`), `serve` ingests it "
        "beside the HTTP callback, as `ingest-mns` does alone.",
    )
    mns_pollers: int = Field(
        1,
        ge=1,
        le=16,
        description="Long polls each ingesting process keeps open at once (each takes up to 16 "
        "messages).",
    )
    mns_wait_seconds: int = Field(
        30, ge=1, le=30, description="How long one long poll of the MNS queue waits for a message."
    )
    mns_max_dequeues: int = Field(
        5,
        ge=1,
        le=1000,
        description="A message that cannot be recorded for a reason other than Redis being out "
        "of reach (a body that is no VOD event) is received again after 2, 4, 8... s; on its "
        "this-many-th receipt it goes to the dead-letter stream (group `mns`) and is deleted.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level logged."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto",
        description="`json` lines, human `console` output (coloured on a terminal only), or "
        "`auto` (console on a TTY).",
    )

    @property
    def calls_vod(self) -> bool:
        """Whether `serve` calls VOD's API (and so needs credentials): to reconcile or verify."""
        return self.reconcile or self.verify_outcomes

    @field_validator("auth_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("auth_keys")
    @classmethod
    def _check_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for number, key in enumerate(keys, start=1):
            raw = key.get_secret_value()
            if len(raw) > 32 or not raw.isascii() or not raw.isprintable() or " " in raw:
                raise ValueError(
                    f"key #{number} is not a VOD AuthKey (at most 32 printable ASCII characters)"
                )
        return keys

    @field_validator("api_token", "metrics_token", mode="before")
    @classmethod
    def _blank_token_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, url: str | None) -> str | None:
        if url is None or url == "":
            return None
        check_url(url)
        return url

    @field_validator("redis_wait_timeout_ms")
    @classmethod
    def _wait_inside_the_redis_timeout(cls, timeout_ms: int, info: ValidationInfo) -> int:
        if "redis_timeout_seconds" not in info.data:
            return timeout_ms  # that one is reported invalid already
        redis_ms = info.data["redis_timeout_seconds"] * 1000
        if timeout_ms >= redis_ms:
            raise ValueError(
                f"must be below {ENV_PREFIX}REDIS_TIMEOUT_SECONDS ({redis_ms:g} ms), which "
                "bounds a batch with its wait"
            )
        return timeout_ms

    @field_validator("partitions")
    @classmethod
    def _partitions_need_a_cluster(cls, partitions: int, info: ValidationInfo) -> int:
        if partitions > 1 and not is_cluster_url(info.data.get("redis_url") or ""):
            raise ValueError(
                f"above 1 needs Redis Cluster ({ENV_PREFIX}REDIS_URL=redis+cluster://...); "
                "one server's partitions would all share its one core"
            )
        return partitions

    @field_validator("callback_url")
    @classmethod
    def _check_callback_url(cls, url: str | None) -> str | None:
        if url is None or url == "":
            return None
        problem = callback_url_problem(url)
        if problem:
            raise ValueError(f"{problem}: the URL as registered in VOD")
        return url

    @field_validator("mns_endpoint")
    @classmethod
    def _check_mns_endpoint(cls, endpoint: str | None) -> str | None:
        if not endpoint:
            return None
        problem = endpoint_problem(endpoint)
        if problem:
            raise ValueError(problem)
        return endpoint

    @field_validator("mns_queue")
    @classmethod
    def _check_mns_queue(cls, name: str | None, info: ValidationInfo) -> str | None:
        if not name:
            return None
        if not QUEUE_NAME.fullmatch(name):
            raise ValueError(f"not an MNS queue name ({QUEUE_NAME_RULE})")
        if "mns_endpoint" in info.data and not info.data["mns_endpoint"]:
            raise ValueError(f"needs {ENV_PREFIX}MNS_ENDPOINT, the endpoint the queue is at")
        return name

    @field_validator("callback_path")
    @classmethod
    def _check_callback_path(cls, path: str) -> str:
        if not path.startswith("/") or path in {"/healthz", "/readyz"}:
            raise ValueError("must start with / and not be /healthz or /readyz")
        return path


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning validation failures into one readable ConfigError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        name = f"{ENV_PREFIX}{field.split('.')[0].upper()}" if field else "configuration"
        lines.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def check_receiver_settings(settings: Settings) -> None:
    """The receiver refuses to run in a way that would accept forged callbacks by accident."""
    if settings.auth_keys and settings.callback_url is None:
        raise ConfigError(
            f"{ENV_PREFIX}CALLBACK_URL is required with {ENV_PREFIX}AUTH_KEYS: the signature "
            "covers the callback URL exactly as registered in VOD"
        )
    if not settings.auth_keys and not settings.allow_unsigned:
        raise ConfigError(
            f"no {ENV_PREFIX}AUTH_KEYS set: configure the AuthKey from VOD's callback settings "
            f"(and {ENV_PREFIX}CALLBACK_URL), or set {ENV_PREFIX}ALLOW_UNSIGNED=true to accept "
            "unsigned callbacks (development only)"
        )
    weak = weak_auth_keys(settings)
    if weak and not settings.allow_weak_auth_keys:
        raise ConfigError(
            f"{ENV_PREFIX}AUTH_KEYS: {'; '.join(weak)}. Set a random AuthKey of 16 to 32 letters "
            f"and digits, mixed case, in VOD and here, or set {ENV_PREFIX}ALLOW_WEAK_AUTH_KEYS="
            "true to run with it anyway"
        )


def weak_auth_keys(settings: Settings) -> list[str]:
    """Why each weak key of `settings.auth_keys` is weak, naming the key by its position."""
    return [
        f"key #{number} {why}"
        for number, key in enumerate(settings.auth_keys, start=1)
        if (why := auth_key_weakness(key.get_secret_value()))
    ]


def redis_url_of(settings: Settings) -> str:
    """Where the store is: the configured Redis, or the embedded store on loopback."""
    return settings.redis_url or embedded_url(settings.embedded_port)


def layout_of(settings: Settings) -> Layout:
    """Where the deployment's keys are (see webhook/keys.py)."""
    sharded = is_cluster_url(redis_url_of(settings))
    return Layout(settings.key_prefix, settings.partitions, sharded=sharded)


# An option naming a password: redis+sentinel's sentinel_password (and redis-py reads a
# `password` option of redis:// URLs too).
_PASSWORD_OPTION = re.compile(r"([?&][^=&#]*password=)[^&#]*", re.IGNORECASE)


def safe_url(url: str) -> str:
    """The URL without its passwords (the user's, and any `...password=` option), for
    messages."""
    url = _PASSWORD_OPTION.sub(r"\1***", url)
    base, question, query = url.partition("?")
    if "@" not in base:
        if "@" not in query:
            return url
        base, question, query = url, "", ""  # a "?" in an unencoded password: mask to the last @
    scheme, _, rest = base.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}{question}{query}"


def embedded_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"
