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

Custom enrichers (``enricher = "module:function"``) run for each change of their channel, all
of a batch's at once (at most ``CONCURRENCY`` at a time), each for at most its ``timeout_ms``,
given the change and a read-only connection pool. One that raises or times out never stops the
stream: its value is ``null`` and the event is marked (``Enriched.failed``), or held back when
the channel says ``on_error = "drop"``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.changes import Change, ChangeId, Item, Op, Row
from gateway.channels import Channel, ChannelSet, CustomEnricher, Lookup
from gateway.errors import ConfigError

Key = tuple[Any, ...]
EnricherFunction = Callable[[Change, Any], Awaitable[Any]]
CONCURRENCY = 64  # custom enricher calls running at once
_MISSING = object()
log = logging.getLogger("rtgw.enrich")


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
    failures: int = 0  # custom enricher calls that raised or timed out
    dropped: int = 0  # events held back because an enricher failed (on_error = "drop")


@dataclass(frozen=True, slots=True)
class Enriched:
    """What enrichment adds to one change of one channel: objects for ``new`` and ``old`` (by
    lookup name), and the custom enrichers that failed."""

    new: dict[str, Any] = field(default_factory=dict)
    old: dict[str, Any] = field(default_factory=dict)
    failed: tuple[str, ...] = ()


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
        pool: Any = None,
    ) -> None:
        self._channels = channels
        self._store = store
        self._pool = pool  # handed to custom enrichers (a read-only connection pool)
        self._functions = {
            enricher.path: load_enricher(enricher.path)
            for channel in channels for enricher in channel.enrichers
        }
        self._custom: dict[tuple[ChangeId, str, str], tuple[bool, Any]] = {}
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
        if self._pool is not None:
            await self._pool.close()

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
        await self._run_custom(changes)

    def enrich(self, channel: Channel, change: Change) -> Enriched:
        """What ``prepare`` found for ``change`` on ``channel``: the lookups for its new and old
        rows, and each custom enricher's value (on the new row; on the old one for a
        DELETE)."""
        new = {} if change.new is None else self.values(channel, change.new)
        old = {} if change.old is None else self.values(channel, change.old)
        failed = []
        for enricher in channel.enrichers:
            done, value = self._custom.get((change.id, channel.name, enricher.name), (False, None))
            if not done:
                failed.append(enricher.name)
            (new if change.new is not None else old)[enricher.name] = value
        return Enriched(new, old, tuple(failed))

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

    async def _run_custom(self, changes: Sequence[Change]) -> None:
        calls = [
            (change, channel, enricher)
            for change in changes
            for channel in self._channels.by_table.get((change.schema, change.table), ())
            for enricher in channel.enrichers
            if change.op is not Op.TRUNCATE
        ]
        self._custom = {}
        if not calls:
            return
        limit = asyncio.Semaphore(CONCURRENCY)

        async def call(change: Change, channel: Channel, enricher: CustomEnricher) -> None:
            async with limit:
                function = self._functions[enricher.path]
                try:
                    async with asyncio.timeout(enricher.timeout_ms / 1000):
                        value = await function(change, self._pool)
                except Exception as exc:  # a user's function may raise anything
                    self.stats.failures += 1
                    log.warning("enricher %s failed on %s: %s", enricher.name, change.id,
                                type(exc).__name__ if isinstance(exc, TimeoutError) else exc)
                    return
                self._custom[(change.id, channel.name, enricher.name)] = (True, value)

        await asyncio.gather(*(call(*each) for each in calls))

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


def load_enricher(path: str) -> EnricherFunction:
    """The async function a dotted path (``module:function``) names; ``ConfigError`` if none."""
    module_name, _, name = path.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"enricher {path!r} cannot be loaded: {exc}") from None
    if not inspect.iscoroutinefunction(function):
        raise ConfigError(f"enricher {path!r} must be an async function (change, db)")
    loaded: EnricherFunction = function
    return loaded
