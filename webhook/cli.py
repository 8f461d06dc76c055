"""The `vod-webhook` command: a thin layer over the library."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

from webhook.client import subscribe
from webhook.sender import sample_dynamic_image_event, send_callback
from webhook.settings import ConfigError, Settings, load_settings, redis_url_of
from webhook.store import Keys

EXIT_FAILURE = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vod-webhook",
        description="Receive ApsaraVideo VOD callbacks and fan them out over Redis. "
        "Configuration comes from VOD_WEBHOOK_* environment variables or .env "
        "(see the README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the callback receiver",
        description="Run the callback receiver under uvicorn. Without VOD_WEBHOOK_REDIS_URL it "
        "runs on an embedded in-memory store (development only).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default %(default)s)")
    serve.add_argument(
        "--workers", type=_positive_int, default=1, help="worker processes (default %(default)s)"
    )

    listen = commands.add_parser(
        "listen",
        help="print envelopes as JSON lines as they are published",
        description="Subscribe to a channel of the receiver's Redis (or its embedded store) and "
        "print each envelope as one JSON line. Live only: what is published while it is not "
        "running is not printed.",
    )
    listen.add_argument(
        "--channel",
        help="channel to follow (default {prefix}:events, every event); e.g. "
        "vod:events:DynamicImageComplete or vod:jobs:JOB_ID",
    )

    send_test = commands.add_parser(
        "send-test",
        help="send a signed sample callback to a receiver and report its answer",
        description="POST a correctly signed sample DynamicImageComplete (or --file) to a "
        "deployed receiver, as VOD would, and print what it answered. Exits 0 on HTTP 200.",
    )
    send_test.add_argument("--url", required=True, help="the receiver's callback URL")
    send_test.add_argument("--key", required=True, help="the AuthKey to sign with")
    send_test.add_argument(
        "--file", type=Path, help="send this event body as it is instead of the sample"
    )
    send_test.add_argument(
        "--callback-url",
        help="URL to sign, when the URL registered in VOD differs from --url (e.g. behind a "
        "proxy); default --url",
    )
    send_test.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait (default %(default)s)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            from webhook.server import serve  # uvicorn is only needed here

            serve(load_settings(), host=args.host, port=args.port, workers=args.workers)
            return 0
        if args.command == "listen":
            return asyncio.run(listen(load_settings(), args.channel))
        return send_test(args)
    except ConfigError as exc:
        print(f"vod-webhook: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


async def listen(settings: Settings, channel: str | None) -> int:
    channel = channel or Keys(settings.key_prefix).events_channel
    url = redis_url_of(settings)
    redis = Redis.from_url(url, decode_responses=True)

    def announce() -> None:
        print(f"listening on {channel} at {_safe_url(url)}", file=sys.stderr, flush=True)

    try:
        async for envelope in subscribe(redis, channel, on_subscribed=announce):
            print(envelope.model_dump_json(), flush=True)
    except (RedisError, OSError) as exc:
        hint = "" if settings.redis_url else " (the embedded store runs inside `vod-webhook serve`)"
        print(
            f"vod-webhook: Redis at {_safe_url(url)} is unavailable{hint}: {exc}", file=sys.stderr
        )
        return EXIT_FAILURE
    finally:
        await redis.aclose()
    return 0


def send_test(args: argparse.Namespace) -> int:
    if args.file is not None:
        try:
            body = args.file.read_bytes()
        except OSError as exc:
            print(f"vod-webhook: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
        label = str(args.file)
    else:
        event = sample_dynamic_image_event()
        body = json.dumps(event).encode()
        label = f"DynamicImageComplete JobId={event['JobId']}"
    print(f"POST {args.url} ({label})")
    try:
        response = send_callback(
            args.url,
            body,
            auth_key=args.key,
            callback_url=args.callback_url,
            timeout=args.timeout,
        )
    except httpx.HTTPError as exc:
        print(f"vod-webhook: cannot reach {args.url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"HTTP {response.status_code}: {response.text}")
    return 0 if response.status_code == 200 else EXIT_FAILURE


def _safe_url(url: str) -> str:
    """The URL without a password, for messages."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


if __name__ == "__main__":
    sys.exit(main())
