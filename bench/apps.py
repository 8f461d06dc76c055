"""The baselines `make bench` runs beside the receiver, each in its own process on the uvicorn
settings of `vod-webhook serve` (uvloop, httptools with the project's client limits), 1 worker:

- bare: Starlette reading the body and answering a small JSON, the HTTP stack alone;
- evalsha: the same plus one EVALSHA of the project's record_event script (a new job each
  time) on the project's auto-pipelined connection (webhook/autopipeline.py), the ceiling of
  a receiver that records every callback in one round trip.

    python -m bench.apps bare|evalsha PORT [REDIS_URL]
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from webhook.autopipeline import AutoPipeline
from webhook.events import parse_callback
from webhook.sender import sample_dynamic_image_event
from webhook.server import server_config
from webhook.settings import Settings
from webhook.store import Store, script_source

PATH = "/callbacks/vod"


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def bare() -> Starlette:
    async def accept(request: Request) -> Response:
        await request.body()
        return JSONResponse({"status": "accepted"})

    return Starlette(routes=[Route(PATH, accept, methods=["POST"]), Route("/healthz", healthz)])


def evalsha(redis_url: str) -> Starlette:
    settings = Settings()
    redis = Redis.from_url(redis_url, decode_responses=True)
    store = Store(
        redis,
        prefix=settings.key_prefix,
        stream_maxlen=settings.stream_maxlen,
        dedup_ttl_seconds=settings.dedup_ttl_seconds,
    )
    # What the receiver sends for a callback, built once: the same Redis work per request.
    sample = json.dumps(sample_dynamic_image_event()).encode()
    keys, args = store.record_arguments(parse_callback(sample, datetime.now(UTC)))
    sha = redis.register_script(script_source("record_event")).sha
    pipeline = AutoPipeline(redis, default_timeout=2)

    async def accept(request: Request) -> Response:
        job_id = json.loads(await request.body())["JobId"]
        created, entry_id = await pipeline.execute(  # a new job each time
            "EVALSHA",
            sha,
            len(keys),
            store.shared.job(job_id),
            *keys[1:],
            args[0],
            job_id,
            *args[2:],
        )
        status = "accepted" if created else "duplicate"
        return JSONResponse({"status": status, "id": entry_id})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await redis.script_load(script_source("record_event"))
        yield
        await pipeline.aclose()
        await redis.aclose()

    routes = [Route(PATH, accept, methods=["POST"]), Route("/healthz", healthz)]
    return Starlette(routes=routes, lifespan=lifespan)


def main() -> None:
    name, port = sys.argv[1], int(sys.argv[2])
    config = server_config(Settings(), host="127.0.0.1", port=port, workers=1)
    # The same settings as `serve`, with this app in place of the receiver's.
    config.app = bare if name == "bare" else lambda: evalsha(sys.argv[3])
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
