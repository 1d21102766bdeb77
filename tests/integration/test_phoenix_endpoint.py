"""The Supabase-compatible endpoint byte by byte, with a plain WebSocket client and a real
Postgres: the upgrade checks, both serializations, joins, events, tokens, leave, timeouts."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
import websockets

from gateway.encoding import loads
from tests.conftest import API_KEY, Gateway, drop_slot, insert_order, start_gateway, token
from tests.integration.phoenix_client import Phx


def _url(gateway: Gateway, vsn: str | None = "2.0.0", apikey: str | None = API_KEY) -> str:
    url = f"ws://127.0.0.1:{gateway.settings.port}/realtime/v1/websocket?"
    if apikey is not None:
        url += f"apikey={apikey}&"
    return url + (f"vsn={vsn}" if vsn else "")


@pytest.fixture(params=["1.0.0", "2.0.0"])
async def phx(request: pytest.FixtureRequest, gateway: Gateway) -> AsyncIterator[Phx]:
    async with websockets.connect(_url(gateway, request.param)) as socket:
        yield Phx(socket, request.param)


ORDERS = {"event": "*", "schema": "public", "table": "orders"}


@pytest.mark.parametrize(
    ("apikey", "headers", "status", "message"),
    [
        (None, {}, 401, "API key is missing"),
        ("wrong", {}, 401, "API key is not valid"),
        (None, {"x-api-key": "wrong"}, 401, "API key is not valid"),
    ],
)
async def test_a_missing_or_wrong_apikey_gets_401_and_json(
    gateway: Gateway, apikey: str | None, headers: dict[str, str], status: int, message: str
) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(_url(gateway, apikey=apikey), additional_headers=headers):
            pass
    response = refused.value.response
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert loads(response.body) == {
        "error": message, "code": "api_key_invalid", "message": message
    }


async def test_apikey_in_header_and_default_vsn_is_1(gateway: Gateway) -> None:
    async with websockets.connect(_url(gateway, vsn=None, apikey=None),
                                  additional_headers={"x-api-key": API_KEY}) as socket:
        phx = Phx(socket, "1.0.0")
        await phx.push("phoenix", "heartbeat", {})
        assert (await phx.recv())[3:] == ("phx_reply", {"status": "ok", "response": {}})


async def test_unknown_vsn_gets_400(gateway: Gateway) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(_url(gateway, vsn="3.0.0")):
            pass
    assert refused.value.response.status_code == 400
    assert loads(refused.value.response.body)["code"] == "vsn_unsupported"


async def test_heartbeat_and_unmatched_topic(phx: Phx) -> None:
    ref = await phx.push("phoenix", "heartbeat", {})
    assert await phx.recv() == (None, ref, "phoenix", "phx_reply", {"status": "ok",
                                                                     "response": {}})
    ref = await phx.push("realtime:nowhere", "access_token", {"access_token": "x"}, "9")
    _, got_ref, topic, event, payload = await phx.recv()
    assert (got_ref, topic, event) == (ref, "realtime:nowhere", "phx_reply")
    assert payload == {"status": "error", "response": {"reason": "unmatched topic"}}


async def test_join_echoes_bindings_with_stable_ids_then_subscribed_then_events(
    phx: Phx, db: psycopg.Connection[Any]
) -> None:
    bindings = [
        {"event": "INSERT", "schema": "public", "table": "orders"},
        {"event": "UPDATE", "schema": "public", "table": "orders", "filter": "status=eq.paid"},
        {"event": "DELETE", "schema": "public", "table": "orders"},
    ]
    _, reply = await phx.join(
        "realtime:room1", bindings, token(),
        broadcast={"ack": False, "self": False}, presence={"key": "", "enabled": False},
        private=False,
    )
    assert reply["status"] == "ok"
    echoed = reply["response"]["postgres_changes"]
    assert [{k: v for k, v in e.items() if k != "id"} for e in echoed] == bindings
    ids = [e["id"] for e in echoed]
    assert all(isinstance(i, int) and 0 < i < 2**27 for i in ids) and len(set(ids)) == 3
    join_ref, _, topic, event, system = await phx.recv()
    assert (topic, event) == ("realtime:room1", "system")
    assert system == {"extension": "postgres_changes", "status": "ok",
                      "message": "Subscribed to PostgreSQL", "channel": "room1"}
    if phx.vsn == "2.0.0":
        assert join_ref == "jrealtime:room1"

    order_id = insert_order(db, total=12.3)
    db.execute("UPDATE orders SET status = 'shipped' WHERE id = %s", (order_id,))  # filtered out
    db.execute("UPDATE orders SET status = 'paid' WHERE id = %s", (order_id,))
    db.execute("DELETE FROM orders WHERE id = %s", (order_id,))

    got = [await phx.until("postgres_changes") for _ in range(3)]
    assert [(g[0], g[1], g[2]) for g in got] == [(None, None, "realtime:room1")] * 3
    insert, update, delete = (g[4] for g in got)
    assert insert["ids"] == [ids[0]] and update["ids"] == [ids[1]] and delete["ids"] == [ids[2]]
    data = insert["data"]
    assert set(data) == {"schema", "table", "commit_timestamp", "type", "columns", "record",
                         "errors"}
    assert (data["schema"], data["table"], data["type"], data["errors"]) == (
        "public", "orders", "INSERT", None
    )
    assert data["commit_timestamp"].endswith("Z")
    assert data["record"]["id"] == order_id and data["record"]["total"] == 12.3
    assert type(data["record"]["total"]) is float  # a JSON number, as Supabase's jsonb
    assert {"name": "total", "type": "numeric"} in data["columns"]
    assert update["data"]["record"]["status"] == "paid"
    assert update["data"]["old_record"]["status"] == "shipped"
    assert "record" not in delete["data"] and delete["data"]["old_record"]["id"] == order_id
    assert await phx.silent_for(0.3)


async def test_projection_and_partition_apply(gateway: Gateway, db: psycopg.Connection[Any]
                                              ) -> None:
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    async with websockets.connect(_url(gateway)) as socket:
        phx = Phx(socket, "2.0.0")
        binding = {"event": "*", "schema": "public", "table": "notifications"}
        _, reply = await phx.join("realtime:mine", [binding], token(alice, scopes=()))
        assert reply["status"] == "ok"
        await phx.until("system")
        db.execute("INSERT INTO notifications (user_id, title) VALUES (%s, 'bob')", (bob,))
        db.execute("INSERT INTO notifications (user_id, title) VALUES (%s, 'al')", (alice,))
        *_, payload = await phx.until("postgres_changes")
        assert payload["data"]["record"]["title"] == "al"
        assert payload["data"]["record"]["user_id"] == alice
        assert await phx.silent_for(0.3)

        _, reply = await phx.join("realtime:orders", [ORDERS], token())
        await phx.until("system")
        insert_order(db)
        *_, payload = await phx.until("postgres_changes")
        columns = {c["name"] for c in payload["data"]["columns"]}
        assert payload["data"]["record"].pop("customer") is not None  # the lookup, enriched
        assert columns == set(payload["data"]["record"]) == {
            "id", "customer_id", "status", "total", "created_at", "updated_at"
        }


async def test_refused_bindings_get_clear_errors(phx: Phx) -> None:
    _, reply = await phx.join("realtime:a", [ORDERS], token(scopes=()))
    assert reply == {"status": "error", "response": {
        "reason": "forbidden: channel 'orders' requires scope 'orders:read'"}}
    _, reply = await phx.join("realtime:b", [{"event": "*", "schema": "public",
                                               "table": "secrets"}], token())
    assert reply["response"]["reason"].startswith("unknown_table: ")
    _, reply = await phx.join("realtime:c", [{"event": "*", "schema": "audit"}], token())
    assert reply["response"]["reason"].startswith("unknown_table: ")
    _, reply = await phx.join("realtime:d", [ORDERS], "not-a-jwt")
    assert reply["response"]["reason"].startswith("token_malformed: ")
    # Without access_token the apikey (an anon JWT without scopes) is the token.
    _, reply = await phx.join("realtime:e", [ORDERS], None)
    assert reply["response"]["reason"].startswith("forbidden: ")
    # A bad filter: ok reply, then a system error, as Supabase does.
    _, reply = await phx.join("realtime:f", [{**ORDERS, "filter": "tier=eq.gold"}], token())
    assert reply["status"] == "ok"
    *_, system = await phx.recv()
    assert system["status"] == "error" and system["extension"] == "postgres_changes"
    assert system["message"].startswith("bad_filter: ")


async def test_broadcast_presence_only_join_and_unsupported_push(phx: Phx) -> None:
    _, reply = await phx.join("realtime:chat", [], token(), broadcast={"self": True},
                              presence={"enabled": True, "key": "k"})
    assert reply == {"status": "ok", "response": {"postgres_changes": []}}
    ref = await phx.push("realtime:chat", "broadcast", {"event": "x", "payload": {}}, "jr")
    _, got_ref, _, event, payload = await phx.recv()
    assert (got_ref, event, payload["status"]) == (ref, "phx_reply", "error")
    assert payload["response"]["reason"].startswith("bad_frame: ")


async def test_access_token_refresh_keeps_the_channel_and_expiry_closes_it(
    phx: Phx, db: psycopg.Connection[Any]
) -> None:
    join_ref = "jrealtime:t"
    await phx.join("realtime:t", [ORDERS], token(ttl=2))
    await phx.until("system")
    # exp has whole seconds: the first token ends within 2 s, the second 4-5 s after it.
    await phx.push("realtime:t", "access_token", {"access_token": token(ttl=5)}, join_ref)
    await asyncio.sleep(2.2)  # past the first token's exp
    order_id = insert_order(db)
    *_, payload = await phx.until("postgres_changes")
    assert payload["data"]["record"]["id"] == order_id
    # The refreshed token runs out too: a system error, then phx_close; the socket stays open.
    jr, _, topic, event, system = await phx.until("system", wait_s=6)
    assert (topic, system["extension"], system["status"]) == ("realtime:t", "system", "error")
    assert system["message"].startswith("token_expired: ")
    jr2, ref, topic, event, payload = await phx.recv()
    assert (topic, event, payload) == ("realtime:t", "phx_close", {})
    if phx.vsn == "2.0.0":
        assert jr == jr2 == ref == join_ref
    insert_order(db)
    assert await phx.silent_for(0.3)
    await phx.push("phoenix", "heartbeat", {})
    assert (await phx.recv())[3] == "phx_reply"


async def test_a_bad_access_token_closes_the_channel(phx: Phx) -> None:
    await phx.join("realtime:t", [ORDERS], token())
    await phx.until("system")
    await phx.push("realtime:t", "access_token", {"access_token": token(scopes=())}, "j")
    *_, system = await phx.until("system")
    assert system["message"].startswith("forbidden: ")
    assert (await phx.recv())[3] == "phx_close"


async def test_leave_replies_then_closes_and_stops_events(
    phx: Phx, db: psycopg.Connection[Any]
) -> None:
    await phx.join("realtime:l", [ORDERS], token())
    await phx.until("system")
    ref = await phx.push("realtime:l", "phx_leave", {}, "jrealtime:l")
    _, got_ref, _, event, payload = await phx.recv()
    assert (got_ref, event, payload) == (ref, "phx_reply", {"status": "ok", "response": {}})
    assert (await phx.recv())[3] == "phx_close"
    insert_order(db)
    assert await phx.silent_for(0.5)


async def test_idle_socket_is_closed(pg: Any) -> None:
    gateway = await start_gateway(pg.dsn, idle_timeout_s=0.5)
    try:
        async with websockets.connect(_url(gateway)) as socket:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(socket.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4004
        async with httpx.AsyncClient() as http:  # the native endpoint is not affected
            assert (await http.get(f"{gateway.http_url}/healthz")).status_code == 200
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)


async def test_a_foreign_origin_gets_403_and_json(gateway: Gateway) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(_url(gateway), origin=websockets.Origin("https://evil.example")):
            pass
    assert refused.value.response.status_code == 403
    assert loads(refused.value.response.body)["code"] == "origin_forbidden"


async def test_joining_a_joined_topic_again_closes_the_old_one_first(phx: Phx) -> None:
    await phx.join("realtime:twice", [ORDERS], token())
    await phx.until("system")
    ref = await phx.push("realtime:twice", "phx_join",
                         {"config": {"postgres_changes": [ORDERS]}, "access_token": token()},
                         join_ref="second")
    jr, close_ref, topic, event, _ = await phx.recv()
    assert (topic, event) == ("realtime:twice", "phx_close")
    if phx.vsn == "2.0.0":
        assert jr == close_ref == "jrealtime:twice"
    _, reply_ref, _, event, payload = await phx.recv()
    assert (reply_ref, event, payload["status"]) == (ref, "phx_reply", "ok")


async def test_truncate_is_not_sent_to_supabase_clients(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    async with websockets.connect(_url(gateway)) as socket:
        phx = Phx(socket, "2.0.0")
        await phx.join("realtime:t", [ORDERS], token())
        await phx.until("system")
        db.execute("CREATE TEMP TABLE keep AS SELECT * FROM orders")
        db.execute("TRUNCATE orders")
        db.execute("INSERT INTO orders OVERRIDING SYSTEM VALUE SELECT * FROM keep")
        insert_order(db)
        *_, payload = await phx.until("postgres_changes")
        assert payload["data"]["type"] == "INSERT"  # the first frame after the TRUNCATE


async def test_an_unreadable_frame_closes_the_socket_with_a_system_error(phx: Phx) -> None:
    await phx.join("realtime:x", [], token())
    await phx.socket.send("{not json")
    *_, system = await phx.recv()
    assert system["status"] == "error" and system["message"].startswith("bad_frame: ")
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await phx.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_shutdown_closes_1012_so_clients_reconnect(pg: Any) -> None:
    gateway = await start_gateway(pg.dsn)
    try:
        async with websockets.connect(_url(gateway)) as connection:
            phx = Phx(connection, "2.0.0")
            await phx.join("realtime:s", [ORDERS], token())
            await phx.until("system")
            stopping = asyncio.create_task(gateway.stop())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await phx.until("never")
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
            await stopping
    finally:
        drop_slot(pg.dsn, gateway.settings.slot)


async def test_a_slow_supabase_client_is_closed_4008_without_slowing_others(
    pg: Any, db: psycopg.Connection[Any]
) -> None:
    gateway = await start_gateway(pg.dsn, max_outbox_bytes=1024 * 1024, max_frame_bytes=4096)
    try:
        tiny = socket.socket()  # the slow client stops reading: a tiny receive buffer
        tiny.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        tiny.connect(("127.0.0.1", gateway.settings.port))
        async with (
            websockets.connect(_url(gateway), sock=tiny, max_queue=1) as slow_socket,
            websockets.connect(_url(gateway, "1.0.0"), max_queue=None) as fast_socket,
        ):
            slow, fast = Phx(slow_socket, "2.0.0"), Phx(fast_socket, "1.0.0")
            for client in (slow, fast):
                await client.join("realtime:bulk", [ORDERS], token())
                await client.until("system")
            customer = db.execute("INSERT INTO customers (name) VALUES ('S') RETURNING id")
            row = customer.fetchone()
            assert row is not None
            # 30 transactions of 100 rows, each read by the fast client before the next: at most
            # ~230 KB is ever owed to it (its outbox holds 1 MiB however busy the machine), while
            # the slow one, which reads nothing, is owed all ~7 MB.
            for _ in range(30):
                db.execute(
                    "INSERT INTO orders (customer_id, status) "
                    "SELECT %s, repeat('s', 2000) FROM generate_series(1, 100)",
                    (row[0],),
                )
                for _ in range(100):
                    await fast.until("postgres_changes")
            last = None
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    last = await slow.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008
            assert last is not None and last[3] == "system"
            assert last[4]["message"].startswith("slow_consumer: ")
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)


async def test_a_wildcard_binding_covers_the_tables_the_token_may_read(
    phx: Phx, db: psycopg.Connection[Any]
) -> None:
    user = str(uuid.uuid4())
    # No orders:read: `public.*` is notifications (own rows only), and customers and orders
    # are left out rather than refused.
    _, reply = await phx.join("realtime:all", [{"event": "*", "schema": "public"}],
                              token(user, scopes=()))
    assert reply["status"] == "ok"
    assert reply["response"]["postgres_changes"][0]["schema"] == "public"  # echoed as sent
    await phx.until("system")
    insert_order(db)
    db.execute("INSERT INTO notifications (user_id, title) VALUES (%s, 'w')", (user,))
    *_, payload = await phx.until("postgres_changes")
    assert payload["data"]["table"] == "notifications"
    assert await phx.silent_for(0.3)
