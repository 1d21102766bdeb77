"""A Postgres row change reaches an authorized WebSocket client: the whole path, for real."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from tests.conftest import Gateway, connect, token


async def test_insert_update_delete_reach_subscriber_in_commit_order_with_types(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    async with connect(gateway.ws_url) as client:
        ready = await client.auth(token("user-a"))
        assert ready["type"] == "ready" and ready["sub"] == "user-a"
        subscribed = await client.subscribe("orders")
        assert subscribed["type"] == "subscribed"
        assert subscribed["topic"] == "orders" and subscribed["ref"] == "s"

        customer = db.execute(
            "INSERT INTO customers (name) VALUES ('Typed') RETURNING id"
        ).fetchone()
        assert customer is not None
        row = db.execute(
            "INSERT INTO orders (customer_id, total) VALUES (%s, 12.30) RETURNING id",
            (customer[0],),
        ).fetchone()
        assert row is not None
        order_id = row[0]
        db.execute("UPDATE orders SET status = 'paid' WHERE id = %s", (order_id,))
        db.execute("DELETE FROM orders WHERE id = %s", (order_id,))

        insert, update, delete = await client.events(3)
        assert [e["change"]["op"] for e in (insert, update, delete)] == [
            "INSERT", "UPDATE", "DELETE",
        ]
        offsets = [e["offset"] for e in (insert, update, delete)]
        assert subscribed["offset"] < offsets[0] < offsets[1] < offsets[2]
        assert {e["epoch"] for e in (insert, update, delete)} == {subscribed["epoch"]}
        ids = [e["change"]["id"] for e in (insert, update, delete)]
        assert ids == sorted(ids) and len(set(ids)) == 3

        new = insert["change"]["new"]
        assert new["id"] == order_id and isinstance(new["id"], int)
        assert new["customer_id"] == customer[0]
        assert new["total"] == "12.30"  # numeric stays exact, as a string
        assert new["status"] == "pending"
        assert new["created_at"].endswith("+00:00") and "T" in new["created_at"]
        assert insert["change"]["old"] is None
        assert insert["change"]["schema"] == "public" and insert["change"]["table"] == "orders"

        assert update["change"]["new"]["status"] == "paid"
        assert update["change"]["old"]["status"] == "pending"  # REPLICA IDENTITY FULL
        assert delete["change"]["new"] is None
        assert delete["change"]["old"]["id"] == order_id


async def test_partition_user_sees_only_own_notifications(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    async with connect(gateway.ws_url) as a, connect(gateway.ws_url) as b:
        await a.auth(token(alice, scopes=()))
        await b.auth(token(bob, scopes=()))
        sub_a = await a.subscribe("my_notifications")
        sub_b = await b.subscribe("my_notifications")
        assert sub_a["topic"] == f"my_notifications:user_id={alice}"
        assert sub_b["topic"] == f"my_notifications:user_id={bob}"

        for user, title in ((bob, "for bob 1"), (alice, "for alice"), (bob, "for bob 2")):
            db.execute(
                "INSERT INTO notifications (user_id, title) VALUES (%s, %s)", (user, title)
            )
        db.execute("UPDATE notifications SET read = true WHERE user_id = %s", (bob,))
        db.execute("DELETE FROM notifications WHERE user_id = %s", (bob,))

        (only,) = await a.events(1)
        assert only["change"]["new"]["title"] == "for alice"
        assert only["change"]["new"]["user_id"] == alice
        bob_events = await b.events(6)
        assert [e["change"]["op"] for e in bob_events] == ["INSERT"] * 2 + ["UPDATE"] * 2 + [
            "DELETE"
        ] * 2
        assert all(
            (e["change"]["new"] or e["change"]["old"])["user_id"] == bob for e in bob_events
        )
        # Bob's rows were committed after Alice's only event: none of them may reach her.
        assert await a.silent_for(0.5)


async def test_filters_narrow_the_stream(gateway: Gateway, db: psycopg.Connection[Any]) -> None:
    async with connect(gateway.ws_url) as paid, connect(gateway.ws_url) as big:
        await paid.auth(token())
        await big.auth(token())
        assert (await paid.subscribe("orders", filter="status=eq.paid"))["topic"] == (
            "orders?status=eq.paid"
        )
        assert (await big.subscribe("orders", filter="total=gt.100,status=in.(pending,paid)"))[
            "type"
        ] == "subscribed"
        customer = db.execute("INSERT INTO customers (name) VALUES ('F') RETURNING id").fetchone()
        assert customer is not None
        for status, total in (("pending", 5), ("paid", 7), ("pending", 150), ("shipped", 900)):
            db.execute(
                "INSERT INTO orders (customer_id, status, total) VALUES (%s, %s, %s)",
                (customer[0], status, total),
            )
        (got,) = await paid.events(1)
        assert got["change"]["new"]["status"] == "paid"
        (got_big,) = await big.events(1)
        assert got_big["change"]["new"]["total"] == "150.00"
        assert await paid.silent_for(0.3) and await big.silent_for(0.3)
