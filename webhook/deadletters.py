"""Dead letters: what consumer groups gave up on, kept in `{prefix}:deadletter` until redriven
or purged. A redrive appends the entry to `{prefix}:redrive:{group}`, which only that group's
consumers read (see `webhook.client.consume`), so no other group sees it again. Light: redis
only; `webhook.client` offers the same names."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, cast

from redis.commands.core import AsyncScript

from webhook.connection import RedisClient
from webhook.events import utc_text
from webhook.keys import DEFAULT_PREFIX, Keys
from webhook.streams import StreamEntries, stream_fields

DEAD_LETTER_ID = re.compile(r"(\d{1,20})-(\d{1,20})")
# What `consume` adds to the entry it dead-letters; the rest are the entry's own (its envelope).
_LETTER_FIELDS = frozenset(
    {"original_id", "group", "consumer", "deliveries", "error", "redrives", "history"}
)


def dead_letter_id(text: str) -> str:
    """`text` if it is a complete stream id (such as 1732476000000-0); ValueError if not (a
    partial id would stand for a range)."""
    parts = DEAD_LETTER_ID.fullmatch(text)
    if parts is None or any(int(part) >= 2**64 for part in parts.groups()):
        raise ValueError(f"not a dead-letter id (such as 1732476000000-0): {text!r}")
    return text


class UnknownDeadLetters(LookupError):
    """Ids that are not (or no longer) in the dead-letter stream, or not of the group asked for."""

    def __init__(self, ids: list[str], group: str | None, action: str | None = None) -> None:
        self.ids = ids
        of_group = f" of group {group}" if group is not None else ""
        unchanged = f"; nothing was {action}" if action else ""
        super().__init__(f"no dead letter {', '.join(ids)}{of_group}{unchanged}")


@dataclass(frozen=True)
class DeadLetter:
    """An entry a consumer group gave up on, as the dead-letter stream holds it."""

    id: str
    """Its id in the dead-letter stream (which says when it got there)."""
    original_id: str
    """Its id in `{prefix}:stream`."""
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
        return cls(
            id=letter_id,
            original_id=fields.get("original_id", ""),
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
            "original_id": self.original_id,
            "redrives": str(self.redrives + 1),
            "history": json.dumps([*self.history, earlier]),
        }


async def dead_letters(
    redis: RedisClient, *, group: str | None = None, prefix: str = DEFAULT_PREFIX
) -> AsyncIterator[DeadLetter]:
    """The dead letters, oldest first (only `group`'s, if given)."""
    async for letter_id, fields in stream_fields(redis, Keys(prefix).dead_letter):
        letter = DeadLetter.from_fields(letter_id, fields)
        if group is None or letter.group == group:
            yield letter


async def dead_letter(
    redis: RedisClient, letter_id: str, *, prefix: str = DEFAULT_PREFIX
) -> DeadLetter:
    """One dead letter; UnknownDeadLetters if there is none of this id."""
    [letter] = await _dead_letters_of(redis, Keys(prefix), [letter_id], None)
    return letter


async def redrive_dead_letters(
    redis: RedisClient,
    ids: Iterable[str],
    *,
    group: str | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> int:
    """Put each dead letter's entry back for the consumers of the group that gave up on it (of
    no other group), and delete it from the dead-letter stream, in one step: however many
    redrives of it run, at once or again after a crash, it goes back once. If it fails again it
    is dead-lettered again with this time in its history. All or none: when an id is not a dead
    letter (of `group`, if given) UnknownDeadLetters says which, and nothing is changed.
    Returns how many were redriven."""
    keys = Keys(prefix)
    letters = await _dead_letters_of(redis, keys, ids, group, "redriven")
    gone = await _redrive(redis, keys, letters)
    if gone:  # redriven or purged by someone else since they were read
        raise UnknownDeadLetters(gone, group, "redriven")
    return len(letters)


async def redrive_all_dead_letters(
    redis: RedisClient, *, group: str | None = None, prefix: str = DEFAULT_PREFIX, page: int = 100
) -> int:
    """Redrive (as `redrive_dead_letters`) every dead letter there is now (of `group`, if
    given), not those arriving meanwhile; any another redrive or purge takes first is left to
    it. Returns how many this call redrove."""
    keys = Keys(prefix)
    redriven = 0
    async for letters in _present_dead_letters(redis, keys, group, page):
        while letters and (gone := await _redrive(redis, keys, letters)):
            letters = [letter for letter in letters if letter.id not in gone]
        redriven += len(letters)
    return redriven


async def purge_dead_letters(
    redis: RedisClient,
    ids: Iterable[str],
    *,
    group: str | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> int:
    """Delete these dead letters. All or none: when an id is not a dead letter (of `group`, if
    given) UnknownDeadLetters says which, and nothing is deleted. Returns how many were."""
    keys = Keys(prefix)
    letters = await _dead_letters_of(redis, keys, ids, group, "purged")
    if not letters:
        return 0
    gone = await _script(redis, "purge_dead_letters")(
        keys=[keys.dead_letter], args=[letter.id for letter in letters]
    )
    if gone:  # redriven or purged by someone else since they were read
        raise UnknownDeadLetters(gone, group, "purged")
    return len(letters)


async def purge_all_dead_letters(
    redis: RedisClient, *, group: str | None = None, prefix: str = DEFAULT_PREFIX, page: int = 500
) -> int:
    """Delete every dead letter there is now (of `group`, if given), not those arriving
    meanwhile. Returns how many this call deleted."""
    keys = Keys(prefix)
    purged = 0
    async for letters in _present_dead_letters(redis, keys, group, page):
        purged += await redis.xdel(keys.dead_letter, *(letter.id for letter in letters))
    return purged


async def _dead_letters_of(
    redis: RedisClient, keys: Keys, ids: Iterable[str], group: str | None, action: str | None = None
) -> list[DeadLetter]:
    """The dead letters of these ids, each once; UnknownDeadLetters if any is not one (of
    `group`, if given)."""
    wanted = list(dict.fromkeys(dead_letter_id(letter_id) for letter_id in ids))
    async with redis.pipeline(transaction=False) as pipe:
        for letter_id in wanted:
            pipe.xrange(keys.dead_letter, letter_id, letter_id)
        replies: list[StreamEntries] = await pipe.execute()
    found = {
        letter_id: DeadLetter.from_fields(*entries[0])
        for letter_id, entries in zip(wanted, replies, strict=True)
        if entries and (group is None or entries[0][1].get("group") == group)
    }
    unknown = [letter_id for letter_id in wanted if letter_id not in found]
    if unknown:
        raise UnknownDeadLetters(unknown, group, action)
    return list(found.values())


async def _present_dead_letters(
    redis: RedisClient, keys: Keys, group: str | None, page: int
) -> AsyncIterator[list[DeadLetter]]:
    """The dead letters (of `group`, if given) in the stream now, a page at a time: not those
    that arrive while they are read."""
    last = cast(StreamEntries, await redis.xrevrange(keys.dead_letter, count=1))
    if not last:
        return
    letters: list[DeadLetter] = []
    async for letter_id, fields in stream_fields(redis, keys.dead_letter, until=last[0][0]):
        letter = DeadLetter.from_fields(letter_id, fields)
        if group is None or letter.group == group:
            letters.append(letter)
        if len(letters) == page:
            yield letters
            letters = []
    if letters:
        yield letters


async def _redrive(redis: RedisClient, keys: Keys, letters: list[DeadLetter]) -> list[str]:
    """Move `letters` to their groups' redrive streams, all in one step, unless some are gone
    from the dead-letter stream: then those, and nothing was moved."""
    now = datetime.now(UTC)
    args: list[str | int] = []
    for letter in letters:
        entry = letter.redriven_entry(now)
        args += [letter.id, 2 * len(entry), *(item for pair in entry.items() for item in pair)]
    gone: list[str] = await _script(redis, "redrive_dead_letters")(
        keys=[keys.dead_letter, *(keys.redrive(letter.group) for letter in letters)], args=args
    )
    return gone


@functools.cache
def _script_source(name: str) -> str:
    return (resources.files("webhook") / "scripts" / f"{name}.lua").read_text()


def _script(redis: RedisClient, name: str) -> AsyncScript:
    return redis.register_script(_script_source(name))
