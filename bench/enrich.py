"""Enrichment cost: a transaction of orders streamed and routed with the demo's customer lookup
against the same run without it, in one invocation; with the in-process cache (cold, then warm
on the next transaction) and with the shared cache in Redis, as a second node meets it.

    .venv/bin/python -m bench.enrich            # 100,000 orders for 1,000 customers, 3 rounds
    .venv/bin/python -m bench.enrich --short    # 20,000 orders, 1 round

The orders go to the customers in turn (order n to customer 1 + n mod customers), in one
transaction, which the source hands on whole as it does when channels declare lookups
(``RTGW_ENRICH_BATCH_MAX``). Reports changes/s with and without enrichment (the ratio is the
target: >= 0.5x), the lookup queries per transaction and the cache hit ratio (keys found in the
cache / keys asked). The Redis cache (``RTGW_REDIS_URL``, default the local one) is filled by
one enrichment, then a second one (another node) is timed; its keys are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
from dataclasses import dataclass, field

import psycopg
import redis

from bench.cdc import REPO, _stream_100k
from bench.fanout import embedded_postgres
from gateway.channels import ChannelSet, load_channels
from gateway.enrich import Enrichment, LookupCache, MemoryCache
from gateway.enrich_redis import RedisCache
from gateway.settings import Settings
from gateway.sources.embedded import EmbeddedPostgres
from gateway.sources.postgres.lookups import PostgresLookups

WHOLE = Settings.model_fields["enrich_batch_max"].default  # RTGW_ENRICH_BATCH_MAX


@dataclass
class Case:
    """The timed transactions of one way of enriching, and what their lookups did."""

    name: str
    seconds: list[float] = field(default_factory=list)
    queries: list[int] = field(default_factory=list)
    hits: int = 0
    asked: int = 0


async def timed(
    pg: EmbeddedPostgres, rows: int, insert: str, enrichment: Enrichment, case: Case | None
) -> None:
    """Stream one transaction through ``enrichment``; record it in ``case``, if given."""
    stats = enrichment.stats
    queries, hits, misses = stats.queries, stats.hits, stats.misses

    def made(_: ChannelSet) -> Enrichment:
        return enrichment

    took = await _stream_100k(pg, rows, made, insert, WHOLE)
    if case is not None:
        case.seconds.append(took)
        case.queries.append(stats.queries - queries)
        case.hits += stats.hits - hits
        case.asked += stats.hits - hits + stats.misses - misses


async def measure(
    pg: EmbeddedPostgres, rows: int, insert: str, rounds: int, redis_url: str, prefix: str
) -> tuple[list[float], list[Case]]:
    plain: list[float] = []
    cold, warm = Case("in-process, cold"), Case("in-process, warm")
    shared = Case("Redis, second node")
    channels = load_channels(REPO / "channels")

    def enrichment(cache: LookupCache) -> Enrichment:
        return Enrichment(channels, PostgresLookups(pg.dsn), cache)

    for round_ in range(rounds):
        plain.append(await _stream_100k(pg, rows, insert=insert))
        node = enrichment(MemoryCache())
        await timed(pg, rows, insert, node, cold)
        await timed(pg, rows, insert, node, warm)  # the same node, its next transaction
        first = enrichment(RedisCache(redis_url, f"{prefix}:{round_}"))
        second = enrichment(RedisCache(redis_url, f"{prefix}:{round_}"))
        await timed(pg, rows, insert, first, None)  # fills the shared cache
        await timed(pg, rows, insert, second, shared)
        for each in (node, first, second):
            await each.close()
    return plain, [cold, warm, shared]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="20,000 rows, 1 round")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rows = args.rows or (20_000 if args.short else 100_000)
    rounds = args.rounds or (1 if args.short else 3)
    redis_url = Settings().redis_url
    prefix = f"bench:{secrets.token_hex(4)}"  # each round a cold shared cache under it

    with embedded_postgres() as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO customers (name, tier) SELECT 'c' || n, 'gold' "
                          "FROM generate_series(1, %s) n", (args.customers,))
        spread = ("INSERT INTO orders (customer_id, status, total) SELECT 1 + n %% "
                  f"{args.customers}, 'pending', n %% 1000 FROM generate_series(1, %s) n")
        try:
            plain, cases = asyncio.run(measure(pg, rows, spread, rounds, redis_url, prefix))
        finally:
            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
            client.close()

    base = statistics.median(plain)
    print(f"enrichment, {rows:,} orders in one transaction over {args.customers:,} customers"
          f" (COMMIT -> all routed, median of {rounds}):")
    print(f"  {'without lookups':20} {base:6.2f} s  {rows / base:9,.0f} changes/s")
    for case in cases:
        took = statistics.median(case.seconds)
        print(f"  {case.name:20} {took:6.2f} s  {rows / took:9,.0f} changes/s  "
              f"{base / took:4.2f}x (target >= 0.5x)  "
              f"queries/transaction {statistics.median(case.queries):.0f}  "
              f"hit ratio {case.hits / case.asked:.3f} ({case.hits:,} of {case.asked:,} keys)")


if __name__ == "__main__":
    main()
