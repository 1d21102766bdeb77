"""A row that changes hands, or leaves a filter, against a real gateway and real Postgres: the
new owner sees the row as it is now and nothing of before, the previous owner sees it go, on
the native protocol and on the Supabase-compatible endpoint."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import websockets

from tests.conftest import API_KEY, Gateway, connect, insert_order, token
from tests.integration.phoenix_client import Phx

NOTIFICATIONS = {"event": "*", "schema": "public", "table": "notifications"}


def give(db: psycopg.Connection[Any], owner: str, title: str, body: str) -> int:
    row = db.execute(
        "INSERT INTO notifications (user_id, title, body) VALUES (%s, %s, %s) RETURNING id",
        (owner, title, body),
    ).fetchone()
    assert row is not None
    return int(row[0])


async def test_native_owners_see_a_row_leave_and_arrive_without_the_other_values(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    async with connect(gateway.ws_url) as old_owner, connect(gateway.ws_url) as new_owner:
        await old_owner.auth(token(bob, scopes=()))
        await new_owner.auth(token(alice, scopes=()))
        await old_owner.subscribe("my_notifications")
        await new_owner.subscribe("my_notifications")
        note = give(db, bob, "bob's secret title", "bob's secret body")
        [created] = await old_owner.events(1)
        assert created["change"]["op"] == "INSERT"
        db.execute("UPDATE notifications SET user_id = %s, title = 'yours now', body = 'hi' "
                   "WHERE id = %s", (alice, note))

        [gone] = await old_owner.events(1)
        assert gone["change"]["op"] == "DELETE" and gone["change"]["moved"] == "out"
        assert gone["change"]["new"] is None and gone["change"]["old"]["id"] == note
        assert "yours now" not in str(gone)
        [arrived] = await new_owner.events(1)
        assert arrived["change"]["op"] == "INSERT" and arrived["change"]["moved"] == "in"
        assert arrived["change"]["old"] is None
        assert arrived["change"]["new"] == {**arrived["change"]["new"], "id": note,
                                            "title": "yours now", "user_id": alice}
        assert "secret" not in str(arrived)
        assert arrived["offset"] == gone["offset"]  # one change, two views of it


async def test_a_native_filtered_topic_is_told_when_a_row_leaves_it(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    async with connect(gateway.ws_url) as client:
        await client.auth(token())
        pending = await client.subscribe("orders", filter="status=eq.pending")
        order = insert_order(db, status="pending")
        db.execute("UPDATE orders SET status = 'paid' WHERE id = %s", (order,))
        entered, left = await client.events(2)
        assert entered["topic"] == pending["topic"] and entered["change"]["op"] == "INSERT"
        assert left["change"]["op"] == "DELETE" and left["change"]["moved"] == "out"
        assert left["change"]["old"]["status"] == "pending" and left["change"]["new"] is None


async def test_supabase_clients_never_get_another_partitions_old_record(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    url = f"{gateway.http_url.replace('http', 'ws')}/realtime/v1/websocket?apikey={API_KEY}" \
        "&vsn=2.0.0"
    async with websockets.connect(url) as old_socket, websockets.connect(url) as new_socket:
        old_owner, new_owner = Phx(old_socket, "2.0.0"), Phx(new_socket, "2.0.0")
        for phx, user in ((old_owner, bob), (new_owner, alice)):
            _, reply = await phx.join("realtime:mine", [NOTIFICATIONS], token(user, scopes=()))
            assert reply["status"] == "ok"
            await phx.until("system")
        note = give(db, bob, "bob's secret title", "bob's secret body")
        *_, created = await old_owner.until("postgres_changes")
        assert created["data"]["type"] == "INSERT"
        db.execute("UPDATE notifications SET user_id = %s, title = 'yours now', body = 'hi' "
                   "WHERE id = %s",
                   (alice, note))

        *_, gone = await old_owner.until("postgres_changes")
        assert gone["data"]["type"] == "DELETE" and "record" not in gone["data"]
        assert gone["data"]["old_record"]["id"] == note and "yours now" not in str(gone)
        *_, arrived = await new_owner.until("postgres_changes")
        assert arrived["data"]["type"] == "INSERT" and "old_record" not in arrived["data"]
        assert arrived["data"]["record"]["title"] == "yours now"
        assert "secret" not in str(arrived)
        assert await new_owner.silent_for(0.3) and await old_owner.silent_for(0.3)
