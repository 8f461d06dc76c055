"""`vod-webhook deadletter`, run as real subprocesses, on entries a real `consume` gave up on."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
from redis.asyncio import Redis

from tests.conftest import eventually, stream_entries, wait_for
from tests.processes import Process, env_for, listening, run
from tests.test_client import job_event
from webhook.client import ConsumerOptions, consume
from webhook.events import Envelope
from webhook.store import Store

FAST = ConsumerOptions(
    start="beginning", claim_idle_seconds=0.1, max_deliveries=3, block_seconds=0.1
)
# Long enough that the table shows it cut.
TROUBLE = "cannot handle it: " + " ".join(["the thumbnail service answered 502"] * 3)


def record(url: str, *job_ids: str) -> None:
    async def record_all() -> None:
        client = Redis.from_url(url, decode_responses=True)
        store = Store(client, prefix="vod", stream_maxlen=1000, dedup_ttl_seconds=3600)
        try:
            for job_id in job_ids:
                await store.record(job_event(job_id))
        finally:
            await store.close()  # and its client

    asyncio.run(record_all())


def consume_until(
    url: str, group: str, *, failing: frozenset[str] = frozenset(), handled: int = 0, dead: int = 0
) -> list[str | None]:
    """Run a consumer "worker-1" of `group`, its handler failing the jobs in `failing`, until it
    has handled `handled` envelopes and the group has `dead` dead letters: the jobs handled."""
    seen: list[str | None] = []

    async def handle(envelope: Envelope) -> None:
        if envelope.job_id in failing:
            raise RuntimeError(TROUBLE)
        seen.append(envelope.job_id)

    async def run_consumer() -> None:
        async with Redis.from_url(url, decode_responses=True) as client:
            stop = asyncio.Event()

            async def done() -> bool:
                letters = await stream_entries(client, "vod:deadletter")
                given_up = sum(fields["group"] == group for _, fields in letters)
                return len(seen) >= handled and given_up >= dead

            async def stop_when_done() -> None:
                await eventually(done, 10, f"{handled} handled and {dead} dead letters")
                stop.set()

            await asyncio.gather(
                consume(client, group, "worker-1", handle, options=FAST, stop=stop),
                stop_when_done(),
            )

    asyncio.run(run_consumer())
    return seen


def listed(url: str) -> list[dict[str, object]]:
    result = run("deadletter", "list", "--json", env=env_for(redis_url=url))
    assert result.returncode == 0, result.stderr
    letters: list[dict[str, object]] = json.loads(result.stdout)
    return letters


def test_list_and_show_what_a_consumer_gave_up_on(redis_url: str) -> None:
    record(redis_url, "good", "poison")
    consume_until(redis_url, "g", failing=frozenset({"poison"}), handled=1, dead=1)
    env = env_for(redis_url=redis_url)

    [letter] = listed(redis_url)
    assert letter["error"] == f"RuntimeError: {TROUBLE}"
    assert (letter["group"], letter["consumer"], letter["job_id"]) == ("g", "worker-1", "poison")
    assert (letter["deliveries"], letter["redrives"]) == (3, 0)
    assert letter["event_type"] == "DynamicImageComplete"

    table = run("deadletter", "list", env=env)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split("  ")[0] == "ID"
    assert "DEAD-LETTERED (UTC)" in header
    for shown in (
        letter["id"],
        letter["original_id"],
        "worker-1",
        "poison",
        "DynamicImageComplete",
    ):
        assert f"{shown}  " in row
    assert row.endswith("...")
    assert "RuntimeError: cannot handle it: the thumbnail service" in row
    assert len(row.split("RuntimeError")[1]) < len(TROUBLE)
    assert table.stderr.strip() == "1 dead letter"

    other = run("deadletter", "list", "--group", "other", env=env)
    assert (other.returncode, other.stdout, other.stderr.strip()) == (0, "", "0 dead letters")

    shown = run("deadletter", "show", str(letter["id"]), "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    details = json.loads(shown.stdout)
    assert {k: details[k] for k in letter} == letter
    assert details["envelope"]["job_id"] == "poison"
    assert details["envelope"]["id"] == letter["original_id"]
    assert details["history"] == []

    human = run("deadletter", "show", str(letter["id"]), env=env)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert f"original_id       {letter['original_id']}" in lines
    assert f"error             RuntimeError: {TROUBLE}" in lines
    envelope = "\n".join(lines[lines.index("envelope") + 1 :])
    assert json.loads(envelope)["job_id"] == "poison"


def test_a_redriven_dead_letter_reaches_its_groups_consumer_once_and_no_other_group(
    redis_url: str,
) -> None:
    record(redis_url, "poison")
    assert consume_until(redis_url, "h", handled=1) == ["poison"]
    consume_until(redis_url, "g", failing=frozenset({"poison"}), dead=1)
    [letter] = listed(redis_url)
    env = env_for(redis_url=redis_url)

    redriven = run("deadletter", "redrive", str(letter["id"]), env=env)
    assert (redriven.returncode, redriven.stdout) == (0, "redrove 1 dead letter\n"), redriven
    again = run("deadletter", "redrive", str(letter["id"]), env=env)
    assert again.returncode == 1
    assert again.stderr == f"vod-webhook: no dead letter {letter['id']}; nothing was redriven\n"
    assert listed(redis_url) == []

    with (
        listening("--group", "g", redis_url=redis_url) as g,
        listening("--group", "h", redis_url=redis_url) as h,
    ):
        wait_for(lambda: len(g.stdout) == 1, 10, "the redriven envelope")
        # Something after it reaches both groups: anything delivered again would come first.
        record(redis_url, "after")
        wait_for(lambda: len(g.stdout) == 2 and len(h.stdout) == 1, 10, "the next envelope")
    assert [json.loads(line)["job_id"] for line in g.stdout] == ["poison", "after"]
    assert [json.loads(line)["job_id"] for line in h.stdout] == ["after"]
    assert json.loads(g.stdout[0])["id"] == letter["original_id"]


def test_a_redriven_entry_that_fails_again_is_back_with_its_history(redis_url: str) -> None:
    record(redis_url, "poison")
    consume_until(redis_url, "g", failing=frozenset({"poison"}), dead=1)
    [first] = listed(redis_url)
    env = env_for(redis_url=redis_url)
    assert run("deadletter", "redrive", "--all", env=env).stdout == "redrove 1 dead letter\n"
    consume_until(redis_url, "g", failing=frozenset({"poison"}), dead=1)

    [second] = listed(redis_url)
    assert (second["original_id"], second["redrives"]) == (first["original_id"], 1)
    details = json.loads(run("deadletter", "show", str(second["id"]), "--json", env=env).stdout)
    [earlier] = details["history"]
    assert earlier["dead_letter_id"] == first["id"]
    assert earlier["dead_lettered_at"] == first["dead_lettered_at"]
    assert (earlier["deliveries"], earlier["error"]) == (3, first["error"])
    human = run("deadletter", "show", str(second["id"]), env=env).stdout
    assert f"history           {first['dead_lettered_at']} group g consumer worker-1 " in human
    assert f"(redriven {earlier['redriven_at']})" in human


def test_two_redrives_of_one_dead_letter_at_once_deliver_it_once(
    redis_url: str, redis_sync: redis.Redis
) -> None:
    record(redis_url, "poison")
    consume_until(redis_url, "g", failing=frozenset({"poison"}), dead=1)
    [letter] = listed(redis_url)
    env = env_for(redis_url=redis_url)
    redrives = [Process(["deadletter", "redrive", str(letter["id"])], env) for _ in range(2)]
    codes = sorted(process.popen.wait(30) for process in redrives)
    for process in redrives:
        process.stop()  # joins its output readers
    assert codes == [0, 1]
    assert redis_sync.xlen("vod:redrive:g") == 1
    record(redis_url, "after")
    assert set(consume_until(redis_url, "g", handled=2)) == {"after", "poison"}
    assert redis_sync.xlen("vod:redrive:g") == 0  # nothing left to deliver again


def test_purge_by_id_and_all(redis_url: str) -> None:
    record(redis_url, "j1", "j2", "j3")
    consume_until(redis_url, "g", failing=frozenset({"j1", "j2", "j3"}), dead=3)
    first, *rest = (str(letter["id"]) for letter in listed(redis_url))
    env = env_for(redis_url=redis_url)

    assert run("deadletter", "purge", first, env=env).stdout == "purged 1 dead letter\n"
    unknown = run("deadletter", "purge", rest[0], "1-0", first, env=env)
    assert unknown.returncode == 1
    assert unknown.stderr == f"vod-webhook: no dead letter 1-0, {first}; nothing was purged\n"
    assert [letter["id"] for letter in listed(redis_url)] == rest
    not_of_group = run("deadletter", "redrive", rest[0], "--group", "h", env=env)
    assert not_of_group.returncode == 1
    assert f"no dead letter {rest[0]} of group h; nothing was redriven" in not_of_group.stderr

    everything = run("deadletter", "purge", "--all", env=env)
    assert (everything.returncode, everything.stdout) == (0, "purged 2 dead letters\n")
    assert listed(redis_url) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["redrive", "--all", "1-0"], "vod-webhook: give dead-letter ids or --all, not both"),
        (["purge"], "vod-webhook: give dead-letter ids, or --all"),
        (["redrive", "1732476000000"], "not a dead-letter id (such as 1732476000000-0)"),
        (["show", "last"], "not a dead-letter id (such as 1732476000000-0): 'last'"),
    ],
)
def test_what_to_act_on_is_ids_or_all(args: list[str], message: str) -> None:
    result = run("deadletter", *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_unknown_dead_letter_shown_is_an_error(redis_url: str) -> None:
    result = run("deadletter", "show", "1-0", env=env_for(redis_url=redis_url))
    assert (result.returncode, result.stderr) == (1, "vod-webhook: no dead letter 1-0\n")


def test_redrive_explains_itself() -> None:
    result = run("deadletter", "redrive", "--help")
    assert result.returncode == 0
    assert "usage: vod-webhook deadletter redrive [-h] (ID [ID ...] | --all) [--group GROUP]" in (
        result.stdout
    )
    assert "it goes back once" in " ".join(result.stdout.split())
