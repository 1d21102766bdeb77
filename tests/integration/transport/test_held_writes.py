"""Frames a socket is sent while the hub hands out a batch are held and written together
(gateway.writes): over real sockets, every frame of a large transaction still arrives once
and in the stream's order, across a connection's topics and on every connection."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.conftest import Gateway, connect, token

ROWS = 600  # more than a batch of the router (128) and, at about 300 bytes each, many holds


async def test_a_large_transaction_arrives_whole_and_in_order_on_every_topic(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    async with connect(gateway.ws_url) as client, connect(gateway.ws_url) as other:
        await client.auth(token())
        await other.auth(token())
        assert (await client.subscribe("orders"))["type"] == "subscribed"
        paid = await client.subscribe("orders", filter="status=eq.paid", ref="p")
        assert paid["topic"] == "orders?status=eq.paid"
        await other.subscribe("orders")
        customer = db.execute("INSERT INTO customers (name) VALUES ('held') RETURNING id")
        row = customer.fetchone()
        assert row is not None
        ids = [r[0] for r in db.execute(
            "INSERT INTO orders (customer_id, status) SELECT %s, "
            "CASE WHEN g %% 2 = 0 THEN 'paid' ELSE 'pending' END "
            "FROM generate_series(1, %s) AS g ORDER BY g RETURNING id",
            (row[0], ROWS),
        ).fetchall()]

        frames = await client.events(ROWS + ROWS // 2, wait_s=30)
        offsets = [frame["offset"] for frame in frames]
        assert offsets == sorted(offsets)  # one stream order across both topics
        by_topic: dict[str, list[int]] = {"orders": [], "orders?status=eq.paid": []}
        for frame in frames:
            by_topic[frame["topic"]].append(frame["change"]["new"]["id"])
        assert by_topic["orders"] == ids
        assert by_topic["orders?status=eq.paid"] == ids[1::2]
        assert [f["change"]["new"]["id"] for f in await other.events(ROWS, wait_s=30)] == ids
        assert await client.silent_for(0.3) and await other.silent_for(0.3)
