"""The `vod-webhook` command: a thin layer over the library."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from redis.exceptions import RedisError

from webhook.client import STREAM_ID, ConsumerOptions, consume, subscribe, wait_for
from webhook.client import replay as replay_stream
from webhook.errors import StoreUnavailable, explain
from webhook.events import Envelope
from webhook.keys import Keys
from webhook.logs import configure_logging
from webhook.reconcile import reconcile_once, run_reconciler
from webhook.settings import ConfigError, Settings, load_settings, redis_url_of, safe_url
from webhook.signature import auth_key_problem, auth_key_weakness, callback_url_problem
from webhook.store import Store, job_view
from webhook.submitter import JobSpec, LineResult, Submitter
from webhook.vod import Vod, VodError

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
VOD_EVENT_TYPES = ["DynamicImageComplete"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vod-webhook",
        description="Receive ApsaraVideo VOD callbacks and fan them out over Redis; submit "
        "dynamic-image jobs and recover their outcomes. Configuration comes from VOD_WEBHOOK_* "
        "environment variables or .env (see the README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the callback receiver",
        description="Run the callback receiver under uvicorn. Without VOD_WEBHOOK_REDIS_URL it "
        "runs on an embedded in-memory store (development only). With "
        "VOD_WEBHOOK_RECONCILE=true it also reconciles overdue jobs.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    serve.add_argument(
        "--port", type=_port, default=8000, help="port to bind (default %(default)s)"
    )
    serve.add_argument(
        "--workers", type=_positive_int, default=1, help="worker processes (default %(default)s)"
    )

    listen = commands.add_parser(
        "listen",
        help="print envelopes as JSON lines as they are published",
        description="Print each envelope as one JSON line, from the receiver's Redis (or its "
        "embedded store). Without --group it follows a pub/sub channel, live only. With "
        "--group it consumes the stream durably: stopped and restarted, it prints what it "
        "missed, and nothing it printed and acknowledged before.",
    )
    listen.add_argument(
        "--channel",
        help="pub/sub channel to follow (default {prefix}:events, every event); e.g. "
        "vod:events:DynamicImageComplete or vod:jobs:JOB_ID",
    )
    listen.add_argument("--group", help="consume durably as this consumer group")
    listen.add_argument(
        "--consumer",
        default=socket.gethostname(),
        help="this consumer's name in the group; keep it across restarts (default the host "
        "name, %(default)s)",
    )
    listen.add_argument(
        "--from",
        dest="start",
        choices=["beginning", "now"],
        default="now",
        help="where a new group starts: the oldest retained envelope, or now (default); an "
        "existing group carries on where it stopped",
    )

    replay = commands.add_parser(
        "replay",
        help="print envelopes from the stream's history",
        description="Print the envelopes still in the stream as JSON lines, oldest first.",
    )
    replay.add_argument(
        "--since",
        default="0",
        help="a stream id (print what came after it) or an ISO 8601 time; default all history",
    )
    replay.add_argument("--job", help="only this job's envelopes")
    replay.add_argument("--type", dest="event_type", help="only this event type")

    send_test = commands.add_parser(
        "send-test",
        help="send a signed sample callback to a receiver and report its answer",
        description="POST a correctly signed sample DynamicImageComplete (or --file) to a "
        "deployed receiver, as VOD would, and print what it answered. Exits 0 on HTTP 200.",
    )
    send_test.add_argument("--url", required=True, help="the receiver's callback URL")
    send_test.add_argument(
        "--key", required=True, help="the AuthKey to sign with, as set in VOD and AUTH_KEYS"
    )
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

    submit = commands.add_parser(
        "submit",
        help="submit dynamic-image jobs through the VOD API",
        description="Submit a job with SubmitDynamicImageJob (official SDK, credentials from the "
        "Alibaba Cloud default chain), within VOD_WEBHOOK_SUBMIT_QPS across every process "
        "sharing the Redis, and record it so its callback is correlated. Prints the JobId.",
        epilog="exit codes: 0 submitted (with --wait: succeeded), 1 refused by VOD or the job "
        "failed / timed out, 2 bad input or configuration, 3 --wait ran out of time",
    )
    submit.add_argument("--video-id", help="the video to make the image from")
    submit.add_argument("--template-id", help="the dynamic-image template")
    submit.add_argument(
        "--override-params", help="OverrideParams as a JSON object, or @FILE holding one"
    )
    submit.add_argument(
        "--tag", action="append", default=[], metavar="K=V", help="a tag kept with the job"
    )
    submit.add_argument(
        "--from-file",
        type=Path,
        metavar="JOBS.jsonl",
        help='submit every line {"video_id", "template_id", "override_params"?, "tags"?}; '
        "lines already submitted by an earlier run are skipped",
    )
    submit.add_argument(
        "--wait", action="store_true", help="wait for the outcome and print its envelope"
    )
    submit.add_argument(
        "--timeout", type=float, default=900, help="seconds --wait waits (default %(default)s)"
    )
    submit.add_argument("--json", action="store_true", help="print JSON")

    jobs = commands.add_parser("jobs", help="show recorded jobs")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    show = jobs_commands.add_parser(
        "show", help="one job: status, submission, result, source, timings"
    )
    show.add_argument("job_id", metavar="JOB_ID")
    show.add_argument("--json", action="store_true", help="print JSON")
    pending = jobs_commands.add_parser("pending", help="submitted jobs still without an outcome")
    pending.add_argument("--json", action="store_true", help="print JSON")

    reconcile = commands.add_parser(
        "reconcile",
        help="recover outcomes whose callback never came",
        description="Look up jobs pending longer than the grace time with ListDynamicImage and "
        "record what is found (source 'reconcile'); jobs still absent after the deadline get "
        "a terminal 'timed_out' envelope.",
    )
    reconcile.add_argument("--once", action="store_true", help="one pass, then print a report")
    reconcile.add_argument(
        "--interval", type=float, help="seconds between passes (default RECONCILE_INTERVAL)"
    )
    reconcile.add_argument(
        "--grace", type=float, help="seconds before a job counts as overdue (default "
        "RECONCILE_GRACE)",
    )  # fmt: skip
    reconcile.add_argument(
        "--deadline", type=float, help="seconds before an absent job times out (default "
        "RECONCILE_DEADLINE)",
    )  # fmt: skip

    register = commands.add_parser(
        "register",
        help="configure VOD's HTTP callback (SetMessageCallback)",
        description="Point VOD's callbacks at the receiver, with signing on, through the API.",
    )
    register.add_argument("--callback-url", help="the receiver's public callback URL")
    register.add_argument(
        "--auth-key",
        help="AuthKey: 16 to 32 random letters and digits, mixed case (shorter only with "
        "VOD_WEBHOOK_ALLOW_WEAK_AUTH_KEYS=true)",
    )
    register.add_argument(
        "--event-types",
        nargs="+",
        default=VOD_EVENT_TYPES,
        metavar="TYPE",
        help="event types to send (default %(default)s; ALL for every type)",
    )
    register.add_argument(
        "--show", action="store_true", help="print the current configuration instead"
    )

    emulator = commands.add_parser(
        "emulator",
        help="run a local VOD stand-in for development and tests",
        description="A local stand-in for VOD that the official SDK talks to unchanged "
        "(VOD_WEBHOOK_VOD_ENDPOINT=http://127.0.0.1:PORT): it verifies ACS3-HMAC-SHA256 "
        "signatures, runs dynamic-image jobs and delivers signed callbacks like VOD.",
    )
    emulator.add_argument("--host", default="127.0.0.1", help="address (default %(default)s)")
    emulator.add_argument("--port", type=_port, default=9000, help="port (default %(default)s)")
    emulator.add_argument(
        "--access-key",
        action="append",
        required=True,
        metavar="ID:SECRET",
        help="an AccessKey pair it accepts (repeatable)",
    )
    emulator.add_argument("--callback-url", help="where it POSTs DynamicImageComplete")
    emulator.add_argument(
        "--auth-key",
        help="AuthKey signing its callbacks; like VOD it takes at most 32 letters and digits, "
        "mixed case, and the receiver wants at least 16 (e.g. DemoAuthKey2026xyz)",
    )
    emulator.add_argument("--delay", type=float, default=1.0, help="job run time, s")
    emulator.add_argument("--drop-rate", type=_rate, default=0.0, help="callbacks never sent")
    emulator.add_argument("--duplicate-rate", type=_rate, default=0.0, help="callbacks sent twice")
    emulator.add_argument("--fail-rate", type=_rate, default=0.0, help="jobs that fail")
    emulator.add_argument(
        "--qps", type=float, default=30.0, help="SubmitDynamicImageJob calls/s per AccessKey"
    )
    emulator.add_argument(
        "--list-qps", type=float, default=100.0, help="ListDynamicImage calls/s per AccessKey"
    )
    emulator.add_argument(
        "--callback-qps",
        type=float,
        default=15.0,
        help="Set/GetMessageCallback calls/s per AccessKey",
    )
    emulator.add_argument("--seed", type=int, help="seed for the fault knobs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            from webhook.server import serve  # uvicorn is only needed here

            serve(load_settings(), host=args.host, port=args.port, workers=args.workers)
            return 0
        if args.command == "send-test":
            return send_test(args)
        if args.command == "emulator":
            return run_emulator(args)
        command: Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]] = {
            "listen": listen,
            "replay": replay,
            "submit": submit,
            "jobs": jobs,
            "reconcile": reconcile,
            "register": register,
        }[args.command]
        settings = load_settings()
        configure_logging(settings)  # logs go to stderr; stdout carries the command's output
        try:
            return asyncio.run(command(settings, args))
        except StoreUnavailable as exc:
            return _fail(exc.detail + _embedded_hint(settings))
        except RedisError as exc:
            return _fail(f"Redis is unavailable: {exc}{_embedded_hint(settings)}")
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except VodError as exc:
        return _fail(f"VOD refused: {exc}")
    except KeyboardInterrupt:
        return 130


async def listen(settings: Settings, args: argparse.Namespace) -> int:
    if args.group and args.channel:
        return _fail("--channel is for live listening; a --group reads the stream", EXIT_USAGE)
    channel = args.channel or Keys(settings.key_prefix).events_channel
    url = redis_url_of(settings)

    def announce() -> None:
        where = f"group {args.group} as {args.consumer}" if args.group else channel
        print(f"listening on {where} at {safe_url(url)}", file=sys.stderr, flush=True)

    async def show(envelope: Envelope) -> None:
        print(envelope.model_dump_json(), flush=True)

    async with _store(settings) as store:
        try:
            if args.group:
                stop = asyncio.Event()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    asyncio.get_running_loop().add_signal_handler(sig, stop.set)
                announce()
                await consume(
                    store.redis,
                    args.group,
                    args.consumer,
                    show,
                    prefix=settings.key_prefix,
                    options=ConsumerOptions(start=args.start),
                    stop=stop,
                )
            else:
                async for envelope in subscribe(store.redis, channel, on_subscribed=announce):
                    await show(envelope)
        except (RedisError, OSError) as exc:
            return _fail(_redis_unavailable(settings, exc))
    return 0


async def replay(settings: Settings, args: argparse.Namespace) -> int:
    since: str | datetime = args.since
    if not STREAM_ID.fullmatch(args.since):
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            return _fail(
                f"--since {args.since!r} is neither a stream id nor an ISO time", EXIT_USAGE
            )
        if since.tzinfo is None:
            return _fail("--since needs a time zone, e.g. 2026-11-24T10:00:00Z", EXIT_USAGE)
    async with _store(settings) as store:
        async for envelope in replay_stream(
            store.redis,
            since,
            event_type=args.event_type,
            job_id=args.job,
            prefix=settings.key_prefix,
        ):
            print(envelope.model_dump_json())
    return 0


def send_test(args: argparse.Namespace) -> int:
    import httpx  # imported by the commands that use it, not by `serve`

    from webhook.sender import sample_dynamic_image_event, send_callback

    if args.file is not None:
        try:
            body = args.file.read_bytes()
        except OSError as exc:
            return _fail(f"cannot read {args.file}: {exc.strerror}", EXIT_USAGE)
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
        return _fail(f"cannot reach {args.url}: {exc}")
    print(f"HTTP {response.status_code}: {response.text}")
    return 0 if response.status_code == 200 else EXIT_FAILURE


async def submit(settings: Settings, args: argparse.Namespace) -> int:
    if args.from_file is not None:
        if args.video_id or args.template_id or args.override_params or args.tag or args.wait:
            return _fail("--from-file takes no other job options, nor --wait", EXIT_USAGE)
        return await _submit_batch(settings, args)
    if not args.video_id or not args.template_id:
        return _fail("give --video-id and --template-id (or --from-file)", EXIT_USAGE)
    try:
        spec = JobSpec(
            video_id=args.video_id,
            template_id=args.template_id,
            override_params=_read_overrides(args.override_params),
            tags=_parse_tags(args.tag),
        )
    except (ValidationError, ValueError, OSError) as exc:
        message = explain(exc) if isinstance(exc, ValidationError) else str(exc)
        return _fail(f"invalid job: {message}", EXIT_USAGE)
    async with _store(settings) as store:
        submitter = Submitter(Vod.from_settings(settings, store.redis), store)
        submitted = await submitter.submit(spec)
        if not args.wait:
            if args.json:
                print(json.dumps({"job_id": submitted.job_id, "request_id": submitted.request_id,
                                  **spec.model_dump()}))  # fmt: skip
            else:
                print(submitted.job_id)
            return 0
        print(f"submitted job {submitted.job_id}; waiting for its outcome", file=sys.stderr)
        try:
            envelope = await wait_for(
                store.redis, submitted.job_id, timeout=args.timeout, prefix=settings.key_prefix
            )
        except TimeoutError:
            return _fail(
                f"no outcome for job {submitted.job_id} within {args.timeout:g} s; "
                f"see `vod-webhook jobs show {submitted.job_id}` later",
                EXIT_TIMEOUT,
            )
        print(envelope.model_dump_json())
        return 0 if envelope.status == "success" else EXIT_FAILURE


async def _submit_batch(settings: Settings, args: argparse.Namespace) -> int:
    try:
        lines = args.from_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return _fail(f"cannot read {args.from_file}: {exc}", EXIT_USAGE)
    total = sum(1 for line in lines if line.strip())
    async with _store(settings) as store:
        try:
            await store.redis.ping()  # one clear error rather than one per line
        except (RedisError, OSError) as exc:
            return _fail(f"{_redis_unavailable(settings, exc)}; nothing was submitted")
        from tqdm import tqdm

        submitter = Submitter(Vod.from_settings(settings, store.redis), store)
        with tqdm(total=total, unit="job", file=sys.stderr, disable=None) as progress:

            def report(result: LineResult) -> None:
                progress.update()
                if args.json:
                    print(result.as_json(), flush=True)
                elif result.status == "submitted":
                    print(result.job_id, flush=True)

            summary = await submitter.submit_batch(lines, report)
    for result in summary.results:
        if result.error:
            print(f"{args.from_file}:{result.line}: {result.error}", file=sys.stderr)
    troubled = sum(1 for r in summary.results if r.status == "submitted" and r.error)
    print(
        f"submitted {summary.count('submitted')}, already submitted {summary.count('skipped')}, "
        f"failed {summary.count('failed')}"
        + (f"; {troubled} of the submitted not fully recorded (see above)" if troubled else ""),
        file=sys.stderr,
    )
    return EXIT_FAILURE if summary.count("failed") or troubled else 0


async def jobs(settings: Settings, args: argparse.Namespace) -> int:
    async with _store(settings) as store:
        if args.jobs_command == "pending":
            now_ms = time.time() * 1000
            rows = []
            for (job_id, submitted_ms), video_id in zip(
                pending := await store.pending_jobs(),
                await store.video_ids([job_id for job_id, _ in pending]),
                strict=True,
            ):
                age = round((now_ms - submitted_ms) / 1000, 1)
                rows.append({"job_id": job_id, "video_id": video_id, "age_seconds": age})
            if args.json:
                print(json.dumps(rows))
            else:
                for row in rows:
                    print(f"{row['job_id']}  video {row['video_id']}  {row['age_seconds']} s")
                print(f"{len(rows)} pending", file=sys.stderr)
            return 0
        record = await store.job(args.job_id)
    if record is None:
        return _fail(f"no job {args.job_id} is recorded")
    view = job_view(args.job_id, record)
    if args.json:
        print(json.dumps(view))
    else:
        for label, value in view.items():
            if value not in (None, {}, ""):
                print(f"{label:<14}{json.dumps(value) if isinstance(value, dict) else value}")
    return 0


async def reconcile(settings: Settings, args: argparse.Namespace) -> int:
    grace = args.grace if args.grace is not None else settings.reconcile_grace_seconds
    deadline = args.deadline if args.deadline is not None else settings.reconcile_deadline_seconds
    interval = args.interval if args.interval is not None else settings.reconcile_interval_seconds
    async with _store(settings) as store:
        vod = Vod.from_settings(settings, store.redis)
        if args.once:
            report = await reconcile_once(
                store, vod, grace_seconds=grace, deadline_seconds=deadline
            )
            print(json.dumps(dataclasses.asdict(report)))
            return 0
        print(f"reconciling every {interval:g} s", file=sys.stderr, flush=True)
        await run_reconciler(
            store, vod, interval_seconds=interval, grace_seconds=grace, deadline_seconds=deadline
        )
    return 0


async def register(settings: Settings, args: argparse.Namespace) -> int:
    async with _store(settings) as store:
        vod = Vod.from_settings(settings, store.redis)
        if args.show:
            current = await vod.get_message_callback()
            if current.get("AuthKey"):
                current["AuthKey"] = current["AuthKey"][:2] + "***"
            print(json.dumps(current))
            return 0
        if not args.callback_url or not args.auth_key:
            return _fail("give --callback-url and --auth-key (or --show)", EXIT_USAGE)
        # The receiver refuses a weak key at start-up; refuse to give one to VOD likewise.
        key_check = auth_key_problem if settings.allow_weak_auth_keys else auth_key_weakness
        for option, problem in (
            ("--callback-url", callback_url_problem(args.callback_url)),
            ("--auth-key", key_check(args.auth_key)),
        ):
            if problem:
                return _fail(f"{option} {problem}", EXIT_USAGE)
        request_id = await vod.set_message_callback(
            args.callback_url, args.auth_key, args.event_types
        )
    print(
        f"VOD now sends {', '.join(args.event_types)} to {args.callback_url}, signed "
        f"(request id {request_id}). Set VOD_WEBHOOK_CALLBACK_URL={args.callback_url} and "
        "VOD_WEBHOOK_AUTH_KEYS to the same key on the receiver."
    )
    return 0


def run_emulator(args: argparse.Namespace) -> int:
    from webhook.emulator import EmulatorOptions, serve_emulator

    access_keys = {}
    for pair in args.access_key:
        key_id, separator, secret = pair.partition(":")
        if not separator or not key_id or not secret:
            return _fail(f"--access-key {pair!r} is not ID:SECRET", EXIT_USAGE)
        access_keys[key_id] = secret
    try:
        options = EmulatorOptions(
            access_keys=access_keys,
            callback_url=args.callback_url,
            auth_key=args.auth_key,
            delay=args.delay,
            drop_rate=args.drop_rate,
            duplicate_rate=args.duplicate_rate,
            fail_rate=args.fail_rate,
            qps=args.qps,
            list_qps=args.list_qps,
            callback_qps=args.callback_qps,
            seed=args.seed,
        )
    except ValueError as exc:
        return _fail(f"emulator: {exc}", EXIT_USAGE)
    configure_logging(load_settings())
    serve_emulator(options, host=args.host, port=args.port)
    return 0


@asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[Store]:
    store = Store.from_settings(settings)
    try:
        yield store
    finally:
        await store.close()


def _read_overrides(value: str | None) -> object:
    if value is None:
        return None
    if value.startswith("@"):
        return Path(value[1:]).read_text()
    return value


def _parse_tags(pairs: list[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"--tag {pair!r} is not K=V")
        tags[key] = value
    return tags


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"vod-webhook: {message}", file=sys.stderr)
    return code


def _redis_unavailable(settings: Settings, error: Exception) -> str:
    where = safe_url(redis_url_of(settings))
    return f"Redis at {where} is unavailable: {error}{_embedded_hint(settings)}"


def _embedded_hint(settings: Settings) -> str:
    if settings.redis_url:
        return ""
    return (
        " (no VOD_WEBHOOK_REDIS_URL is set: the embedded store lives inside a running "
        "`vod-webhook serve`; start that first, or point VOD_WEBHOOK_REDIS_URL at Redis)"
    )


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be a TCP port, 1 to 65535")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


if __name__ == "__main__":
    sys.exit(main())
