"""Enrichment: the lookups channels declare (``[channels.<c>.enrich.<name>]``), answered in
batches and cached, and kept no staler than the stream.

For each batch the source hands on, before it is routed:

1. every change to a looked-up table drops the cached entries of the rows it touched (a
   TRUNCATE drops the table's), in stream order;
2. the keys the batch's rows need that are not cached are fetched, one query per looked-up
   table and key (``LookupStore.fetch``), and cached (a missing row is cached as missing);
3. the router then takes each row's looked-up values from what ``prepare`` found for the
   batch (``values``), whatever the cache kept of it.

A query reads the database as it is now, which is at or past every change in the batch, so an
event never carries a looked-up row older than a change to that row the stream delivered before
the event. A deleted looked-up row is dropped from the cache like an updated one: later events
carry ``null``; events already sent are not changed. The cache is bounded by entries (oldest
first out) and by age (``ttl_s``), for rows changed where the stream does not see them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.changes import Change, Item, Op, Row
from gateway.channels import Channel, ChannelSet, Lookup

Key = tuple[Any, ...]
_MISSING = object()


class LookupStore(Protocol):
    """Where looked-up rows come from (gateway/sources/postgres/lookups.py)."""

    async def fetch(
        self, schema: str, table: str, key_columns: tuple[str, ...], columns: tuple[str, ...],
        keys: Collection[Key],
    ) -> dict[Key, Row]:
        """The rows of ``schema.table`` whose ``key_columns`` equal each of ``keys``, with
        ``columns`` (values typed as the stream types them); a key with no row is absent."""

    async def close(self) -> None:
        """Release connections."""


@dataclass(slots=True)
class EnrichStats:
    queries: int = 0  # lookup queries made
    hits: int = 0  # keys answered from the cache
    misses: int = 0  # keys fetched
    invalidated: int = 0  # cache entries dropped because the stream changed their row


@dataclass(frozen=True, slots=True)
class _Target:
    """What one query answers: a looked-up table, its key columns, and every column wanted of
    it by any lookup."""

    schema: str
    table: str
    key_columns: tuple[str, ...]


class Enrichment:
    """The cache and the batching for every lookup of ``channels``."""

    def __init__(
        self,
        channels: ChannelSet,
        store: LookupStore,
        max_entries: int = 100_000,
        ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._channels = channels
        self._store = store
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[tuple[_Target, Key], tuple[float, Row | None]] = {}
        self._batch: dict[tuple[_Target, Key], Row | None] = {}  # what ``values`` reads
        self._columns: dict[_Target, tuple[str, ...]] = {}
        for lookup in (lk for lookups in channels.lookups_by_table.values() for lk in lookups):
            target = _target(lookup)
            wanted = self._columns.get(target, ())
            self._columns[target] = (*wanted, *(c for c in lookup.columns if c not in wanted))
        self.stats = EnrichStats()

    def __len__(self) -> int:
        return len(self._cache)

    async def close(self) -> None:
        await self._store.close()

    async def prepare(self, items: Sequence[Item]) -> None:
        """Invalidate what the batch changed, then fetch what its rows need (see the module)."""
        by_table = self._channels.lookups_by_table
        changes = [item for item in items if isinstance(item, Change)]
        for change in changes:  # first, so that no row of the batch reads a dropped entry
            lookups = by_table.get((change.schema, change.table))
            if lookups:
                self._invalidate(change, lookups)
        wanted: dict[_Target, set[Key]] = {}
        batch: dict[tuple[_Target, Key], Row | None] = {}
        now = self._clock()
        for change in changes:
            for channel in self._channels.by_table.get((change.schema, change.table), ()):
                for lookup in channel.lookups:
                    for row in (change.new, change.old):
                        key = lookup.key_of(row)
                        if key is None:
                            continue
                        target = _target(lookup)
                        entry = self._cache.get((target, key))
                        if entry is not None and now - entry[0] < self._ttl_s:
                            self.stats.hits += 1
                            batch[(target, key)] = entry[1]
                        else:
                            wanted.setdefault(target, set()).add(key)
        for target, keys in wanted.items():
            found = await self._store.fetch(
                target.schema, target.table, target.key_columns, self._columns[target], keys
            )
            self.stats.queries += 1
            self.stats.misses += len(keys)
            stamp = self._clock()
            for key in keys:
                row = found.get(key)
                batch[(target, key)] = row
                self._put(target, key, row, stamp)
        self._batch = batch

    def values(self, channel: Channel, row: Row) -> dict[str, Row | None]:
        """The looked-up objects for ``row`` of ``channel`` (after ``prepare``): each lookup's
        columns, or None where no row matches. A lookup whose key columns the row does not
        carry (an old row with only its primary key) is left out."""
        found: dict[str, Row | None] = {}
        for lookup in channel.lookups:
            if any(mine not in row for mine, _ in lookup.key):
                continue
            key = lookup.key_of(row)
            looked_up = None if key is None else self._batch.get((_target(lookup), key))
            found[lookup.name] = (
                None if looked_up is None else {c: looked_up.get(c) for c in lookup.columns}
            )
        return found

    def _put(self, target: _Target, key: Key, row: Row | None, stamp: float) -> None:
        cache = self._cache
        cache.pop((target, key), None)
        cache[(target, key)] = (stamp, row)
        while len(cache) > self._max_entries:
            del cache[next(iter(cache))]  # the oldest entry

    def _invalidate(self, change: Change, lookups: Collection[Lookup]) -> None:
        for lookup in lookups:
            target = _target(lookup)
            if change.op is Op.TRUNCATE:
                stale = [entry for entry in self._cache if entry[0] == target]
            else:
                keys = {lookup.key_in_table(change.new), lookup.key_in_table(change.old)}
                stale = [(target, key) for key in keys if key is not None]
            for entry in stale:
                if self._cache.pop(entry, _MISSING) is not _MISSING:
                    self.stats.invalidated += 1


def _target(lookup: Lookup) -> _Target:
    return _Target(lookup.schema, lookup.table, tuple(theirs for _, theirs in lookup.key))
