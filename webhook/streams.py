"""Reading Redis streams: replies as entries, and every entry after a point a page at a time
(light: redis only)."""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator
from typing import Any, TypeVar, cast

from webhook.connection import RedisClient
from webhook.keys import entry_order

StreamEntries = list[tuple[str, dict[str, str]]]
Read = TypeVar("Read", bound=tuple[str, Any])
"""What a read of one stream yields: the entry's id first."""


def read_entries(reply: Any) -> StreamEntries:
    """The entries of an XREAD / XREADGROUP reply (redis-py leaves these untyped)."""
    return [entry for _, entries in reply or [] for entry in entries]


async def stream_entries(
    redis: RedisClient, stream: str, after: str, page: int = 500
) -> AsyncIterator[tuple[str, str | None]]:
    """(id, envelope JSON or None if the entry has none) of the entries after `after`, oldest
    first, read a page at a time."""
    async for entry_id, fields in stream_fields(redis, stream, after, page=page):
        yield entry_id, fields.get("envelope")


async def stream_fields(
    redis: RedisClient, stream: str, after: str = "0", until: str = "+", *, page: int = 500
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """(id, fields) of the entries after `after` up to `until` included, oldest first, read a
    page at a time."""
    while True:
        entries = cast(StreamEntries, await redis.xrange(stream, f"({after}", until, count=page))
        for entry in entries:
            yield entry
        if len(entries) < page:
            return
        after = entries[-1][0]


async def merged(reads: list[AsyncIterator[Read]]) -> AsyncIterator[Read]:
    """The entries of several streams' reads (each oldest first), merged oldest first by id."""
    heads: list[tuple[tuple[int, ...], int, Read]] = []
    for number, read in enumerate(reads):
        if (entry := await anext(read, None)) is not None:
            heapq.heappush(heads, (entry_order(entry[0]), number, entry))
    while heads:
        _, number, entry = heapq.heappop(heads)
        yield entry
        if (entry := await anext(reads[number], None)) is not None:
            heapq.heappush(heads, (entry_order(entry[0]), number, entry))
