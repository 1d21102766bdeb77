"""Supabase's own Python client, ``realtime`` (vsn 1.0.0), unchanged, against the
Supabase-compatible endpoint of a running gateway with a real Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from realtime import AsyncRealtimeChannel, AsyncRealtimeClient, RealtimeSubscribeStates

from tests.conftest import API_KEY, Gateway, insert_order, token


class Recorder:
    """Queues what a channel's callbacks receive, so the test can await them."""

    def __init__(self) -> None:
        self.changes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.system: asyncio.Queue[Any] = asyncio.Queue()
        self.states: list[tuple[RealtimeSubscribeStates, Exception | None]] = []
        self.closed = asyncio.Event()

    def on_state(self, state: RealtimeSubscribeStates, error: Exception | None) -> None:
        self.states.append((state, error))
        if state == RealtimeSubscribeStates.CLOSED:
            self.closed.set()

    async def change(self, wait_s: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.changes.get(), wait_s)

    async def none_for(self, seconds: float) -> bool:
        await asyncio.sleep(seconds)
        return self.changes.empty()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[AsyncRealtimeClient]:
    realtime = AsyncRealtimeClient(gateway.realtime_url, API_KEY, auto_reconnect=False)
    try:
        yield realtime
    finally:
        await realtime.close()


async def _subscribe(
    client: AsyncRealtimeClient, name: str, *, event: str = "*", table: str = "orders",
    row_filter: str | None = None,
) -> tuple[AsyncRealtimeChannel, Recorder]:
    recorder = Recorder()
    channel = client.channel(name)
    channel.on_postgres_changes(
        event, callback=recorder.changes.put_nowait, table=table, schema="public",
        filter=row_filter,
    )
    channel.on_system(recorder.system.put_nowait)
    await channel.subscribe(recorder.on_state)
    return channel, recorder


async def _ready(recorder: Recorder) -> None:
    assert recorder.states[-1][0] == RealtimeSubscribeStates.SUBSCRIBED, recorder.states
    system = await asyncio.wait_for(recorder.system.get(), 10)
    assert system.message == "Subscribed to PostgreSQL" and system.status == "ok"


async def test_realtime_py_receives_insert_update_delete_with_and_without_filters(
    client: AsyncRealtimeClient, db: psycopg.Connection[Any]
) -> None:
    await client.set_auth(token())
    _, everything = await _subscribe(client, "all-orders")
    _, paid = await _subscribe(client, "paid-updates", event="UPDATE",
                               row_filter="status=eq.paid,total=gte.10")
    await _ready(everything)
    await _ready(paid)

    order_id = insert_order(db, total=12)
    small = insert_order(db, total=1)
    db.execute("UPDATE orders SET status = 'paid' WHERE id IN (%s, %s)", (order_id, small))
    db.execute("DELETE FROM orders WHERE id = %s", (order_id,))

    got = [(await everything.change())["data"] for _ in range(5)]
    assert [(d["type"], (d.get("record") or d["old_record"])["id"]) for d in got] == [
        ("INSERT", order_id), ("INSERT", small), ("UPDATE", order_id), ("UPDATE", small),
        ("DELETE", order_id),
    ]
    insert, update, delete = got[0], got[2], got[4]
    assert insert["schema"] == "public" and insert["table"] == "orders"
    assert insert["record"]["status"] == "pending"
    assert insert["record"]["total"] == 12  # a JSON number, as jsonb
    assert "old_record" not in insert and insert["errors"] is None
    assert update["record"]["status"] == "paid" and update["old_record"]["status"] == "pending"
    assert "record" not in delete and delete["old_record"]["status"] == "paid"
    # The record carries the table's columns, plus the customer the channel looks up.
    assert {c["name"] for c in insert["columns"]} | {"customer"} == set(insert["record"])

    (only,) = [await paid.change()]
    assert only["data"]["type"] == "UPDATE" and only["data"]["record"]["id"] == order_id
    assert await paid.none_for(0.3)


async def test_realtime_py_refreshes_its_token(
    client: AsyncRealtimeClient, db: psycopg.Connection[Any]
) -> None:
    await client.set_auth(token(ttl=3))
    _, orders = await _subscribe(client, "refreshing")
    await _ready(orders)
    await client.set_auth(token(ttl=300))  # pushes access_token to the joined channel
    await asyncio.sleep(3.2)  # the first token has expired by now
    order_id = insert_order(db)
    assert (await orders.change())["data"]["record"]["id"] == order_id


async def test_realtime_py_is_refused_a_binding_it_may_not_read(
    client: AsyncRealtimeClient,
) -> None:
    await client.set_auth(token(scopes=()))  # no orders:read
    channel, refused = await _subscribe(client, "not-mine")
    state, error = refused.states[-1]
    assert state == RealtimeSubscribeStates.CHANNEL_ERROR
    assert "forbidden: channel 'orders' requires scope 'orders:read'" in str(error)
    await client.remove_channel(channel)  # stops the client's rejoin loop


async def test_realtime_py_leaves(
    client: AsyncRealtimeClient, db: psycopg.Connection[Any]
) -> None:
    await client.set_auth(token())
    channel, orders = await _subscribe(client, "leaving")
    _, stays = await _subscribe(client, "staying")
    await _ready(orders)
    await _ready(stays)
    await channel.unsubscribe()  # phx_leave; CLOSED follows the server's reply
    await asyncio.wait_for(orders.closed.wait(), 5)
    order_id = insert_order(db)
    assert (await stays.change())["data"]["record"]["id"] == order_id
    assert orders.changes.empty()
