"""Resume with `since`: exactly the missed events, then live ones, with no gap and no duplicate
at the seam, while rows keep being committed."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg

from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import Gateway, connect, drop_slot, insert_statuses, start_gateway, token

ROWS = 400


async def _write_rows(dsn: str, customer: int, count: int, pause_s: float) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for n in range(count):
            await conn.execute(
                "INSERT INTO orders (customer_id, status) VALUES (%s, %s)",
                (customer, f"seam-{n}"),
            )
            await asyncio.sleep(pause_s)


async def test_resume_seam_under_concurrent_writes(
    gateway: Gateway, pg: EmbeddedPostgres, db: psycopg.Connection[Any]
) -> None:
    customer = db.execute("INSERT INTO customers (name) VALUES ('seam') RETURNING id").fetchone()
    assert customer is not None
    mine = f"customer_id=eq.{customer[0]}"
    seen: list[dict[str, Any]] = []
    writer = asyncio.create_task(_write_rows(pg.dsn, customer[0], ROWS, 0.002))
    try:
        async with connect(gateway.ws_url) as first:
            await first.auth(token())
            subscribed = await first.subscribe("orders", filter=mine)
            seen.extend(await first.events(50))
        # Disconnected while the writer keeps committing; come back mid-stream.
        await asyncio.sleep(0.1)
        async with connect(gateway.ws_url) as again:
            await again.auth(token())
            last = seen[-1]
            resumed = await again.subscribe(
                "orders",
                filter=mine,
                since={"offset": last["offset"], "epoch": last["epoch"]},
            )
            assert resumed["recovered"] is True and resumed["topic"] == subscribed["topic"]
            await writer
            seen.extend(await again.events(ROWS - len(seen), wait_s=30))
            assert await again.silent_for(0.3)
    finally:
        writer.cancel()
    positions = [(subscribed["epoch"], subscribed["offset"])]
    positions += [(e["epoch"], e["offset"]) for e in seen]
    assert positions == sorted(set(positions))  # increasing: no duplicate, none out of order
    assert [e["change"]["new"]["status"] for e in seen] == [f"seam-{n}" for n in range(ROWS)]
    assert len({e["change"]["id"] for e in seen}) == ROWS


async def test_publish_and_channels_are_in_the_openapi_document(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as http:
        document = (await http.get("/openapi.json")).json()
    paths = document["paths"]
    assert "post" in paths["/v1/publish"] and "get" in paths["/v1/channels"]
    assert "get" in paths["/v1/sse"]
    body = paths["/v1/publish"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["required"]) == {"channel", "event", "payload"}


async def test_a_client_moves_to_another_gateway_on_the_same_database_and_resumes(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any]
) -> None:
    """Offsets are positions in the database's stream, so two gateways (each with its own
    slot, no shared state) give an event the same numbers: a client that loses one gateway
    resumes on the other with exactly what it missed."""
    gateways = [await start_gateway(pg.dsn), await start_gateway(pg.dsn)]
    customer = db.execute("INSERT INTO customers (name) VALUES ('mover') RETURNING id").fetchone()
    assert customer is not None
    mine = f"customer_id=eq.{customer[0]}"

    try:
        async with connect(gateways[0].ws_url) as client:
            await client.auth(token())
            await client.subscribe("orders", filter=mine)
            insert_statuses(db, customer[0], "on-a-0", "on-a-1")
            seen = await client.events(2)
        insert_statuses(db, customer[0], "moving-0", "moving-1")
        async with connect(gateways[1].ws_url) as client:
            await client.auth(token())
            last = seen[-1]
            resumed = await client.subscribe(
                "orders", filter=mine, since={"offset": last["offset"], "epoch": last["epoch"]}
            )
            assert resumed["recovered"] is True
            missed = await client.events(2)
            assert await client.silent_for(0.3)
    finally:
        for gateway in gateways:
            await gateway.stop()
            drop_slot(pg.dsn, gateway.settings.slot)
    assert [e["change"]["new"]["status"] for e in seen + missed] == [
        "on-a-0", "on-a-1", "moving-0", "moving-1"
    ]
