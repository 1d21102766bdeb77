"""The LookupCache contract (gateway/enrich.py) over every cache: in process and in a real
Redis; then what only a shared cache must keep, with two readers (two ``RedisCache``s, as two
nodes) interleaved deterministically: a row read before a change another reader dropped is
never written back."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.enrich import CacheUnavailable, Entry, LookupCache, MemoryCache, Target
from gateway.enrich_redis import RedisCache
from tests.redis_server import RedisServer

CUSTOMERS = Target("public", "customers", ("id",))
COLUMNS = {CUSTOMERS: ("name", "tier")}
ADA: Entry = (CUSTOMERS, (1,))
BO: Entry = (CUSTOMERS, (2,))


def row(name: str) -> dict[str, Any]:
    return {"id": 1, "name": name, "tier": "gold"}


Factory = Callable[..., LookupCache]


@pytest.fixture(params=["memory", "redis"])
async def make(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Factory]:
    """Builds caches of one kind; Redis ones share a prefix unique to the test."""
    prefix = f"test:{secrets.token_hex(6)}"
    made: list[LookupCache] = []

    def build(**options: Any) -> LookupCache:
        cache: LookupCache = (
            MemoryCache(**options) if request.param == "memory"
            else RedisCache(redis_url, prefix, **options)
        )
        made.append(cache)
        return cache

    yield build
    for cache in made:
        await cache.close()


@pytest.fixture
async def shared(redis_url: str) -> AsyncIterator[tuple[RedisCache, RedisCache]]:
    """Two readers of one shared cache (two nodes)."""
    prefix = f"test:{secrets.token_hex(6)}"
    a, b = RedisCache(redis_url, prefix), RedisCache(redis_url, prefix)
    yield a, b
    await a.close()
    await b.close()


async def test_a_row_put_is_got_until_the_stream_drops_it(make: Factory) -> None:
    cache = make()
    assert await cache.get([ADA, BO], COLUMNS) == {}
    await cache.put({ADA: row("Ada"), BO: None}, 100)
    assert await cache.get([ADA, BO], COLUMNS) == {ADA: row("Ada"), BO: None}
    assert cache.entries == 2
    assert await cache.drop({ADA: 150}) == 1
    assert await cache.get([ADA, BO], COLUMNS) == {BO: None}
    await cache.put({ADA: row("Ada L.")}, 150)
    assert await cache.get([ADA], COLUMNS) == {ADA: row("Ada L.")}


async def test_a_truncate_drops_the_table_and_a_reset_drops_everything(make: Factory) -> None:
    cache = make()
    await cache.get([ADA, BO], COLUMNS)  # a put follows the get that missed
    await cache.put({ADA: row("Ada"), BO: None}, 100)
    await cache.drop({(CUSTOMERS, None): 200})
    assert await cache.get([ADA, BO], COLUMNS) == {}
    await cache.get([ADA], COLUMNS)
    await cache.put({ADA: row("Ada")}, 200)
    assert await cache.get([ADA], COLUMNS) == {ADA: row("Ada")}
    await cache.reset(300)
    assert await cache.get([ADA], COLUMNS) == {}


async def test_a_row_without_the_wanted_columns_is_not_got(make: Factory) -> None:
    cache = make()
    await cache.get([ADA], COLUMNS)
    await cache.put({ADA: {"id": 1, "name": "Ada"}}, 100)
    assert await cache.get([ADA], COLUMNS) == {}
    assert await cache.get([ADA], {CUSTOMERS: ("name",)}) == {ADA: {"id": 1, "name": "Ada"}}


async def test_the_cache_is_bounded_by_entries_and_by_age(make: Factory) -> None:
    bounded = make(max_entries=3)
    many = [(CUSTOMERS, (n,)) for n in range(5)]
    await bounded.get(many, COLUMNS)
    await bounded.put({entry: None for entry in many}, 100)
    assert bounded.entries == 3 and len(await bounded.get(many, COLUMNS)) == 3
    brief, other = make(ttl_s=0.2), (CUSTOMERS, (99,))
    await brief.get([other], COLUMNS)
    await brief.put({other: row("Ada")}, 100)
    assert await brief.get([other], COLUMNS) == {other: row("Ada")}
    await asyncio.sleep(0.3)
    assert await brief.get([other], COLUMNS) == {}


async def test_a_row_read_before_another_readers_drop_is_never_written_back(
    shared: tuple[RedisCache, RedisCache],
) -> None:
    a, b = shared
    assert await a.get([ADA], COLUMNS) == {}  # A misses at position 100 and reads v1 ...
    assert await b.drop({ADA: 150}) == 0  # ... B's stream shows the update: a tombstone
    await a.put({ADA: row("v1")}, 100)  # ... A writes v1 back: refused
    assert await b.get([ADA], COLUMNS) == {}
    assert await a.get([ADA], COLUMNS) == {}
    await b.put({ADA: row("v2")}, 150)  # read at or after the change: kept, for both
    assert await a.get([ADA], COLUMNS) == {ADA: row("v2")}
    await a.put({ADA: row("v1")}, 120)  # an older read never replaces a newer one
    assert await b.get([ADA], COLUMNS) == {ADA: row("v2")}
    assert await a.drop({ADA: 140}) == 0  # a drop older than the read leaves it
    assert await b.get([ADA], COLUMNS) == {ADA: row("v2")}


async def test_markers_refuse_rows_read_before_them(
    shared: tuple[RedisCache, RedisCache],
) -> None:
    a, b = shared
    await a.get([ADA], COLUMNS)
    await b.drop({(CUSTOMERS, None): 200})  # a TRUNCATE seen by B
    await a.put({ADA: row("before")}, 199)
    assert await b.get([ADA], COLUMNS) == {}
    await a.get([BO], COLUMNS)
    await b.reset(300)
    await a.put({BO: None}, 250)
    assert await b.get([BO], COLUMNS) == {}
    await a.put({BO: None}, 300)
    assert await b.get([BO], COLUMNS) == {BO: None}


async def test_a_put_whose_get_is_older_than_the_ttl_is_refused(redis_url: str) -> None:
    cache = RedisCache(redis_url, f"test:{secrets.token_hex(6)}", ttl_s=0.2)
    try:
        await cache.get([ADA], COLUMNS)
        await asyncio.sleep(0.3)  # a tombstone it should meet may have expired meanwhile
        await cache.put({ADA: row("Ada")}, 100)
        assert cache.entries == 0 and await cache.get([ADA], COLUMNS) == {}
    finally:
        await cache.close()


async def test_a_redis_that_is_down_raises_cache_unavailable(private_redis: RedisServer) -> None:
    cache = RedisCache(private_redis.url, "test")
    try:
        assert await cache.get([ADA], COLUMNS) == {}
        private_redis.kill()
        for call in (cache.get([ADA], COLUMNS), cache.drop({ADA: 150}), cache.reset(150)):
            with pytest.raises(CacheUnavailable):
                await call
    finally:
        await cache.close()


async def test_rows_of_another_stream_are_not_got(make: Factory) -> None:
    cache = make()
    cache.started("system-a/1")
    await cache.get([ADA], COLUMNS)
    await cache.put({ADA: row("Ada")}, 100)
    cache.started("system-a/2")  # a failover or a restore: a new timeline
    assert await cache.get([ADA], COLUMNS) == {}


async def test_thousands_of_rows_at_once(make: Factory) -> None:
    cache = make()
    many = [(CUSTOMERS, (n,)) for n in range(2500)]  # more than a Redis script call takes
    await cache.get(many, COLUMNS)
    await cache.put({entry: None for entry in many}, 100)
    assert len(await cache.get(many, COLUMNS)) == 2500
    assert await cache.drop({entry: 200 for entry in many}) == 2500
    assert await cache.get(many, COLUMNS) == {}
