"""The `vod-webhook` command: parse, call the library, map errors to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, TypeAlias

from redis.exceptions import RedisError

from webhook.client import ConsumerOptions, consume, parse_since, subscribe, wait_for
from webhook.client import replay as replay_stream
from webhook.deadletters import (
    DeadLetter,
    NotRedrivable,
    UnknownDeadLetters,
    dead_letter,
    dead_letter_id,
    dead_letters,
    purge_all_dead_letters,
    purge_dead_letters,
    redrive_all_dead_letters,
    redrive_dead_letters,
)
from webhook.errors import StoreUnavailable
from webhook.events import Envelope
from webhook.ingest import ingest_from_settings
from webhook.jobs import job_view, pending_with_ages
from webhook.logs import configure_logging
from webhook.mns import QUEUE_NAME, QUEUE_NAME_RULE, endpoint_problem
from webhook.pubsub import channels_for
from webhook.reconcile import ReconcileOptions, reconcile_once, run_reconciler
from webhook.settings import (
    ConfigError,
    Settings,
    layout_of,
    load_settings,
    redis_url_of,
    safe_url,
)
from webhook.signature import auth_key_refusal, callback_url_problem
from webhook.status import needs_attention, read_status, status_document, status_lines
from webhook.store import Store
from webhook.submitter import InvalidJob, LineResult, Submitter, job_from_options
from webhook.vod import Vod, VodError, masked_message_callback

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130
VOD_EVENT_TYPES = ["DynamicImageComplete"]

# A command runs on its arguments alone, or (most) on the settings too, in an event loop.
Command: TypeAlias = Callable[[argparse.Namespace], int]
AsyncCommand: TypeAlias = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]
Explain: TypeAlias = Callable[[Any, Settings | None], str | None]
_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings: Settings | None = None
    try:
        if args.run is not None:
            run: Command = args.run
            return run(args)
        settings = load_settings()
        configure_logging(settings)  # logs go to stderr; stdout carries the command's output
        run_async: AsyncCommand = args.run_async
        return asyncio.run(run_async(settings, args))
    except BaseException as exc:
        status = exit_status(exc, settings)
        if status is None:
            raise  # a bug: its traceback says where
        code, message = status
        return code if message is None else _fail(message, code)


# What an error a command ends in means to its user: the exit code, and the message (None:
# nothing to say), given the settings if they were read. Looked up along the error's classes,
# so that e.g. UnrecordedSubmission reads as the StoreUnavailable it is.
_FAILURES: dict[type[BaseException], tuple[int, Explain]] = {
    ConfigError: (EXIT_USAGE, lambda exc, _: str(exc)),
    StoreUnavailable: (EXIT_FAILURE, lambda exc, settings: exc.detail + _embedded_hint(settings)),
    RedisError: (
        EXIT_FAILURE,
        lambda exc, settings: f"Redis is unavailable: {exc}{_embedded_hint(settings)}",
    ),
    VodError: (EXIT_FAILURE, lambda exc, _: f"VOD refused: {exc}"),
    UnknownDeadLetters: (EXIT_FAILURE, lambda exc, _: str(exc)),
    NotRedrivable: (EXIT_FAILURE, lambda exc, _: str(exc)),
    KeyboardInterrupt: (EXIT_INTERRUPTED, lambda exc, _: None),
}


def exit_status(
    error: BaseException, settings: Settings | None = None
) -> tuple[int, str | None] | None:
    """The exit code and message of a command that ended in `error`, or None for an error it
    should not end in (a bug). A group (from a TaskGroup) ends as its first error, provided
    every error in it is one of ours: a bug among them must not hide behind a clean message."""
    if isinstance(error, BaseExceptionGroup):
        statuses = [exit_status(inner, settings) for inner in error.exceptions]
        return statuses[0] if None not in statuses else None
    for kind in type(error).__mro__:
        if kind in _FAILURES:
            code, explain = _FAILURES[kind]
            return code, explain(error, settings)
    return None


def serve(args: argparse.Namespace) -> int:
    from webhook import server  # uvicorn is only needed here

    server.serve(load_settings(), host=args.host, port=args.port, workers=args.workers)
    return 0


async def listen(settings: Settings, args: argparse.Namespace) -> int:
    if args.group and args.channel:
        return _fail("--channel is for live listening; a --group reads the stream", EXIT_USAGE)
    channels = [args.channel] if args.channel else channels_for(layout_of(settings))
    where = f"group {args.group} as {args.consumer}" if args.group else ", ".join(channels)

    def announce() -> None:
        url = safe_url(redis_url_of(settings))
        print(f"listening on {where} at {url}", file=sys.stderr, flush=True)

    async def show(envelope: Envelope) -> None:
        print(envelope.model_dump_json(), flush=True)

    async with _store(settings) as store:
        try:
            if args.group:
                stop = asyncio.Event()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    asyncio.get_running_loop().add_signal_handler(sig, stop.set)
                announce()
                options = ConsumerOptions(start=args.start)
                await consume(
                    store.redis,
                    args.group,
                    args.consumer,
                    show,
                    prefix=settings.key_prefix,
                    partitions=settings.partitions,
                    options=options,
                    stop=stop,
                )
            else:
                async for envelope in subscribe(
                    store.redis,
                    args.channel,
                    prefix=settings.key_prefix,
                    partitions=settings.partitions,
                    on_subscribed=announce,
                ):
                    await show(envelope)
        except (RedisError, OSError) as exc:
            return _fail(_redis_unavailable(settings, exc))
    return 0


async def replay(settings: Settings, args: argparse.Namespace) -> int:
    try:
        since = parse_since(args.since)
    except ValueError as exc:
        return _fail(f"--since {exc}", EXIT_USAGE)
    async with _store(settings) as store:
        async for envelope in replay_stream(
            store.redis,
            since,
            event_type=args.event_type,
            job_id=args.job,
            prefix=settings.key_prefix,
            partitions=settings.partitions,
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
            args.url, body, auth_key=args.key, callback_url=args.callback_url, timeout=args.timeout
        )
    except httpx.HTTPError as exc:
        return _fail(f"cannot reach {args.url}: {exc}")
    print(f"HTTP {response.status_code}: {response.text}")
    return 0 if response.status_code == 200 else EXIT_FAILURE


async def submit(settings: Settings, args: argparse.Namespace) -> int:
    if args.from_file is not None:
        if args.video_id or args.template_id or args.override_params or args.tag or args.wait:
            return _fail("--from-file takes no other job options, nor --wait", EXIT_USAGE)
        return await _submit_batch(settings, args.from_file, args.json)
    if not args.video_id or not args.template_id:
        return _fail("give --video-id and --template-id (or --from-file)", EXIT_USAGE)
    try:
        spec = job_from_options(
            args.video_id, args.template_id, override_params=args.override_params, tags=args.tag
        )
    except InvalidJob as exc:
        return _fail(f"invalid job: {exc}", EXIT_USAGE)
    async with _store(settings) as store:
        submitted = await Submitter(Vod.from_settings(settings, store.redis), store).submit(spec)
        if args.wait:
            return await _wait_for_outcome(settings, store, submitted.job_id, args.timeout)
    if args.json:
        print(json.dumps({"job_id": submitted.job_id, "request_id": submitted.request_id,
                          **spec.model_dump()}))  # fmt: skip
    else:
        print(submitted.job_id)
    return 0


async def _wait_for_outcome(settings: Settings, store: Store, job_id: str, within: float) -> int:
    print(f"submitted job {job_id}; waiting for its outcome", file=sys.stderr)
    try:
        envelope = await wait_for(
            store.redis,
            job_id,
            timeout=within,
            prefix=settings.key_prefix,
            partitions=settings.partitions,
        )
    except TimeoutError:
        return _fail(
            f"no outcome for job {job_id} within {within:g} s; "
            f"see `vod-webhook jobs show {job_id}` later",
            EXIT_TIMEOUT,
        )
    print(envelope.model_dump_json())
    return 0 if envelope.status == "success" else EXIT_FAILURE


async def _submit_batch(settings: Settings, path: Path, as_json: bool) -> int:
    try:
        lines = (await asyncio.to_thread(path.read_text)).splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return _fail(f"cannot read {path}: {exc}", EXIT_USAGE)
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
                if as_json:
                    print(result.as_json(), flush=True)
                elif result.status == "submitted":
                    print(result.job_id, flush=True)

            summary = await submitter.submit_batch(lines, report)
    for result in summary.results:
        if result.error:
            print(f"{path}:{result.line}: {result.error}", file=sys.stderr)
    troubled = sum(1 for r in summary.results if r.status == "submitted" and r.error)
    print(
        f"submitted {summary.count('submitted')}, already submitted {summary.count('skipped')}, "
        f"failed {summary.count('failed')}"
        + (f"; {troubled} of the submitted not fully recorded (see above)" if troubled else ""),
        file=sys.stderr,
    )
    return EXIT_FAILURE if summary.count("failed") or troubled else 0


async def jobs_show(settings: Settings, args: argparse.Namespace) -> int:
    async with _store(settings) as store:
        record = await store.job(args.job_id)
    if record is None:
        return _fail(f"no job {args.job_id} is recorded")
    view = job_view(args.job_id, record)
    if args.json:
        print(json.dumps(view))
        return 0
    for label, value in view.items():
        if value not in (None, {}, ""):
            print(f"{label:<14}{json.dumps(value) if isinstance(value, dict) else value}")
    return 0


async def jobs_pending(settings: Settings, args: argparse.Namespace) -> int:
    async with _store(settings) as store:
        pending = await pending_with_ages(store)
    if args.json:
        print(json.dumps([dataclasses.asdict(job) for job in pending]))
        return 0
    for job in pending:
        print(f"{job.job_id}  video {job.video_id}  {job.age_seconds} s")
    print(f"{len(pending)} pending", file=sys.stderr)
    return 0


async def deadletter_list(settings: Settings, args: argparse.Namespace) -> int:
    async with _store(settings) as store:
        letters = [
            letter
            async for letter in dead_letters(
                store.redis,
                group=args.group,
                prefix=settings.key_prefix,
                partitions=settings.partitions,
            )
        ]
    if args.json:
        print(json.dumps([letter.summary() for letter in letters]))
        return 0
    if letters:
        _print_table(DEAD_LETTER_COLUMNS, [_dead_letter_row(letter) for letter in letters])
    print(_counted(len(letters), "dead letter"), file=sys.stderr)
    return 0


async def deadletter_show(settings: Settings, args: argparse.Namespace) -> int:
    async with _store(settings) as store:
        letter = await dead_letter(
            store.redis, args.id, prefix=settings.key_prefix, partitions=settings.partitions
        )
    details = letter.details()
    if args.json:
        print(json.dumps(details))
        return 0
    history = details.pop("history")
    envelope = details.pop("envelope")
    for label, value in details.items():
        if value not in (None, {}, ""):
            shown = json.dumps(value) if isinstance(value, dict) else str(value)
            print(f"{label:<18}" + shown.replace("\n", "\n" + " " * 18))
    for n, earlier in enumerate(history, 1):
        print(f"{'history' if n == 1 else '':<18}{_earlier_failure(earlier)}")
    if envelope is not None:
        print("envelope")
        print(json.dumps(envelope, indent=2) if isinstance(envelope, dict) else envelope)
    return 0


async def deadletter_redrive(settings: Settings, args: argparse.Namespace) -> int:
    return await _on_dead_letters(
        settings, args, "redrove", redrive_dead_letters, redrive_all_dead_letters
    )


async def deadletter_purge(settings: Settings, args: argparse.Namespace) -> int:
    return await _on_dead_letters(
        settings, args, "purged", purge_dead_letters, purge_all_dead_letters
    )


async def _on_dead_letters(
    settings: Settings,
    args: argparse.Namespace,
    done: str,
    by_id: Callable[..., Awaitable[int]],
    every: Callable[..., Awaitable[int]],
) -> int:
    """`deadletter redrive` and `purge`: on the ids given, or on --all."""
    if problem := _selection_problem(args):
        return _fail(problem, EXIT_USAGE)
    async with _store(settings) as store:
        scope = {
            "group": args.group,
            "prefix": settings.key_prefix,
            "partitions": settings.partitions,
        }
        if args.all:
            count = await every(store.redis, **scope)
        else:
            count = await by_id(store.redis, args.ids, **scope)
    print(f"{done} {_counted(count, 'dead letter')}")
    return 0


def _selection_problem(args: argparse.Namespace) -> str | None:
    if args.ids and args.all:
        return "give dead-letter ids or --all, not both"
    if not args.ids and not args.all:
        return "give dead-letter ids, or --all"
    return None


DEAD_LETTER_COLUMNS = ("ID", "GROUP", "CONSUMER", "ORIGINAL ID", "DEAD-LETTERED (UTC)",
                       "DELIVERIES", "REDRIVES", "EVENT TYPE", "JOB", "ERROR")  # fmt: skip
# The table shows an error's first line cut to this; `show` and --json give it in full.
SHORT_ERROR = 60


def _dead_letter_row(letter: DeadLetter) -> list[str]:
    return [
        letter.id,
        letter.group,
        letter.consumer,
        letter.original_id,
        f"{letter.dead_lettered_at:%Y-%m-%d %H:%M:%S}",
        str(letter.deliveries),
        str(letter.redrives),
        letter.event_type or "-",
        letter.job_id or "-",
        _first_line(letter.error, SHORT_ERROR),
    ]


def _earlier_failure(earlier: dict[str, Any]) -> str:
    return (
        f"{earlier['dead_lettered_at']} group {earlier['group']} consumer {earlier['consumer']} "
        f"after {earlier['deliveries']} deliveries: {_first_line(earlier['error'])} "
        f"(redriven {earlier['redriven_at']})"
    )


def _first_line(text: str, width: int | None = None) -> str:
    """The first line of `text`, cut to `width`; "..." says where something was left out."""
    line, _, rest = text.partition("\n")
    if width is not None and len(line) > width:
        return line[: width - 3] + "..."
    return f"{line} ..." if rest else line


def _print_table(header: tuple[str, ...], rows: list[list[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _counted(count: int, thing: str) -> str:
    return f"{count} {thing}{'' if count == 1 else 's'}"


async def status(settings: Settings, args: argparse.Namespace) -> int:
    async with _store(settings) as store:
        snapshot = await read_status(store, consumers=True)
    if args.json:
        print(json.dumps(status_document(snapshot, settings)))
    else:
        print("\n".join(status_lines(snapshot, settings)))
    return EXIT_FAILURE if needs_attention(snapshot, settings) else 0


async def reconcile(settings: Settings, args: argparse.Namespace) -> int:
    options = ReconcileOptions.from_settings(
        settings,
        interval_seconds=args.interval,
        grace_seconds=args.grace,
        deadline_seconds=args.deadline,
    )
    async with _store(settings) as store:
        vod = Vod.from_settings(settings, store.redis)
        if args.once:
            report = await reconcile_once(
                store,
                vod,
                grace_seconds=options.grace_seconds,
                deadline_seconds=options.deadline_seconds,
            )
            print(json.dumps(dataclasses.asdict(report)))
            return 0
        print(f"reconciling every {options.interval_seconds:g} s", file=sys.stderr, flush=True)
        await run_reconciler(
            store,
            vod,
            interval_seconds=options.interval_seconds,
            grace_seconds=options.grace_seconds,
            deadline_seconds=options.deadline_seconds,
        )
    return 0


async def register(settings: Settings, args: argparse.Namespace) -> int:
    http, mns = (args.callback_url, args.auth_key), (args.mns_endpoint, args.mns_queue)
    if any(http) and any(mns):
        return _fail("give --callback-url and --auth-key, or --mns-endpoint and --mns-queue: "
                     "VOD has one callback per region", EXIT_USAGE)  # fmt: skip
    if any(mns) and not all(mns):
        return _fail("give --mns-endpoint and --mns-queue together", EXIT_USAGE)
    if any(mns):
        return await _register_mns(settings, args)
    async with _store(settings) as store:
        vod = Vod.from_settings(settings, store.redis)
        if args.show:
            print(json.dumps(masked_message_callback(await vod.get_message_callback())))
            return 0
        if not all(http):
            return _fail(
                "give --callback-url and --auth-key, or --mns-endpoint and --mns-queue (or --show)",
                EXIT_USAGE,
            )
        key_refusal = auth_key_refusal(args.auth_key, allow_weak=settings.allow_weak_auth_keys)
        for option, problem in (
            ("--callback-url", callback_url_problem(args.callback_url)),
            ("--auth-key", key_refusal),
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


async def _register_mns(settings: Settings, args: argparse.Namespace) -> int:
    for option, problem in (
        ("--mns-endpoint", endpoint_problem(args.mns_endpoint)),
        ("--mns-queue", None if QUEUE_NAME.fullmatch(args.mns_queue) else "is not an MNS "
         f"queue name ({QUEUE_NAME_RULE})"),
    ):  # fmt: skip
        if problem:
            return _fail(f"{option} {problem}", EXIT_USAGE)
    async with _store(settings) as store:
        vod = Vod.from_settings(settings, store.redis)
        request_id = await vod.set_mns_callback(args.mns_endpoint, args.mns_queue, args.event_types)
    print(
        f"VOD now writes {', '.join(args.event_types)} into MNS queue {args.mns_queue} at "
        f"{args.mns_endpoint} (request id {request_id}). Set VOD_WEBHOOK_MNS_ENDPOINT="
        f"{args.mns_endpoint} and VOD_WEBHOOK_MNS_QUEUE={args.mns_queue}, then run "
        "`vod-webhook ingest-mns` (or `serve`, which ingests it too)."
    )
    return 0


async def ingest_mns(settings: Settings, args: argparse.Namespace) -> int:
    async with _store(settings) as store:
        ingest = ingest_from_settings(settings, store)
        try:
            await ingest.check()
            print(
                f"ingesting MNS queue {ingest.queue.name} at {ingest.queue.endpoint} into "
                f"{safe_url(redis_url_of(settings))}",
                file=sys.stderr,
                flush=True,
            )
            running = asyncio.create_task(ingest.run())

            def stop() -> None:  # the first signal lets the batch in hand finish; a second cuts it
                if ingest.stopping:
                    running.cancel()
                ingest.stop()

            for sig in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().add_signal_handler(sig, stop)
            with suppress(asyncio.CancelledError):
                await running
        finally:
            await ingest.queue.aclose()
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
            mns_queues=tuple(args.queue),
            mns_queue=args.mns_queue,
            mns_endpoint=f"http://{args.host}:{args.port}",
        )
    except ValueError as exc:
        return _fail(f"emulator: {exc}", EXIT_USAGE)
    configure_logging(load_settings())
    serve_emulator(options, host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vod-webhook",
        description="Receive ApsaraVideo VOD callbacks and fan them out over Redis; submit "
        "dynamic-image jobs and recover their outcomes. Configuration comes from VOD_WEBHOOK_* "
        "environment variables or .env (see the README).",
    )
    parser.set_defaults(run=None, run_async=None)  # each command sets one of them
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_serve, _add_listen, _add_replay, _add_send_test, _add_submit, _add_jobs,
                _add_status, _add_deadletter, _add_reconcile, _add_ingest_mns, _add_register,
                _add_emulator):  # fmt: skip
        add(commands)
    return parser


def _add_serve(commands: _Commands) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the callback receiver",
        description="Run the callback receiver under uvicorn. Without VOD_WEBHOOK_REDIS_URL it "
        "runs on an embedded in-memory store (development only). With "
        "VOD_WEBHOOK_RECONCILE=true it also reconciles overdue jobs.",
    )
    parser.set_defaults(run=serve)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=_port, default=8000, help="port to bind (default %(default)s)"
    )
    parser.add_argument(
        "--workers", type=_positive_int, default=1, help="worker processes (default %(default)s)"
    )


def _add_listen(commands: _Commands) -> None:
    parser = commands.add_parser(
        "listen",
        help="print envelopes as JSON lines as they are published",
        description="Print each envelope as one JSON line, from the receiver's Redis (or its "
        "embedded store). Without --group it follows a pub/sub channel, live only. With "
        "--group it consumes the stream durably: stopped and restarted, it prints what it "
        "missed, and nothing it printed and acknowledged before.",
    )
    parser.set_defaults(run_async=listen)
    parser.add_argument(
        "--channel",
        help="pub/sub channel to follow (default every event: {prefix}:events, or on Redis "
        "Cluster each partition's {prefix-N}:events shard channel); e.g. "
        "vod:events:DynamicImageComplete or vod:jobs:JOB_ID",
    )
    parser.add_argument("--group", help="consume durably as this consumer group")
    parser.add_argument(
        "--consumer",
        default=socket.gethostname(),
        help="this consumer's name in the group; keep it across restarts (default the host "
        "name, %(default)s)",
    )
    parser.add_argument(
        "--from",
        dest="start",
        choices=["beginning", "now"],
        default="now",
        help="where a new group starts: the oldest retained envelope, or now (default); an "
        "existing group carries on where it stopped",
    )


def _add_replay(commands: _Commands) -> None:
    parser = commands.add_parser(
        "replay",
        help="print envelopes from the stream's history",
        description="Print the envelopes still in the stream as JSON lines, oldest first.",
    )
    parser.set_defaults(run_async=replay)
    parser.add_argument(
        "--since",
        default="0",
        help="a stream id (print what came after it) or an ISO 8601 time; default all history",
    )
    parser.add_argument("--job", help="only this job's envelopes")
    parser.add_argument("--type", dest="event_type", help="only this event type")


def _add_send_test(commands: _Commands) -> None:
    parser = commands.add_parser(
        "send-test",
        help="send a signed sample callback to a receiver and report its answer",
        description="POST a correctly signed sample DynamicImageComplete (or --file) to a "
        "deployed receiver, as VOD would, and print what it answered. Exits 0 on HTTP 200.",
    )
    parser.set_defaults(run=send_test)
    parser.add_argument("--url", required=True, help="the receiver's callback URL")
    parser.add_argument(
        "--key", required=True, help="the AuthKey to sign with, as set in VOD and AUTH_KEYS"
    )
    parser.add_argument(
        "--file", type=Path, help="send this event body as it is instead of the sample"
    )
    parser.add_argument(
        "--callback-url",
        help="URL to sign, when the URL registered in VOD differs from --url (e.g. behind a "
        "proxy); default --url",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait (default %(default)s)"
    )


def _add_submit(commands: _Commands) -> None:
    parser = commands.add_parser(
        "submit",
        help="submit dynamic-image jobs through the VOD API",
        description="Submit a job with SubmitDynamicImageJob (official SDK, credentials from the "
        "Alibaba Cloud default chain), within VOD_WEBHOOK_SUBMIT_QPS across every process "
        "sharing the Redis, and record it so its callback is correlated. Prints the JobId.",
        epilog="exit codes: 0 submitted (with --wait: succeeded), 1 refused by VOD or the job "
        "failed / timed out, 2 bad input or configuration, 3 --wait ran out of time",
    )
    parser.set_defaults(run_async=submit)
    parser.add_argument("--video-id", help="the video to make the image from")
    parser.add_argument("--template-id", help="the dynamic-image template")
    parser.add_argument(
        "--override-params", help="OverrideParams as a JSON object, or @FILE holding one"
    )
    parser.add_argument(
        "--tag", action="append", default=[], metavar="K=V", help="a tag kept with the job"
    )
    parser.add_argument(
        "--from-file",
        type=Path,
        metavar="JOBS.jsonl",
        help='submit every line {"video_id", "template_id", "override_params"?, "tags"?}; '
        "lines already submitted by an earlier run are skipped",
    )
    parser.add_argument(
        "--wait", action="store_true", help="wait for the outcome and print its envelope"
    )
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds --wait waits (default %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def _add_jobs(commands: _Commands) -> None:
    parser = commands.add_parser("jobs", help="show recorded jobs")
    jobs_commands = parser.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    show = jobs_commands.add_parser(
        "show", help="one job: status, submission, result, source, timings"
    )
    show.set_defaults(run_async=jobs_show)
    show.add_argument("job_id", metavar="JOB_ID")
    show.add_argument("--json", action="store_true", help="print JSON")
    pending = jobs_commands.add_parser("pending", help="submitted jobs still without an outcome")
    pending.set_defaults(run_async=jobs_pending)
    pending.add_argument("--json", action="store_true", help="print JSON")


def _add_deadletter(commands: _Commands) -> None:
    parser = commands.add_parser(
        "deadletter",
        help="list, show, redrive and purge what consumer groups gave up on",
        description="A consumer group (consume, listen --group) gives an entry up when its "
        "handler failed max_deliveries times, or at once when it is no envelope: the entry "
        "goes to the dead-letter stream (vod:deadletter, under VOD_WEBHOOK_KEY_PREFIX) with the "
        "error, until redriven or purged. On Redis Cluster every partition has its own: these "
        "commands cover them all, and an id names its partition (<id>@<n>) when there are "
        "several.",
    )
    letters = parser.add_subparsers(dest="deadletter_command", required=True, metavar="COMMAND")
    listing = letters.add_parser(
        "list",
        help="every dead letter, oldest first",
        description="Each dead letter: its id, group and consumer, its id in the stream, when it "
        "was given up on, how many deliveries failed, how often it was redriven, the event type "
        "and job of its envelope, and the error (its first line; in full with --json).",
    )
    listing.set_defaults(run_async=deadletter_list)
    listing.add_argument("--group", help="only this consumer group's")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    show = letters.add_parser(
        "show",
        help="one dead letter in full",
        description="One dead letter in full: the list's fields, the error, each earlier time it "
        "was given up on and redriven, and its envelope.",
    )
    show.set_defaults(run_async=deadletter_show)
    show.add_argument("id", metavar="ID", type=_dead_letter_id, help="the dead letter's id")
    show.add_argument("--json", action="store_true", help="print JSON")
    redrive = letters.add_parser(
        "redrive",
        usage="%(prog)s [-h] (ID [ID ...] | --all) [--group GROUP]",
        help="hand dead letters to their group's consumers again, once",
        description="Hand each dead letter's envelope back to the consumers of the group that "
        "gave it up (no other group gets it again) and delete it from the dead-letter stream, "
        "in one step: redriven twice, at once or again after a crash, it goes back once. If "
        "it fails again it is dead-lettered again, with this time in its history. Given ids, "
        "all or none: an unknown id is reported and nothing is redriven (with several "
        "partitions, every id is checked first, then each partition is redriven in a step of "
        "its own).",
    )
    redrive.set_defaults(run_async=deadletter_redrive)
    _add_dead_letter_selection(redrive, "redrive")
    purge = letters.add_parser(
        "purge",
        usage="%(prog)s [-h] (ID [ID ...] | --all) [--group GROUP]",
        help="delete dead letters",
        description="Delete dead letters for good. Given ids, all or none: an unknown id is "
        "reported and nothing is deleted.",
    )
    purge.set_defaults(run_async=deadletter_purge)
    _add_dead_letter_selection(purge, "purge")


def _add_dead_letter_selection(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument(
        "ids", nargs="*", metavar="ID", type=_dead_letter_id, help=f"a dead letter to {verb}"
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help=f"{verb} every dead letter there is when it starts (not those arriving meanwhile) "
        "and say how many",
    )
    parser.add_argument(
        "--group",
        help="only this consumer group's dead letters (an id of another group's is unknown)",
    )


def _add_status(commands: _Commands) -> None:
    parser = commands.add_parser(
        "status",
        help="show the state in Redis; exit 1 when something needs attention",
        description="Show the stream (length, oldest entry), each consumer group (lag, pending, "
        "consumers and their idle time), dead letters, pending jobs and the oldest's age, "
        "outcomes held for verification, the VOD quotas' use, submissions by outcome and the "
        "last reconciliation pass, from the configured Redis (or the embedded store).",
        epilog="exit codes: 0 nothing needs attention; 1 something does (dead-lettered "
        "entries, a job pending past VOD_WEBHOOK_RECONCILE_DEADLINE_SECONDS, no reconciliation "
        "pass for 3 intervals where one is expected: this Redis has seen one, or "
        "VOD_WEBHOOK_RECONCILE is set), each said under 'needs attention', or Redis is "
        "unavailable (said on stderr); 2 bad configuration",
    )
    parser.set_defaults(run_async=status)
    parser.add_argument("--json", action="store_true", help="print JSON (shape in the README)")


def _add_reconcile(commands: _Commands) -> None:
    parser = commands.add_parser(
        "reconcile",
        help="recover outcomes whose callback never came",
        description="Look up jobs pending longer than the grace time with ListDynamicImage and "
        "record what is found (source 'reconcile'); jobs still absent after the deadline get "
        "a terminal 'timed_out' envelope.",
    )
    parser.set_defaults(run_async=reconcile)
    parser.add_argument("--once", action="store_true", help="one pass, then print a report")
    parser.add_argument(
        "--interval", type=float, help="seconds between passes (default RECONCILE_INTERVAL)"
    )
    parser.add_argument(
        "--grace", type=float, help="seconds before a job counts as overdue (default "
        "RECONCILE_GRACE)",
    )  # fmt: skip
    parser.add_argument(
        "--deadline", type=float, help="seconds before an absent job times out (default "
        "RECONCILE_DEADLINE)",
    )  # fmt: skip


def _add_ingest_mns(commands: _Commands) -> None:
    parser = commands.add_parser(
        "ingest-mns",
        help="take VOD's events from an MNS queue (VOD_WEBHOOK_MNS_ENDPOINT, _MNS_QUEUE)",
        description="Long-poll the MNS queue VOD writes its events into (callback type MNS) and "
        "record each event as the receiver records a callback (source 'mns'), deleting a "
        "message only once it is recorded; run as many as you like. Configured by "
        "VOD_WEBHOOK_MNS_* (see the README); AccessKey from the Alibaba Cloud default "
        "credential chain. Runs until SIGINT or SIGTERM.",
    )
    parser.set_defaults(run_async=ingest_mns)


def _add_register(commands: _Commands) -> None:
    parser = commands.add_parser(
        "register",
        help="configure VOD's callback (SetMessageCallback): HTTP or MNS",
        description="Point VOD's callbacks at the receiver, with signing on (--callback-url "
        "and --auth-key), or at an MNS queue (--mns-endpoint and --mns-queue), through the API.",
    )
    parser.set_defaults(run_async=register)
    parser.add_argument("--callback-url", help="the receiver's public callback URL")
    parser.add_argument(
        "--auth-key",
        help="AuthKey: 16 to 32 random letters and digits, mixed case (shorter only with "
        "VOD_WEBHOOK_ALLOW_WEAK_AUTH_KEYS=true)",
    )
    parser.add_argument(
        "--event-types",
        nargs="+",
        default=VOD_EVENT_TYPES,
        metavar="TYPE",
        help="event types to send (default %(default)s; ALL for every type)",
    )
    parser.add_argument(
        "--mns-endpoint",
        help="MNS endpoint VOD writes into instead: https://<account-id>.mns.<region>.aliyuncs.com",
    )
    parser.add_argument("--mns-queue", help="name of the MNS queue (it must exist)")
    parser.add_argument(
        "--show", action="store_true", help="print the current configuration instead"
    )


def _add_emulator(commands: _Commands) -> None:
    parser = commands.add_parser(
        "emulator",
        help="run a local VOD stand-in for development and tests",
        description="A local stand-in for VOD that the official SDK talks to unchanged "
        "(VOD_WEBHOOK_VOD_ENDPOINT=http://127.0.0.1:PORT): it verifies ACS3-HMAC-SHA256 "
        "signatures, runs dynamic-image jobs and delivers signed callbacks like VOD. It is also "
        "an MNS for its queues, on the same port (MNS endpoint http://127.0.0.1:PORT): VOD "
        "writes events into them when the MessageCallback is CallbackType MNS.",
    )
    parser.set_defaults(run=run_emulator)
    parser.add_argument("--host", default="127.0.0.1", help="address (default %(default)s)")
    parser.add_argument("--port", type=_port, default=9000, help="port (default %(default)s)")
    parser.add_argument(
        "--access-key",
        action="append",
        required=True,
        metavar="ID:SECRET",
        help="an AccessKey pair it accepts, at VOD's API and MNS's (repeatable)",
    )
    parser.add_argument("--callback-url", help="where it POSTs DynamicImageComplete")
    parser.add_argument(
        "--mns-queue",
        metavar="NAME",
        help="instead of --callback-url: write DynamicImageComplete into this MNS queue of its "
        "own (created; the MessageCallback starts as CallbackType MNS)",
    )
    parser.add_argument(
        "--queue",
        action="append",
        default=[],
        metavar="NAME",
        help="an MNS queue that exists from the start, with MNS's default attributes (repeatable)",
    )
    parser.add_argument(
        "--auth-key",
        help="AuthKey signing its callbacks; like VOD it takes at most 32 letters and digits, "
        "mixed case, and the receiver wants at least 16 (e.g. DemoAuthKey2026xyz)",
    )
    parser.add_argument("--delay", type=float, default=1.0, help="job run time, s")
    parser.add_argument("--drop-rate", type=_rate, default=0.0, help="callbacks never sent")
    parser.add_argument("--duplicate-rate", type=_rate, default=0.0, help="callbacks sent twice")
    parser.add_argument("--fail-rate", type=_rate, default=0.0, help="jobs that fail")
    parser.add_argument(
        "--qps", type=float, default=30.0, help="SubmitDynamicImageJob calls/s per AccessKey"
    )
    parser.add_argument(
        "--list-qps", type=float, default=100.0, help="ListDynamicImage calls/s per AccessKey"
    )
    parser.add_argument(
        "--callback-qps",
        type=float,
        default=15.0,
        help="Set/GetMessageCallback calls/s per AccessKey",
    )
    parser.add_argument("--seed", type=int, help="seed for the fault knobs")


@asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[Store]:
    store = Store.from_settings(settings)
    try:
        yield store
    finally:
        await store.close()


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"vod-webhook: {message}", file=sys.stderr)
    return code


def _redis_unavailable(settings: Settings, error: Exception) -> str:
    where = safe_url(redis_url_of(settings))
    return f"Redis at {where} is unavailable: {error}{_embedded_hint(settings)}"


def _embedded_hint(settings: Settings | None) -> str:
    if settings is None or settings.redis_url:
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


def _dead_letter_id(text: str) -> str:
    try:
        return dead_letter_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


if __name__ == "__main__":
    sys.exit(main())
