"""The emulator as an ASGI app: its options, its parts composed, the state endpoint, uvicorn."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from webhook.emulator.actions import Actions
from webhook.emulator.auth import Authenticator
from webhook.emulator.delivery import CallbackDelivery, MessageCallback
from webhook.emulator.jobs import JobRunner
from webhook.emulator.mns_auth import MnsAuthenticator
from webhook.emulator.queues import MnsQueues, QueueApi, QueueAttributes
from webhook.emulator.quotas import Quotas
from webhook.mns import QUEUE_NAME, QUEUE_NAME_RULE
from webhook.signature import auth_key_problem, callback_url_problem


@dataclass(frozen=True)
class EmulatorOptions:
    access_keys: dict[str, str]
    """AccessKeyId -> AccessKeySecret accepted."""
    callback_url: str | None = None
    """Where DynamicImageComplete is POSTed at first (SetMessageCallback replaces it)."""
    auth_key: str | None = None
    """When set, callbacks carry X-VOD-TIMESTAMP / X-VOD-SIGNATURE (AuthSwitch on)."""
    delay: float = 1.0
    """Seconds from submission to the job's completion."""
    drop_rate: float = 0.0
    """Fraction of jobs whose callback is never sent (the job still completes and is listed)."""
    duplicate_rate: float = 0.0
    """Fraction of jobs whose callback is delivered a second time after the first succeeds."""
    fail_rate: float = 0.0
    """Fraction of jobs that end with Status "fail" (and are not listed)."""
    qps: float = 30.0
    """SubmitDynamicImageJob calls allowed per AccessKeyId in any one-second window; over it:
    Throttling.User. Each API has its own quota, as at VOD."""
    list_qps: float = 100.0
    """The same for ListDynamicImage."""
    callback_qps: float = 15.0
    """The same for SetMessageCallback and GetMessageCallback (each its own)."""
    seed: int | None = None
    """Seed for the fault injection, to make it reproducible."""
    mns_queues: tuple[str, ...] = ()
    """MNS queues that exist from the start, with MNS's default attributes."""
    mns_queue: str | None = None
    """When set, the MessageCallback starts as CallbackType MNS into this queue (created too),
    instead of HTTP."""
    mns_endpoint: str | None = None
    """The MnsEndpoint GetMessageCallback reports with `mns_queue` (events go into the
    emulator's own queue whatever it says); `vod-webhook emulator` sets its own URL."""

    def __post_init__(self) -> None:
        for name in ("drop_rate", "duplicate_rate", "fail_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.delay < 0:
            raise ValueError("delay must not be negative")
        for name in ("qps", "list_qps", "callback_qps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.callback_url is not None and (why := callback_url_problem(self.callback_url)):
            raise ValueError(f"callback_url {why}")
        if self.auth_key is not None and (why := auth_key_problem(self.auth_key)):
            raise ValueError(f"auth_key {why}")
        if self.mns_queue is not None and self.callback_url is not None:
            raise ValueError("callback_url and mns_queue exclude each other (HTTP or MNS)")
        for name in (*self.mns_queues, *filter(None, [self.mns_queue])):
            if not QUEUE_NAME.fullmatch(name):
                raise ValueError(f"queue name {name!r} is not valid at MNS ({QUEUE_NAME_RULE})")


class Emulator:
    """One emulator's parts, composed from its options, and the state endpoint that shows them."""

    def __init__(self, options: EmulatorOptions) -> None:
        self.options = options
        self.queues = MnsQueues()
        for name in (*options.mns_queues, *filter(None, [options.mns_queue])):
            self.queues.create(name, QueueAttributes())
        self.queue_api = QueueApi(self.queues, MnsAuthenticator(options.access_keys))
        self.delivery = CallbackDelivery(
            MessageCallback(
                callback_type="HTTP" if options.mns_queue is None else "MNS",
                callback_url=options.callback_url,
                auth_key=options.auth_key,
                auth_switch="on" if options.auth_key else "off",
                mns_endpoint=options.mns_endpoint if options.mns_queue else None,
                mns_queue_name=options.mns_queue,
            ),
            self.queues,
        )
        self.jobs = JobRunner(
            delay=options.delay,
            fail_rate=options.fail_rate,
            drop_rate=options.drop_rate,
            duplicate_rate=options.duplicate_rate,
            seed=options.seed,
            on_finished=self.delivery.send,
        )
        self.actions = Actions(
            authenticator=Authenticator(options.access_keys),
            quotas=Quotas(
                {
                    "SubmitDynamicImageJob": options.qps,
                    "ListDynamicImage": options.list_qps,
                    "SetMessageCallback": options.callback_qps,
                    "GetMessageCallback": options.callback_qps,
                }
            ),
            jobs=self.jobs,
            delivery=self.delivery,
        )

    async def state(self, request: Request) -> Response:
        config = self.delivery.message_callback
        return JSONResponse(
            {
                "jobs": [
                    {
                        "job_id": job.job_id,
                        "video_id": job.video_id,
                        "template_id": job.template_id,
                        "status": job.status,
                        "submitted_at": job.submitted_at,
                        "completed_at": job.completed_at,
                        "callback": job.callback,
                        "attempts": job.attempts,
                        "deliveries": job.deliveries,
                    }
                    for job in self.jobs.jobs.values()
                ],
                "message_callback": {
                    "callback_type": config.callback_type,
                    "callback_url": config.callback_url,
                    "event_type_list": config.event_type_list,
                    "auth_switch": config.auth_switch,
                    "mns_endpoint": config.mns_endpoint,
                    "mns_queue_name": config.mns_queue_name,
                },
                "queues": self.queues.state(),
            }
        )


def create_emulator_app(options: EmulatorOptions) -> Starlette:
    """The emulator as an ASGI app; its state lives in `app.state.emulator`."""
    emulator = Emulator(options)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Inner first on the way out: running jobs are cancelled before the HTTP client closes.
        async with emulator.delivery.running(), emulator.jobs.running():
            try:
                yield
            finally:
                emulator.queues.close()

    app = Starlette(
        routes=[
            Route("/", emulator.actions.dispatch, methods=["GET", "POST"]),
            Route("/_emulator/state", emulator.state, methods=["GET"]),
            *emulator.queue_api.routes(),
        ],
        lifespan=lifespan,
    )
    app.state.emulator = emulator
    return app


class _EmulatorServer(uvicorn.Server):
    """uvicorn, ending the emulator's long polls as it starts to shut down: it waits for every
    request in flight before the app's lifespan ends, and a long poll can last 30 s."""

    def __init__(self, config: uvicorn.Config, queues: MnsQueues) -> None:
        super().__init__(config)
        self._queues = queues

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._queues.close()
        await super().shutdown(sockets)


def serve_emulator(options: EmulatorOptions, *, host: str, port: int) -> None:
    """Serve the emulator under uvicorn until interrupted (logging is the caller's to set up)."""
    app = create_emulator_app(options)
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="on"
    )
    _EmulatorServer(config, app.state.emulator.queues).run()
