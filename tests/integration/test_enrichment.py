"""Enrichment against a real gateway and real Postgres: the demo's orders carry their customer,
never older than a customer change the stream delivered before them, on every protocol, with
lookups batched and the cache invalidated by the stream itself."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from secrets import token_hex
from typing import Any

import httpx
import psycopg
import pytest
import websockets

from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import (
    API_KEY,
    REPO,
    Gateway,
    connect,
    drop_slot,
    sse_events,
    start_gateway,
    take,
    token,
)
from tests.integration.phoenix_client import Phx

WRITERS = 200  # concurrent, on both tables, three writes each
CUSTOMERS_CHANNEL = """
[channels.customers]
table = "public.customers"
operations = ["INSERT", "UPDATE"]
scopes = ["orders:read"]
"""


@pytest.fixture
def with_customers(tmp_path: Path) -> Path:
    """The demo channels plus one that streams the customers themselves (to see, in stream
    order, every customer change an order event must not be older than)."""
    folder = tmp_path / "channels"
    shutil.copytree(REPO / "channels", folder)
    (folder / "customers.toml").write_text(CUSTOMERS_CHANNEL, encoding="utf-8")
    return folder


@pytest.fixture
async def enriching(pg: EmbeddedPostgres, with_customers: Path) -> AsyncIterator[Gateway]:
    gateway = await start_gateway(pg.dsn, channels=with_customers)
    try:
        yield gateway
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)


@pytest.fixture(params=["memory", "redis"])
async def enriching_with_either_cache(
    request: pytest.FixtureRequest, pg: EmbeddedPostgres, with_customers: Path, redis_url: str
) -> AsyncIterator[Gateway]:
    gateway = await start_gateway(pg.dsn, channels=with_customers, cache=request.param,
                                  redis_url=redis_url, cache_prefix=f"test:{token_hex(6)}")
    try:
        yield gateway
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)


def customer(db: psycopg.Connection[Any], name: str, tier: str = "gold") -> int:
    row = db.execute("INSERT INTO customers (name, tier) VALUES (%s, %s) RETURNING id",
                     (name, tier)).fetchone()
    assert row is not None
    return int(row[0])


def order_for(db: psycopg.Connection[Any], customer_id: int) -> int:
    row = db.execute("INSERT INTO orders (customer_id) VALUES (%s) RETURNING id",
                     (customer_id,)).fetchone()
    assert row is not None
    return int(row[0])


async def metric(url: str, name: str) -> float:
    """One value of the gateway at ``url``'s /metrics."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{url}/metrics")).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, name
    return float(found.group(1))


async def test_an_order_carries_its_customer_renamed_before_it_on_every_protocol(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    phx_url = f"ws://127.0.0.1:{gateway.settings.port}/realtime/v1/websocket?apikey={API_KEY}" \
        "&vsn=1.0.0"
    async with (
        connect(gateway.ws_url) as native,
        websockets.connect(phx_url) as socket,
        httpx.AsyncClient(base_url=gateway.http_url, timeout=20) as http,
        http.stream("GET", "/v1/sse", params={"channel": "orders"},
                    headers={"Authorization": f"Bearer {token()}"}) as response,
    ):
        await native.auth(token())
        await native.subscribe("orders")
        phx = Phx(socket, "1.0.0")
        _, reply = await phx.join("realtime:o", [{"event": "UPDATE", "schema": "public",
                                                  "table": "orders"}], token())
        assert reply["status"] == "ok"
        await phx.until("system")
        sse = sse_events(response)
        await take(sse, 2)  # ready, subscribed
        buyer = customer(db, "Ada", "gold")
        order = order_for(db, buyer)
        [created] = await native.events(1)
        assert created["change"]["new"]["customer"] == {"name": "Ada", "tier": "gold"}
        await take(sse, 1)

        db.execute("UPDATE customers SET name = 'Ada Lovelace', tier = 'platinum' WHERE id = %s",
                   (buyer,))
        db.execute("UPDATE orders SET status = 'paid' WHERE id = %s", (order,))

        wanted = {"name": "Ada Lovelace", "tier": "platinum"}
        [event] = await native.events(1)
        assert event["change"]["new"]["customer"] == wanted
        assert event["change"]["old"]["customer"] == wanted  # the old row carries the key too
        assert event["change"]["new"]["id"] == order
        [sent] = await take(sse, 1)
        assert sent["data"]["change"]["new"]["customer"] == wanted
        *_, push = await phx.until("postgres_changes")
        assert push["data"]["record"]["customer"] == wanted
        assert push["data"]["old_record"]["customer"] == wanted


async def test_a_deleted_customer_is_null_and_a_resume_sees_what_a_live_client_saw(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    async with connect(gateway.ws_url) as live:
        await live.auth(token())
        subscribed = await live.subscribe("orders")
        buyer = customer(db, "Grace")
        order_for(db, buyer)
        seen = await live.events(1)
        # (A lookup reads the database as it is when the batch is handled: had the delete
        # been committed by then, the INSERT would carry null too; never an older customer.)
        db.execute("DELETE FROM customers WHERE id = %s", (buyer,))  # cascades to the order
        seen += await live.events(1)
    assert seen[0]["change"]["new"]["customer"] == {"name": "Grace", "tier": "gold"}
    assert seen[1]["change"]["op"] == "DELETE"
    assert seen[1]["change"]["old"]["customer"] is None  # the customer is gone: null
    async with connect(gateway.ws_url) as resumed:
        await resumed.auth(token())
        since = {"offset": subscribed["offset"], "epoch": subscribed["epoch"]}
        await resumed.subscribe("orders", since=since)
        assert await resumed.events(2) == seen  # history keeps the enriched events


async def test_concurrent_writers_never_produce_an_order_older_than_its_customer_change(
    enriching_with_either_cache: Gateway, db: psycopg.Connection[Any], pg: EmbeddedPostgres
) -> None:
    enriching = enriching_with_either_cache
    buyers = [customer(db, f"c{index}-0") for index in range(5)]
    async with connect(enriching.ws_url) as client:
        await client.auth(token())
        await client.subscribe("orders")
        await client.subscribe("customers")

        async def writer(seed: int) -> None:
            chance = random.Random(seed)
            async with await psycopg.AsyncConnection.connect(pg.dsn, autocommit=True) as conn:
                await together.wait()  # all connected: they write at once
                for step in range(1, 4):
                    buyer = chance.choice(buyers)
                    if chance.random() < 0.5:
                        await conn.execute(
                            "UPDATE customers SET name = split_part(name, '-', 1) || '-' || "
                            "(split_part(name, '-', 2)::int + 1) WHERE id = %s", (buyer,))
                    else:
                        await conn.execute("INSERT INTO orders (customer_id, status) "
                                           "VALUES (%s, %s)", (buyer, f"w{seed}-{step}"))

        together = asyncio.Barrier(WRITERS)
        await asyncio.gather(*(writer(seed) for seed in range(WRITERS)))
        latest: dict[int, int] = {}  # customer id -> its name's counter, in stream order
        checked = 0
        while True:
            try:
                [event] = await client.events(1, wait_s=3)
            except TimeoutError:
                break
            new = event["change"]["new"]
            if event["change"]["table"] == "customers":
                latest[new["id"]] = int(new["name"].split("-")[1])
            else:
                assert new["customer"] is not None, event
                counter = int(new["customer"]["name"].split("-")[1])
                assert counter >= latest.get(new["customer_id"], 0), event
                checked += 1
    assert checked > WRITERS


async def test_a_large_transaction_makes_one_lookup_query_per_table(
    enriching: Gateway, db: psycopg.Connection[Any]
) -> None:
    # Every order a customer of its own: handed on in source batches of 512 rows, this would
    # take 20 queries; looked up whole, one.
    buyers = [int(row[0]) for row in db.execute(
        "INSERT INTO customers (name, tier) SELECT 'bulk' || n, 'gold' "
        "FROM generate_series(0, 9999) n RETURNING id").fetchall()]
    queries = await metric(enriching.http_url, "rtgw_enrich_queries_total")
    misses = await metric(enriching.http_url, "rtgw_enrich_misses_total")
    async with connect(enriching.ws_url) as client:
        await client.auth(token())
        await client.subscribe("orders", filter=f"customer_id=eq.{buyers[-1]}")
        db.execute("INSERT INTO orders (customer_id) SELECT unnest(%s::int8[])", (buyers,))
        [event] = await client.events(1, wait_s=30)
    assert event["change"]["new"]["customer"]["name"] == "bulk9999"
    assert await metric(enriching.http_url, "rtgw_enrich_queries_total") - queries == 1
    assert await metric(enriching.http_url, "rtgw_enrich_misses_total") - misses == 10_000


async def test_a_transaction_larger_than_the_bound_makes_one_query_per_part(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any]
) -> None:
    gateway = await start_gateway(pg.dsn, enrich_batch_max=1000)
    try:
        buyers = [int(row[0]) for row in db.execute(
            "INSERT INTO customers (name, tier) SELECT 'part' || n, 'gold' "
            "FROM generate_series(1, 2500) n RETURNING id").fetchall()]
        queries = await metric(gateway.http_url, "rtgw_enrich_queries_total")
        async with connect(gateway.ws_url) as client:
            await client.auth(token())
            await client.subscribe("orders", filter=f"customer_id=eq.{buyers[-1]}")
            db.execute("INSERT INTO orders (customer_id) SELECT unnest(%s::int8[])", (buyers,))
            [event] = await client.events(1, wait_s=30)
        assert event["change"]["new"]["customer"]["name"] == "part2500"
        # Held at most 1,000 changes at a time: 2,500 distinct customers in three parts.
        assert await metric(gateway.http_url, "rtgw_enrich_queries_total") - queries == 3
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)
