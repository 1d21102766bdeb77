"""gateway.enrich: lookups batched per batch of changes, cached, invalidated by the stream
(``prepare`` is driven without an event loop: the recording store never waits)."""

from __future__ import annotations

from collections.abc import Collection, Coroutine
from pathlib import Path
from typing import Any

import pytest

from gateway.changes import Change, ChangeId, Column, Op, Row
from gateway.channels import load_channels
from gateway.enrich import Enrichment, MemoryCache, load_enricher
from gateway.errors import ConfigError

CHANNELS = load_channels(Path(__file__).resolve().parents[2] / "channels")
ORDERS = CHANNELS.get("orders")
COLUMNS = (Column("id", "int8"), Column("customer_id", "int8"), Column("name", "text"))


class Store:
    """A LookupStore over a dict, recording every query."""

    def __init__(self, rows: dict[int, Row]) -> None:
        self.rows = rows
        self.queries: list[tuple[str, tuple[str, ...], set[tuple[Any, ...]]]] = []

    async def fetch(
        self, schema: str, table: str, key_columns: tuple[str, ...], columns: tuple[str, ...],
        keys: Collection[tuple[Any, ...]],
    ) -> dict[tuple[Any, ...], Row]:
        self.queries.append((f"{schema}.{table}", columns, set(keys)))
        return {key: self.rows[key[0]] for key in keys if key[0] in self.rows}

    async def close(self) -> None:
        return None


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    with pytest.raises(StopIteration):
        coroutine.send(None)  # completes at once: nothing waits


_ids = iter(range(1, 10**6))


def order(customer: int | None, op: Op = Op.INSERT, old: Row | None = None) -> Change:
    new = None if op is Op.DELETE else {"id": next(_ids), "customer_id": customer}
    return Change(ChangeId(1, next(_ids)), "public", "orders", op, 0, COLUMNS, new, old)


def renamed(customer: int, name: str, op: Op = Op.UPDATE) -> Change:
    row = {"id": customer, "name": name, "tier": "gold"}
    return Change(ChangeId(1, next(_ids)), "public", "customers", op, 0, COLUMNS,
                  None if op is Op.DELETE else row, row)


def enrichment(store: Store, **options: Any) -> Enrichment:
    return Enrichment(CHANNELS, store, MemoryCache(**options))


def test_one_query_per_table_for_a_batch_then_the_cache_answers() -> None:
    store = Store({1: {"id": 1, "name": "Ada", "tier": "gold"}, 2: {"id": 2, "name": "Bo",
                                                                   "tier": "basic"}})
    cache = enrichment(store)
    batch = [order(1), order(2), order(1), order(3)]
    run(cache.prepare(batch))
    assert store.queries == [("public.customers", ("name", "tier"), {(1,), (2,), (3,)})]
    assert cache.values(ORDERS, batch[0].new or {}) == {"customer": {"name": "Ada",
                                                                     "tier": "gold"}}
    assert cache.values(ORDERS, batch[3].new or {}) == {"customer": None}  # no such customer
    run(cache.prepare([order(2)]))
    assert len(store.queries) == 1 and cache.stats.hits == 1


def test_a_change_to_a_looked_up_row_drops_it_before_any_row_of_its_batch_reads_it() -> None:
    store = Store({1: {"id": 1, "name": "old", "tier": "gold"}})
    cache = enrichment(store)
    run(cache.prepare([order(1)]))
    store.rows[1] = {"id": 1, "name": "new", "tier": "gold"}
    # The order comes before the rename in the batch: it must not read the entry the rename
    # drops (it gets the row as the database has it now, which is not older than the stream).
    batch = [order(1), renamed(1, "new"), order(1)]
    run(cache.prepare(batch))
    assert cache.stats.invalidated == 1 and len(store.queries) == 2
    for change in (batch[0], batch[2]):
        assert cache.values(ORDERS, change.new or {})["customer"] == {"name": "new",
                                                                     "tier": "gold"}


def test_a_deleted_or_truncated_customer_is_fetched_again_and_is_null() -> None:
    store = Store({1: {"id": 1, "name": "a", "tier": "t"}, 2: {"id": 2, "name": "b",
                                                               "tier": "t"}})
    cache = enrichment(store)
    run(cache.prepare([order(1), order(2)]))
    del store.rows[1]
    deleted = order(None, Op.DELETE, old={"id": 9, "customer_id": 1})
    run(cache.prepare([renamed(1, "a", Op.DELETE), deleted]))
    assert cache.values(ORDERS, deleted.old or {}) == {"customer": None}
    truncate = Change(ChangeId(2, 0), "public", "customers", Op.TRUNCATE, 0, COLUMNS)
    run(cache.prepare([truncate]))
    assert len(cache) == 0


def test_a_row_without_the_key_column_gets_no_lookup() -> None:
    cache = enrichment(Store({}))
    assert cache.values(ORDERS, {"id": 5}) == {}  # an old row with only its primary key


def test_the_cache_is_bounded_by_entries_and_by_age() -> None:
    now = [0.0]
    store = Store({n: {"id": n, "name": str(n), "tier": "t"} for n in range(10)})
    cache = enrichment(store, max_entries=3, ttl_s=60, clock=lambda: now[0])
    batch = [order(n) for n in range(5)]
    run(cache.prepare(batch))
    assert len(cache) == 3
    assert all(cache.values(ORDERS, c.new or {})["customer"] is not None for c in batch)
    # Five more, one at a time, each fetched: the last three stay. (Which three of the first
    # batch stayed depends on the order of a set, so these are keys that batch did not have.)
    for n in range(5, 10):
        run(cache.prepare([order(n)]))
    queries = len(store.queries)
    run(cache.prepare([order(9)]))
    assert len(store.queries) == queries  # still cached
    run(cache.prepare([order(5)]))
    assert len(store.queries) == queries + 1  # pushed out
    now[0] = 61.0
    run(cache.prepare([order(9)]))
    assert len(store.queries) == queries + 2  # too old: fetched again


def test_an_enricher_that_cannot_be_loaded_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load_enricher("no_such_module_here:f")
    with pytest.raises(ConfigError, match="async function"):
        load_enricher("json:dumps")


def test_after_a_gap_or_on_a_new_stream_nothing_cached_is_trusted() -> None:
    store = Store({1: {"id": 1, "name": "old", "tier": "gold"}})
    cache = enrichment(store)
    cache.started("system/1")
    run(cache.prepare([order(1)]))
    store.rows[1] = {"id": 1, "name": "new", "tier": "gold"}  # changed where nobody saw it
    cache.forget()  # the stream lost changes
    batch = [order(1)]
    run(cache.prepare(batch))
    assert len(store.queries) == 2
    assert cache.values(ORDERS, batch[0].new or {})["customer"] == {"name": "new",
                                                                   "tier": "gold"}
    cache.started("system/2")  # a failover: another timeline
    run(cache.prepare([order(1)]))
    assert len(store.queries) == 3


def test_a_batch_of_tables_without_lookups_is_passed_by_and_a_reset_still_waits() -> None:
    store = Store({1: {"id": 1, "name": "old", "tier": "gold"}})
    cache = enrichment(store)
    run(cache.prepare([order(1)]))
    store.rows[1] = {"id": 1, "name": "new", "tier": "gold"}
    cache.forget()  # the stream lost changes
    notification = Change(ChangeId(1, next(_ids)), "public", "notifications", Op.INSERT, 0,
                          COLUMNS, {"id": 1, "user_id": "u"})
    run(cache.prepare([notification]))  # no lookup reads notifications: nothing asked
    assert len(store.queries) == 1 and cache.stats.hits == 0 and len(cache) == 1
    batch = [order(1)]
    run(cache.prepare(batch))  # the reset was not spent on the batch passed by
    assert len(store.queries) == 2
    assert cache.values(ORDERS, batch[0].new or {})["customer"] == {"name": "new",
                                                                   "tier": "gold"}
