"""Enrichment cost: a transaction of orders streamed and routed with the demo's customer lookup
against the same run without it, in one invocation.

    .venv/bin/python -m bench.enrich            # 100,000 orders for 1,000 customers, 3 rounds
    .venv/bin/python -m bench.enrich --short    # 20,000 orders, 1 round

The orders go to the customers in turn (order n to customer 1 + n mod customers). Reports
changes/s with and without enrichment (the ratio is the target: >= 0.5x), the lookup queries
per transaction, and the cache hit ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

import psycopg

from bench.cdc import _stream_100k
from bench.fanout import embedded_postgres
from gateway.channels import ChannelSet
from gateway.enrich import Enrichment
from gateway.sources.postgres.lookups import PostgresLookups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="20,000 rows, 1 round")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--customers", type=int, default=1000)
    args = parser.parse_args()
    rows = args.rows or (20_000 if args.short else 100_000)
    rounds = 1 if args.short else 3

    with embedded_postgres() as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO customers (name, tier) SELECT 'c' || n, 'gold' "
                          "FROM generate_series(1, %s) n", (args.customers,))
        made: list[Enrichment] = []

        def enrichment(channels: ChannelSet) -> Enrichment:
            made.append(Enrichment(channels, PostgresLookups(pg.dsn)))
            return made[-1]

        spread = ("INSERT INTO orders (customer_id, status, total) SELECT 1 + n %% "
                  f"{args.customers}, 'pending', n %% 1000 FROM generate_series(1, %s) n")

        async def enriched_run() -> float:
            try:
                return await _stream_100k(pg, rows, enrichment, spread)
            finally:
                await made[-1].close()

        plain, enriched = [], []
        for _ in range(rounds):
            plain.append(asyncio.run(_stream_100k(pg, rows, insert=spread)))
            enriched.append(asyncio.run(enriched_run()))
        base, with_lookups = statistics.median(plain), statistics.median(enriched)
        queries = statistics.median(e.stats.queries for e in made)
        hits = sum(e.stats.hits for e in made)
        asked = hits + sum(e.stats.misses for e in made)
        print(f"enrichment, {rows:,} orders in one transaction over {args.customers:,} customers"
              f" (COMMIT -> all routed, median of {rounds}):")
        print(f"  without lookups  {base:6.2f} s  {rows / base:9,.0f} changes/s")
        print(f"  with the lookup  {with_lookups:6.2f} s  {rows / with_lookups:9,.0f} changes/s")
        print(f"  ratio            {base / with_lookups:6.2f}x  (target >= 0.5x)")
        print(f"  lookup queries per transaction: {queries:.0f} "
              f"(batches of 512 rows; keys already cached are not asked again)")
        print(f"  cache hit ratio: {hits / asked:.3f} ({hits:,} of {asked:,} keys)")


if __name__ == "__main__":
    main()
