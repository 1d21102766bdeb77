"""Enrichment: the lookups channels declare (``[channels.<c>.enrich.<name>]``), answered in
batches and cached, and kept no staler than the stream.

For each batch the source hands on (whole transactions when channels declare lookups: see
``PostgresSourceConfig.transaction_part``), before it is routed:

1. every change to a looked-up table drops the cached entries of the rows it touched (a
   TRUNCATE drops the table's), in stream order;
2. the keys the batch's rows need that are not cached are fetched, one query per looked-up
   table and key (``LookupStore.fetch``), and cached (a missing row is cached as missing);
3. the router then takes each row's looked-up values from what ``prepare`` found for the
   batch (``values``), whatever the cache kept of it.

A query reads the database as it is now, which is at or past every change in the batch, so an
event never carries a looked-up row older than a change to that row the stream delivered before
the event. A deleted looked-up row is dropped from the cache like an updated one: later events
carry ``null``; events already sent are not changed. The cache (``LookupCache``: in process, or
shared in Redis, gateway/enrich_redis.py) is bounded by entries and by age (``ttl_s``), for rows
changed where the stream does not see them. A shared cache that fails is passed by: the rows
come from the database, the failure is counted (``EnrichStats.cache_errors``) and logged once,
and the cache is reset before it is trusted again (so no drop it missed can be served).

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
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from gateway.changes import Change, ChangeId, Item, Op, Row
from gateway.channels import Channel, ChannelSet, CustomEnricher, Lookup
from gateway.errors import ConfigError, RtgwError

Key = tuple[Any, ...]
EnricherFunction = Callable[[Change, Any], Awaitable[Any]]
CONCURRENCY = 64  # custom enricher calls running at once
CACHE_RETRY_S = 1.0  # after a shared cache failed, the database answers alone this long
log = logging.getLogger("rtgw.enrich")
_UNMADE: Any = object()


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


class Target(NamedTuple):
    """What one query answers: a looked-up table and its key columns (a tuple: it is hashed
    for every row)."""

    schema: str
    table: str
    key_columns: tuple[str, ...]


Entry = tuple[Target, Key]  # one looked-up row
# What the stream showed changed, with the position of the change: one row, or (key None)
# every row of the table (a TRUNCATE).
Changed = Mapping[tuple[Target, Key | None], int]


class CacheUnavailable(RtgwError):
    """A shared cache could not answer (its server is down or slow)."""


class LookupCache(Protocol):
    """Looked-up rows kept between batches: ``MemoryCache`` (one process) or ``RedisCache``
    (gateway/enrich_redis.py, shared by every node reading the same database).

    Positions are the stream's (``ChangeId.position``). One reader (one node's ``prepare``)
    calls, for each batch: ``drop`` (the batch's changes), ``get``, then ``put`` of what the
    database gave for the rest. The contract, for any number of readers sharing the cache:
    a row read from the database before a change the cache was told of (``drop``, ``reset``)
    is never returned afterwards, however the calls of several readers interleave. Any method
    of a shared cache may raise ``CacheUnavailable``: the caller then asks the database, and
    calls ``reset`` before it trusts the cache again."""

    @property
    def entries(self) -> int:
        """Rows cached (last known, for a shared cache)."""

    def started(self, stream: str) -> None:
        """What follows is in position space ``stream`` (``Keeper.started``): rows kept for
        another stream are not returned."""

    async def drop(self, changed: Changed) -> int:
        """Forget the rows the stream showed changed (see ``Changed``); returns how many
        cached rows were dropped."""

    async def get(
        self, wanted: Collection[Entry], columns: Mapping[Target, tuple[str, ...]]
    ) -> dict[Entry, Row | None]:
        """The cached rows among ``wanted`` that carry ``columns`` (None: no such row);
        entries not cached, too old or read before a change dropped are absent."""

    async def put(self, found: Mapping[Entry, Row | None], position: int) -> None:
        """Keep rows just read from the database by a reader whose stream reached
        ``position`` (the read reflects every change up to it), unless ``drop`` or ``reset``
        was told of a later change to them meanwhile."""

    async def reset(self, position: int) -> None:
        """Forget every row read before ``position`` (after a gap in the stream, or a failure
        during which drops may have been lost)."""

    async def close(self) -> None:
        """Release connections."""


class MemoryCache:
    """A ``LookupCache`` in this process: at most ``max_entries`` rows (oldest first out), each
    trusted for ``ttl_s``. One reader, so positions are not needed."""

    def __init__(
        self, max_entries: int = 100_000, ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_entries, self._ttl_s, self._clock = max_entries, ttl_s, clock
        self._rows: dict[Entry, tuple[float, Row | None]] = {}
        self._stream = ""

    @property
    def entries(self) -> int:
        return len(self._rows)

    def started(self, stream: str) -> None:
        if stream != self._stream:  # a failover or a restore (the first stream: nothing kept)
            self._rows.clear()
            self._stream = stream

    async def drop(self, changed: Changed) -> int:
        tables = {target for target, key in changed if key is None}
        stale = [entry for entry in self._rows if entry[0] in tables]
        stale += [(target, key) for target, key in changed if key is not None]
        return sum(self._rows.pop(entry, None) is not None for entry in stale)

    async def get(
        self, wanted: Collection[Entry], columns: Mapping[Target, tuple[str, ...]]
    ) -> dict[Entry, Row | None]:
        now, found = self._clock(), {}
        for entry in wanted:
            kept = self._rows.get(entry)
            if kept is not None and now - kept[0] < self._ttl_s and (
                kept[1] is None or all(c in kept[1] for c in columns[entry[0]])
            ):
                found[entry] = kept[1]
        return found

    async def put(self, found: Mapping[Entry, Row | None], position: int) -> None:
        rows, stamp = self._rows, self._clock()
        for entry, row in found.items():
            rows.pop(entry, None)
            rows[entry] = (stamp, row)
        while len(rows) > self._max_entries:
            del rows[next(iter(rows))]  # the oldest entry

    async def reset(self, position: int) -> None:
        self._rows.clear()

    async def close(self) -> None:
        return None


@dataclass(slots=True)
class EnrichStats:
    queries: int = 0  # lookup queries made
    hits: int = 0  # keys answered from the cache (once per batch that needs them)
    misses: int = 0  # keys fetched
    invalidated: int = 0  # cache entries dropped because the stream changed their row
    failures: int = 0  # custom enricher calls that raised or timed out
    dropped: int = 0  # events held back because an enricher failed (on_error = "drop")
    cache_errors: int = 0  # shared cache calls that failed (the database answered)


@dataclass(frozen=True, slots=True)
class Enriched:
    """What enrichment adds to one change of one channel: objects for ``new`` and ``old`` (by
    lookup name), and the custom enrichers that failed."""

    new: dict[str, Any] = field(default_factory=dict)
    old: dict[str, Any] = field(default_factory=dict)
    failed: tuple[str, ...] = ()


class Enrichment:
    """The batching for every lookup of ``channels``, over ``cache``."""

    def __init__(
        self,
        channels: ChannelSet,
        store: LookupStore,
        cache: LookupCache | None = None,
        pool: Any = None,
    ) -> None:
        self._channels = channels
        self._store = store
        self._cache: LookupCache = cache if cache is not None else MemoryCache()
        self._pool = pool  # handed to custom enrichers (a read-only connection pool)
        self._functions = {
            enricher.path: load_enricher(enricher.path)
            for channel in channels for enricher in channel.enrichers
        }
        self._custom: dict[tuple[ChangeId, str, str], tuple[bool, Any]] = {}
        self._batch: dict[Entry, Row | None] = {}  # what ``values`` reads
        # Each lookup of each channel with its target and its objects made for the batch.
        self._plans: dict[str, list[tuple[Lookup, Target, dict[Key, Row | None]]]] = {
            channel.name: [(lookup, _target(lookup), {}) for lookup in channel.lookups]
            for channel in channels
        }
        self._by_table = {
            table: [(lookup, _target(lookup)) for lookup in lookups]
            for table, lookups in channels.lookups_by_table.items()
        }
        self._columns: dict[Target, tuple[str, ...]] = {}
        for lookup, target in (pair for pairs in self._by_table.values() for pair in pairs):
            wanted = self._columns.get(target, ())
            self._columns[target] = (*wanted, *(c for c in lookup.columns if c not in wanted))
        # Tables whose changes ``prepare`` has work for: looked up, or read by a channel that
        # looks up or calls an enricher.
        self._tables = set(self._by_table) | {
            (channel.schema, channel.table) for channel in channels
            if channel.lookups or channel.enrichers
        }
        self._reset_due = False  # the cache must forget what it holds before it is trusted
        self._cache_down_until = 0.0  # a failed shared cache is passed by until then
        self._cache_failing = False
        self.stats = EnrichStats()

    def __len__(self) -> int:
        return self._cache.entries

    async def close(self) -> None:
        await self._store.close()
        await self._cache.close()
        if self._pool is not None:
            await self._pool.close()

    def started(self, stream: str) -> None:
        """The source streams position space ``stream`` (``Keeper.started``)."""
        self._cache.started(stream)

    def forget(self) -> None:
        """The stream lost changes (a gap): nothing cached is trusted from the next batch."""
        self._reset_due = True

    async def prepare(self, items: Sequence[Item]) -> None:
        """Invalidate what the batch changed, then fetch what its rows need (see the module).
        A batch of no table with lookups or enrichers (notifications, say) is passed by."""
        tables = self._tables
        changes = [item for item in items if isinstance(item, Change)
                   and (item.schema, item.table) in tables]
        if not changes:
            self._batch, self._custom = {}, {}
            return
        changed: dict[tuple[Target, Key | None], int] = {}
        wanted: set[Entry] = set()
        by_table, plans = self._by_table, self._plans
        for change in changes:
            table = (change.schema, change.table)
            for lookup, target in by_table.get(table, ()):
                position = change.id.position
                if change.op is Op.TRUNCATE:
                    changed[(target, None)] = position
                for key in (lookup.key_in_table(change.new), lookup.key_in_table(change.old)):
                    if key is not None:
                        changed[(target, key)] = position
            for channel in self._channels.by_table.get(table, ()):
                for lookup, target, _ in plans[channel.name]:
                    for row in (change.new, change.old):
                        key = None if row is None else lookup.key_of(row)
                        if key is not None:
                            wanted.add((target, key))
        position = items[-1].id.position if items else 0
        batch = await self._cached(changed, wanted, position) if changed or wanted else {}
        self.stats.hits += len(batch)
        missing: dict[Target, list[Key]] = {}
        for target, key in wanted:
            if (target, key) not in batch:
                missing.setdefault(target, []).append(key)
        fetched: dict[Entry, Row | None] = {}
        for target, keys in missing.items():
            found = await self._store.fetch(
                target.schema, target.table, target.key_columns, self._columns[target], keys
            )
            self.stats.queries += 1
            self.stats.misses += len(keys)
            fetched.update(((target, key), found.get(key)) for key in keys)
        if fetched:
            await self._keep(fetched, position)
        self._batch = {**batch, **fetched}
        for plan in plans.values():
            for _, _, objects in plan:
                objects.clear()
        await self._run_custom(changes)

    async def _cached(
        self, changed: Changed, wanted: Collection[Entry], position: int
    ) -> dict[Entry, Row | None]:
        """Tell the cache what the batch changed, then take what it holds of ``wanted``; when it
        fails, nothing (the database answers) and it is reset before it is trusted again."""
        if time.monotonic() < self._cache_down_until:
            self._reset_due = True  # this batch's drops do not reach it
            return {}
        cache = self._cache
        try:
            if self._reset_due:
                await cache.reset(position)
                self._reset_due = False
            if changed:
                self.stats.invalidated += await cache.drop(changed)
            found = await cache.get(wanted, self._columns) if wanted else {}
        except CacheUnavailable as exc:
            self._cache_failed(exc)
            return {}
        if self._cache_failing:
            self._cache_failing = False
            log.info("the lookup cache answers again")
        return found

    async def _keep(self, fetched: Mapping[Entry, Row | None], position: int) -> None:
        if time.monotonic() < self._cache_down_until or self._reset_due:
            return
        try:
            await self._cache.put(fetched, position)
        except CacheUnavailable as exc:
            self._cache_failed(exc)

    def _cache_failed(self, exc: CacheUnavailable) -> None:
        """Count and log (once per outage) a failure; pass the cache by for ``CACHE_RETRY_S``
        and reset it before it is trusted again (drops may have been lost)."""
        self.stats.cache_errors += 1
        if not self._cache_failing:
            log.warning("the lookup cache failed (%s): lookups go to the database until it "
                        "answers again", exc)
        self._cache_failing = self._reset_due = True
        self._cache_down_until = time.monotonic() + CACHE_RETRY_S

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
        for lookup, target, objects in self._plans[channel.name]:
            key = lookup.key_of(row)
            if key is None:
                if all(mine in row for mine, _ in lookup.key):
                    found[lookup.name] = None
                continue
            made = objects.get(key, _UNMADE)
            if made is _UNMADE:  # once per key and batch: events share the object
                looked_up = self._batch.get((target, key))
                made = None if looked_up is None else {c: looked_up.get(c) for c in lookup.columns}
                objects[key] = made
            found[lookup.name] = made
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


def _target(lookup: Lookup) -> Target:
    return Target(lookup.schema, lookup.table, tuple(theirs for _, theirs in lookup.key))


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
