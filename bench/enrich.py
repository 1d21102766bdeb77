"""Enrichment cost: a transaction of orders streamed and routed with the demo's customer lookup
against the same run without it, in one invocation; then the shared cache in Redis, as a second
node meets it warm.

    .venv/bin/python -m bench.enrich            # 100,000 orders for 1,000 customers, 3 rounds
    .venv/bin/python -m bench.enrich --short    # 20,000 orders, 1 round

The orders go to the customers in turn (order n to customer 1 + n mod customers). Reports
changes/s with and without enrichment (the ratio is the target: >= 0.5x), the lookup queries
per transaction and the cache hit ratio: with the in-process cache (each round a cold one), and
with the Redis cache (``RTGW_REDIS_URL``, default the local one) shared by two enrichments, as
two nodes: the first fills it, the second, timed, finds every customer there.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
from collections.abc import Callable

import psycopg
import redis

from bench.cdc import _stream_100k
from bench.fanout import embedded_postgres
from gateway.channels import ChannelSet
from gateway.enrich import Enrichment, LookupCache, MemoryCache
from gateway.enrich_redis import RedisCache
from gateway.settings import Settings
from gateway.sources.postgres.lookups import PostgresLookups

WHOLE = Settings.model_fields["enrich_batch_max"].default  # RTGW_ENRICH_BATCH_MAX


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="20,000 rows, 1 round")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--customers", type=int, default=1000)
    args = parser.parse_args()
    rows = args.rows or (20_000 if args.short else 100_000)
    rounds = 1 if args.short else 3
    redis_url = Settings().redis_url
    prefix = f"bench:{secrets.token_hex(4)}"  # each round a cold shared cache under it

    with embedded_postgres() as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO customers (name, tier) SELECT 'c' || n, 'gold' "
                          "FROM generate_series(1, %s) n", (args.customers,))
        spread = ("INSERT INTO orders (customer_id, status, total) SELECT 1 + n %% "
                  f"{args.customers}, 'pending', n %% 1000 FROM generate_series(1, %s) n")

        def enriched_run(cache: Callable[[], LookupCache], made: list[Enrichment]) -> float:
            def enrichment(channels: ChannelSet) -> Enrichment:
                made.append(Enrichment(channels, PostgresLookups(pg.dsn), cache()))
                return made[-1]

            async def run() -> float:
                try:
                    return await _stream_100k(pg, rows, enrichment, spread, WHOLE)
                finally:
                    await made[-1].close()

            return asyncio.run(run())

        def shared(round_: int) -> Callable[[], LookupCache]:
            return lambda: RedisCache(redis_url, f"{prefix}:{round_}")

        plain: list[float] = []
        memory: list[float] = []
        warm: list[float] = []
        in_process: list[Enrichment] = []
        first_nodes: list[Enrichment] = []
        second_nodes: list[Enrichment] = []
        try:
            for round_ in range(rounds):
                plain.append(asyncio.run(_stream_100k(pg, rows, insert=spread)))
                memory.append(enriched_run(MemoryCache, in_process))
                enriched_run(shared(round_), first_nodes)  # it fills the shared cache
                warm.append(enriched_run(shared(round_), second_nodes))
        finally:
            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
            client.close()

    base = statistics.median(plain)
    print(f"enrichment, {rows:,} orders in one transaction over {args.customers:,} customers"
          f" (COMMIT -> all routed, median of {rounds}):")
    print(f"  without lookups            {base:6.2f} s  {rows / base:9,.0f} changes/s")
    for name, times, made in (("in-process cache, cold", memory, in_process),
                              ("Redis cache, second node", warm, second_nodes)):
        took = statistics.median(times)
        queries = statistics.median(e.stats.queries for e in made)
        hits = sum(e.stats.hits for e in made)
        asked = hits + sum(e.stats.misses for e in made)
        print(f"  {name:26} {took:6.2f} s  {rows / took:9,.0f} changes/s  "
              f"{base / took:4.2f}x (target >= 0.5x)  queries/transaction {queries:.0f}  "
              f"hit ratio {hits / asked:.3f} ({hits:,} of {asked:,} keys)")
    firsts = statistics.median(e.stats.queries for e in first_nodes)
    print(f"  (the first node, filling the Redis cache: {firsts:.0f} queries/transaction)")


if __name__ == "__main__":
    main()
