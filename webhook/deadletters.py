"""Dead letters: what consumer groups gave up on, kept in `{prefix}:deadletter` until redriven
or purged. A redrive appends the entry to `{prefix}:redrive:{group}`, which only that group's
consumers read (see `webhook.client.consume`), so no other group sees it again. On Redis
Cluster each partition has its own of both (a consumer dead-letters into its partition's, and
a redrive goes back to the same partition's): these functions cover every partition, and name a
dead letter `<id>@<partition>` when there are several (see `Layout.qualify`). Light: redis only;
`webhook.client` offers the same names."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, cast

from redis.commands.core import AsyncScript

from webhook.connection import RedisClient, layout_of
from webhook.events import utc_text
from webhook.keys import DEFAULT_PREFIX, Keys, Layout
from webhook.streams import StreamEntries, merged, stream_fields

DEAD_LETTER_ID = re.compile(r"(\d{1,20})-(\d{1,20})(?:@\d{1,5})?")
# What `consume` adds to the entry it dead-letters; the rest are the entry's own (its envelope).
_LETTER_FIELDS = frozenset(
    {"original_id", "group", "consumer", "deliveries", "error", "redrives", "history"}
)


MNS_GROUP = "mns"
"""The `group` of an MNS message that ingest gave up on (webhook.ingest; its `consumer` is the
queue): no consumer group had it, so it is not redriven, only shown and purged."""


class NotRedrivable(ValueError):
    """Dead letters of MNS messages: there is no group to hand them back to."""


def dead_letter_id(text: str) -> str:
    """`text` if it is a complete stream id (such as 1732476000000-0), with a partition or not
    (1732476000000-0@2); ValueError if not (a partial id would stand for a range)."""
    parts = DEAD_LETTER_ID.fullmatch(text)
    if parts is None or any(int(part) >= 2**64 for part in parts.groups()):
        raise ValueError(f"not a dead-letter id (such as 1732476000000-0): {text!r}")
    return text


class UnknownDeadLetters(LookupError):
    """Ids that are not (or no longer) in the dead-letter stream, or not of the group asked for;
    `done`: how many dead letters of other partitions were changed before they were found gone
    (see `redrive_dead_letters`)."""

    def __init__(
        self,
        ids: list[str],
        group: str | None,
        action: str | None = None,
        *,
        done: int = 0,
        hint: str = "",
    ) -> None:
        self.ids = ids
        self.done = done
        of_group = f" of group {group}" if group is not None else ""
        unchanged = f"; nothing was {action}" if action else ""
        if action and done:
            were = "was" if done == 1 else "were"
            unchanged = f"; {done} of other partitions {were} {action} before, nothing of theirs"
        hinted = f" ({hint})" if hint else ""
        super().__init__(f"no dead letter {', '.join(ids)}{of_group}{unchanged}{hinted}")


@dataclass(frozen=True)
class DeadLetter:
    """An entry a consumer group gave up on, as the dead-letter stream holds it."""

    id: str
    """Its id in the dead-letter stream (which says when it got there), `<id>@<partition>` when
    there are several partitions."""
    original_id: str
    """Its id in its partition's `{prefix}:stream` (with the partition, as `id`)."""
    group: str
    consumer: str
    deliveries: int
    """How many times the handler was given it before it was given up on (1: no envelope)."""
    error: str
    """The last error, `Type: message`."""
    redrives: int
    history: list[dict[str, Any]]
    """Each earlier time it was dead-lettered, then redriven, oldest first: dead_letter_id,
    dead_lettered_at, group, consumer, deliveries, error, redriven_at."""
    entry: dict[str, str]
    """The stream entry's own fields: `envelope` (JSON), or whatever a foreign entry held."""

    @classmethod
    def from_fields(cls, letter_id: str, fields: dict[str, str]) -> DeadLetter:
        """The dead letter of id `letter_id` (qualified with its partition when there are
        several, as its original id then is too: as the envelope's own id reads)."""
        original_id = fields.get("original_id", "")
        _, at, partition = letter_id.partition("@")
        return cls(
            id=letter_id,
            original_id=f"{original_id}{at}{partition}" if original_id else "",
            group=fields.get("group", ""),
            consumer=fields.get("consumer", ""),
            deliveries=int(fields.get("deliveries", 0)),
            error=fields.get("error", ""),
            redrives=int(fields.get("redrives", 0)),
            history=json.loads(fields.get("history", "[]")),
            entry={name: value for name, value in fields.items() if name not in _LETTER_FIELDS},
        )

    @property
    def dead_lettered_at(self) -> datetime:
        return datetime.fromtimestamp(int(self.id.partition("-")[0]) / 1000, UTC)

    @property
    def envelope(self) -> dict[str, Any] | str | None:
        """The envelope as a JSON object; as stored if it is not one; None if there is none."""
        stored = self.entry.get("envelope")
        try:
            parsed = json.loads(stored) if stored is not None else None
        except ValueError:
            return stored
        return parsed if isinstance(parsed, dict) else stored

    @property
    def event_type(self) -> str | None:
        return self._envelope_field("event_type")

    @property
    def job_id(self) -> str | None:
        return self._envelope_field("job_id")

    def _envelope_field(self, name: str) -> str | None:
        envelope = self.envelope
        return envelope.get(name) if isinstance(envelope, dict) else None

    def summary(self) -> dict[str, Any]:
        """What to know at a glance: where, when, how often, why, and what it is."""
        return {
            "id": self.id,
            "group": self.group,
            "consumer": self.consumer,
            "original_id": self.original_id,
            "dead_lettered_at": utc_text(self.dead_lettered_at),
            "deliveries": self.deliveries,
            "redrives": self.redrives,
            "event_type": self.event_type,
            "job_id": self.job_id,
            "error": self.error,
        }

    def details(self) -> dict[str, Any]:
        """Everything: the summary, the history, the envelope and any other field."""
        others = {name: value for name, value in self.entry.items() if name != "envelope"}
        return {
            **self.summary(),
            "history": self.history,
            "envelope": self.envelope,
            "other_fields": others,
        }

    def redriven_entry(self, at: datetime) -> dict[str, str]:
        """The entry a redrive puts back: as it was, with this time added to its history."""
        earlier = {
            "dead_letter_id": self.id,
            "dead_lettered_at": utc_text(self.dead_lettered_at),
            "group": self.group,
            "consumer": self.consumer,
            "deliveries": self.deliveries,
            "error": self.error,
            "redriven_at": utc_text(at),
        }
        return {
            **self.entry,
            "original_id": self.original_id.partition("@")[0],  # as the stream has it
            "redrives": str(self.redrives + 1),
            "history": json.dumps([*self.history, earlier]),
        }


async def dead_letters(
    redis: RedisClient,
    *,
    group: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    partitions: int | None = None,
) -> AsyncIterator[DeadLetter]:
    """The dead letters of every partition, oldest first (only `group`'s, if given).
    `partitions` as for `webhook.client.consume` (None: as the deployment recorded)."""
    layout = await layout_of(redis, prefix, partitions)
    reads = [_letters_in(redis, layout, keys) for keys in layout.keys]
    async for _, letter in merged(reads):
        if group is None or letter.group == group:
            yield letter


async def dead_letter(
    redis: RedisClient,
    letter_id: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    partitions: int | None = None,
) -> DeadLetter:
    """One dead letter; UnknownDeadLetters if there is none of this id."""
    layout = await layout_of(redis, prefix, partitions)
    [letter] = await _dead_letters_of(redis, layout, [letter_id], None)
    return letter


async def redrive_dead_letters(
    redis: RedisClient,
    ids: Iterable[str],
    *,
    group: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    partitions: int | None = None,
) -> int:
    """Put each dead letter's entry back for the consumers of the group that gave up on it (of
    no other group), in its own partition, and delete it from the dead-letter stream, in one
    step: however many redrives of it run, at once or again after a crash, it goes back once.
    If it fails again it is dead-lettered again with this time in its history.

    All or none: when an id is not a dead letter (of `group`, if given) UnknownDeadLetters says
    which, and nothing is changed. With several partitions (Redis Cluster) no step spans two
    of them: every id is checked first, then each partition's dead letters are moved in a step
    of their own. So a redrive or purge of the same ids by someone else between the check and
    the last partition's step can leave earlier partitions redriven: UnknownDeadLetters then
    says how many were (`done`). Returns how many were redriven."""
    layout = await layout_of(redis, prefix, partitions)
    letters = await _dead_letters_of(redis, layout, ids, group, "redriven")
    if ingested := [letter.id for letter in letters if letter.group == MNS_GROUP]:
        raise NotRedrivable(
            f"{', '.join(ingested)}: an MNS message, which no consumer group had; nothing was "
            "redriven (`deadletter show` has its body: send that to the queue again, then purge)"
        )
    return await _in_each_partition(
        layout, letters, group, "redriven", functools.partial(_redrive, redis)
    )


async def redrive_all_dead_letters(
    redis: RedisClient,
    *,
    group: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    partitions: int | None = None,
    page: int = 100,
) -> int:
    """Redrive (as `redrive_dead_letters`) every dead letter there is now in every partition
    (of `group`, if given) but MNS messages', not those arriving meanwhile; any another
    redrive or purge takes first is left to it. Returns how many this call redrove."""
    if group == MNS_GROUP:
        raise NotRedrivable("dead letters of MNS messages go back to no consumer group")
    layout = await layout_of(redis, prefix, partitions)
    redriven = 0
    for keys in layout.keys:
        async for page_letters in _present_dead_letters(redis, layout, keys, group, page):
            letters = [letter for letter in page_letters if letter.group != MNS_GROUP]
            while letters and (gone := await _redrive(redis, keys, letters)):
                letters = [letter for letter in letters if _entry_id(letter) not in gone]
            redriven += len(letters)
    return redriven


async def purge_dead_letters(
    redis: RedisClient,
    ids: Iterable[str],
    *,
    group: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    partitions: int | None = None,
) -> int:
    """Delete these dead letters. All or none: when an id is not a dead letter (of `group`, if
    given) UnknownDeadLetters says which, and nothing is deleted; across partitions, as for
    `redrive_dead_letters`. Returns how many were."""
    layout = await layout_of(redis, prefix, partitions)
    letters = await _dead_letters_of(redis, layout, ids, group, "purged")
    return await _in_each_partition(
        layout, letters, group, "purged", functools.partial(_purge, redis)
    )


async def purge_all_dead_letters(
    redis: RedisClient,
    *,
    group: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    partitions: int | None = None,
    page: int = 500,
) -> int:
    """Delete every dead letter there is now in every partition (of `group`, if given), not
    those arriving meanwhile. Returns how many this call deleted."""
    layout = await layout_of(redis, prefix, partitions)
    purged = 0
    for keys in layout.keys:
        async for letters in _present_dead_letters(redis, layout, keys, group, page):
            purged += await redis.xdel(keys.dead_letter, *map(_entry_id, letters))
    return purged


# A script's step on one partition's dead letters: the ids (in that partition's stream) it
# found gone, having changed nothing; or none.
_Step = Callable[[Keys, list[DeadLetter]], Awaitable[list[str]]]


async def _in_each_partition(
    layout: Layout, letters: list[DeadLetter], group: str | None, action: str, step: _Step
) -> int:
    """Run `step` on each partition's `letters` in turn, stopping at one that found some gone
    (since they were read) with UnknownDeadLetters. Returns how many letters it was run on."""
    done = 0
    for keys in layout.keys:
        mine = [letter for letter in letters if layout.split(letter.id)[0] is keys]
        if not mine:
            continue
        gone = await step(keys, mine)
        if gone:  # redriven or purged by someone else since they were read
            ids = [layout.qualify(keys, entry_id) for entry_id in gone]
            raise UnknownDeadLetters(ids, group, action, done=done)
        done += len(mine)
    return done


async def _letters_in(
    redis: RedisClient, layout: Layout, keys: Keys
) -> AsyncIterator[tuple[str, DeadLetter]]:
    """(entry id, dead letter) of one partition's dead letters, oldest first."""
    async for entry_id, fields in stream_fields(redis, keys.dead_letter):
        yield entry_id, DeadLetter.from_fields(layout.qualify(keys, entry_id), fields)


async def _dead_letters_of(
    redis: RedisClient,
    layout: Layout,
    ids: Iterable[str],
    group: str | None,
    action: str | None = None,
) -> list[DeadLetter]:
    """The dead letters of these ids, each once, in any partition; UnknownDeadLetters if any is
    not one (of `group`, if given), or names no partition there is."""
    wanted: dict[str, tuple[Keys, str]] = {}
    unplaced: list[str] = []
    for letter_id in map(dead_letter_id, ids):
        try:
            keys, entry_id = layout.split(letter_id)
        except ValueError:
            unplaced.append(letter_id)
            continue
        wanted.setdefault(layout.qualify(keys, entry_id), (keys, entry_id))
    async with redis.pipeline(transaction=False) as pipe:
        for keys, entry_id in wanted.values():
            pipe.xrange(keys.dead_letter, entry_id, entry_id)
        replies: list[StreamEntries] = await pipe.execute() if wanted else []
    found = {
        letter_id: DeadLetter.from_fields(letter_id, entries[0][1])
        for letter_id, entries in zip(wanted, replies, strict=True)
        if entries and (group is None or entries[0][1].get("group") == group)
    }
    unknown = list(dict.fromkeys(unplaced)) + [i for i in wanted if i not in found]
    if unknown:
        hint = _partitions_hint(layout) if unplaced else ""
        raise UnknownDeadLetters(unknown, group, action, hint=hint)
    return list(found.values())


def _partitions_hint(layout: Layout) -> str:
    if layout.partitions == 1:
        return ""
    return f"ids name their partition, as in <id>@<n>, n from 0 to {layout.partitions - 1}"


async def _present_dead_letters(
    redis: RedisClient, layout: Layout, keys: Keys, group: str | None, page: int
) -> AsyncIterator[list[DeadLetter]]:
    """The dead letters (of `group`, if given) in a partition's stream now, a page at a time:
    not those that arrive while they are read."""
    last = cast(StreamEntries, await redis.xrevrange(keys.dead_letter, count=1))
    if not last:
        return
    letters: list[DeadLetter] = []
    async for entry_id, fields in stream_fields(redis, keys.dead_letter, until=last[0][0]):
        letter = DeadLetter.from_fields(layout.qualify(keys, entry_id), fields)
        if group is None or letter.group == group:
            letters.append(letter)
        if len(letters) == page:
            yield letters
            letters = []
    if letters:
        yield letters


def _entry_id(letter: DeadLetter) -> str:
    """A dead letter's id in its partition's dead-letter stream."""
    return letter.id.partition("@")[0]


async def _redrive(redis: RedisClient, keys: Keys, letters: list[DeadLetter]) -> list[str]:
    """Move one partition's `letters` to their groups' redrive streams in that partition, all
    in one step, unless some are gone from its dead-letter stream: then those, and nothing was
    moved."""
    now = datetime.now(UTC)
    args: list[str | int] = []
    for letter in letters:
        entry = letter.redriven_entry(now)
        args += [_entry_id(letter), 2 * len(entry), *(i for pair in entry.items() for i in pair)]
    streams = [keys.redrive(letter.group) for letter in letters]
    gone: list[str] = await _script(redis, "redrive_dead_letters")(
        keys=[keys.dead_letter, *streams], args=args
    )
    return gone


async def _purge(redis: RedisClient, keys: Keys, letters: list[DeadLetter]) -> list[str]:
    """Delete one partition's `letters`, unless some are gone already: then those, and nothing
    was deleted."""
    gone: list[str] = await _script(redis, "purge_dead_letters")(
        keys=[keys.dead_letter], args=[_entry_id(letter) for letter in letters]
    )
    return gone


@functools.cache
def _script_source(name: str) -> str:
    return (resources.files("webhook") / "scripts" / f"{name}.lua").read_text()


def _script(redis: RedisClient, name: str) -> AsyncScript:
    return redis.register_script(_script_source(name))
