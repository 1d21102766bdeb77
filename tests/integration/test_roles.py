"""Roles from the database (``[roles]``, channels/roles.toml): a real gateway, real Postgres and
real clients (native, SSE, realtime-js, realtime-py). A revocation ends the user's live
subscriptions that needed it, before any later change reaches them; a grant lets the next
subscribe succeed on the same connection; the cache follows the stream.

Each test knows the stream has passed a commit by a marker committed after it: a notification
for the user, which their own ``my_notifications`` subscription receives (stream order)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

from gateway.app import create_app
from gateway.errors import ConfigError
from gateway.node import Node
from gateway.settings import Settings
from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import (
    API_KEY,
    REPO,
    TEST_SECRET,
    Client,
    Gateway,
    connect,
    insert_order,
    sse_events,
    token,
)
from tests.integration.test_realtime_js import ALL_ORDERS, JsClient, js  # noqa: F401
from tests.integration.test_realtime_py import _ready, _subscribe

MINE = {"event": "*", "schema": "public", "table": "notifications"}


def grant(db: psycopg.Connection[Any], user: str, role: str) -> None:
    db.execute("INSERT INTO public.user_roles (user_id, role) VALUES (%s, %s)", (user, role))


def revoke(db: psycopg.Connection[Any], user: str, role: str) -> None:
    db.execute("DELETE FROM public.user_roles WHERE user_id = %s AND role = %s", (user, role))


def notify(db: psycopg.Connection[Any], user: str, title: str) -> None:
    db.execute(
        "INSERT INTO public.notifications (user_id, title, body) VALUES (%s, %s, '')",
        (user, title),
    )


def new_user() -> str:
    return str(uuid.uuid4())


async def metric(gateway: Gateway, name: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{gateway.http_url}/metrics")).text
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def frames_until_marker(client: Client, title: str) -> list[dict[str, Any]]:
    """Every frame up to the marker notification ``title`` (left out)."""
    seen = []
    while True:
        frame = await client.recv()
        if frame["type"] == "event" and frame["change"]["new"].get("title") == title:
            return seen
        seen.append(frame)


async def test_revoking_a_role_ends_a_live_native_subscription_before_anything_later(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    user = new_user()
    grant(db, user, "support")
    async with connect(gateway.ws_url) as client:
        ready = await client.auth(token(user, scopes=()))  # orders:read comes from the role
        assert ready["type"] == "ready"
        assert (await client.subscribe("my_notifications"))["type"] == "subscribed"
        assert (await client.subscribe("orders"))["topic"] == "orders"
        before = insert_order(db)
        assert (await client.events(1))[0]["change"]["new"]["id"] == before

        revoke(db, user, "support")
        insert_order(db)  # committed after the revocation
        notify(db, user, "after the order")

        seen = await frames_until_marker(client, "after the order")
        assert seen == [
            {"type": "unsubscribed", "ref": None, "topic": "orders", "reason": "forbidden"}
        ]


async def test_a_grant_lets_the_next_subscribe_succeed_on_the_same_connection(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    user = new_user()
    async with connect(gateway.ws_url) as client:
        assert (await client.auth(token(user, scopes=())))["type"] == "ready"
        refused = await client.subscribe("orders")
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        assert (await client.subscribe("my_notifications"))["type"] == "subscribed"

        grant(db, user, "admin")
        notify(db, user, "granted")
        assert await frames_until_marker(client, "granted") == []

        assert (await client.subscribe("orders"))["type"] == "subscribed"
        order = insert_order(db)
        assert (await client.events(1))[0]["change"]["new"]["id"] == order


async def test_the_cache_follows_the_stream_without_querying_again(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    user = new_user()
    async with connect(gateway.ws_url) as first:
        assert (await first.auth(token(user, scopes=())))["type"] == "ready"  # read: no roles
        assert (await first.subscribe("my_notifications"))["type"] == "subscribed"
        queries = await metric(gateway, "rtgw_roles_queries_total")
        hits = await metric(gateway, "rtgw_roles_hits_total")

        grant(db, user, "support")
        notify(db, user, "granted")
        await frames_until_marker(first, "granted")

        async with connect(gateway.ws_url) as second:  # the same user, from the cache
            assert (await second.auth(token(user, scopes=())))["type"] == "ready"
            assert (await second.subscribe("orders"))["type"] == "subscribed"
        assert await metric(gateway, "rtgw_roles_queries_total") == queries
        assert await metric(gateway, "rtgw_roles_hits_total") == hits + 1
        assert await metric(gateway, "rtgw_roles_grants_total") >= 1


async def test_a_revocation_ends_an_sse_stream_with_an_error_and_a_close(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    user = new_user()
    grant(db, user, "support")
    headers = {"Authorization": f"Bearer {token(user, scopes=())}"}
    async with httpx.AsyncClient(timeout=15) as http, http.stream(
        "GET", f"{gateway.http_url}/v1/sse", params={"channel": "orders"}, headers=headers
    ) as response:
        assert response.status_code == 200
        events = sse_events(response)
        kinds = [(await anext(events))["event"] for _ in range(2)]
        assert kinds == ["ready", "subscribed"]
        revoke(db, user, "support")
        insert_order(db)  # after the revocation: never sent
        ending = [event async for event in events]
    assert [event["event"] for event in ending] == ["unsubscribed", "error", "close"]
    assert ending[0]["data"]["reason"] == "forbidden"
    assert ending[1]["data"]["code"] == "forbidden"
    assert ending[2]["data"] == {"code": 1008, "reason": "forbidden"}


async def test_revoking_a_role_ends_a_live_realtime_js_channel_with_a_channel_error(
    js: JsClient, db: psycopg.Connection[Any]  # noqa: F811
) -> None:
    user = new_user()
    grant(db, user, "support")
    await js.run("auth", token=token(user, scopes=()))
    await js.subscribed("orders", [ALL_ORDERS])
    await js.subscribed("mine", [MINE])
    before = insert_order(db)
    assert (await js.change("orders"))["new"]["id"] == before

    revoke(db, user, "support")
    insert_order(db)  # after the revocation
    notify(db, user, "after the order")

    errored = await js.status("orders")
    assert errored["status"] == "CHANNEL_ERROR"
    assert errored["reason"].startswith(
        "forbidden: You no longer have permission to read from this Channel topic: orders"
    )
    assert (await js.status("orders"))["status"] == "CLOSED"
    marker = await js.change("mine")
    assert marker["new"]["title"] == "after the order"
    assert js.has_no("change", "orders")
    assert js.has_no("status", "mine")  # the socket and its other channel live on


async def test_a_grant_lets_the_next_realtime_js_join_succeed_on_the_same_socket(
    js: JsClient, db: psycopg.Connection[Any]  # noqa: F811
) -> None:
    user = new_user()
    await js.run("auth", token=token(user, scopes=()))
    await js.run("subscribe", name="refused", bindings=[ALL_ORDERS])
    assert (await js.status("refused"))["status"] == "CHANNEL_ERROR"
    await js.run("remove", name="refused")
    await js.subscribed("mine", [MINE])

    grant(db, user, "support")
    notify(db, user, "granted")
    assert (await js.change("mine"))["new"]["title"] == "granted"

    await js.subscribed("orders", [ALL_ORDERS])
    order = insert_order(db)
    assert (await js.change("orders"))["new"]["id"] == order


async def test_revoking_a_role_ends_a_live_realtime_py_channel_with_a_channel_error(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    user = new_user()
    grant(db, user, "support")
    client = AsyncRealtimeClient(gateway.realtime_url, API_KEY, auto_reconnect=False)
    try:
        await client.set_auth(token(user, scopes=()))
        _, orders = await _subscribe(client, "orders")
        _, mine = await _subscribe(client, "mine", table="notifications")
        await _ready(orders)
        await _ready(mine)

        revoke(db, user, "support")
        insert_order(db)  # after the revocation
        notify(db, user, "after the order")

        marker = await mine.change()
        assert marker["data"]["record"]["title"] == "after the order"
        await asyncio.wait_for(orders.closed.wait(), 10)
        states = [state for state, _ in orders.states]
        assert states[-2:] == [RealtimeSubscribeStates.CHANNEL_ERROR,
                               RealtimeSubscribeStates.CLOSED]
        error = orders.states[-2][1]
        assert "You no longer have permission to read from this Channel topic: orders" in str(
            error
        )
        assert orders.changes.empty()
    finally:
        await client.close()


async def test_rtgw_token_claims_without_a_user_have_no_roles(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    """A token whose sub is not a uuid (the roles table's user column) holds no roles."""
    async with connect(gateway.ws_url) as client:
        assert (await client.auth(token("not-a-uuid", scopes=())))["type"] == "ready"
        refused = await client.subscribe("orders")
        assert refused["code"] == "forbidden"



async def test_a_gap_on_the_roles_table_reads_the_connected_users_roles_again(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    """A revocation the stream lost (here: committed where the stream does not see it) is
    caught up with when the source reports a gap on the roles table."""
    node: Node = gateway.server.config.app.state.node
    user = new_user()
    grant(db, user, "support")
    async with connect(gateway.ws_url) as client:
        assert (await client.auth(token(user, scopes=())))["type"] == "ready"
        assert (await client.subscribe("orders"))["type"] == "subscribed"
        db.execute("ALTER PUBLICATION rtgw DROP TABLE public.user_roles")
        try:  # the stream never sees this revocation
            db.execute("DELETE FROM public.user_roles WHERE user_id = %s", (user,))
        finally:
            db.execute("ALTER PUBLICATION rtgw ADD TABLE public.user_roles")
        order = insert_order(db)  # the stream is past the revocation: the order arrives
        assert (await client.events(1))[0]["change"]["new"]["id"] == order
        node.notify_gap([("public", "user_roles")], "slot_invalidated: a test")
        frame = await client.recv()
        assert frame == {"type": "unsubscribed", "ref": None, "topic": "orders",
                         "reason": "forbidden"}


def test_the_gateway_refuses_to_start_on_a_roles_table_it_cannot_use(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    (tmp_path / "c.toml").write_text(
        '[channels.orders]\ntable = "public.orders"\n'
        '[roles]\ntable = "public.no_such_roles"\nuser_column = "user_id"\n'
        'role_column = "role"\nclaim = "sub"\n[roles.scopes]\nadmin = ["orders:read"]\n',
        encoding="utf-8",
    )
    settings = Settings(database_url=pg.dsn, jwt_secret=TEST_SECRET, channels=tmp_path,
                        slot="roles_never_made")
    with pytest.raises(ConfigError) as refused:
        create_app(settings)
    assert str(refused.value) == "c.toml: [roles]: table public.no_such_roles does not exist"


def test_the_gateway_refuses_to_start_when_its_publication_lacks_the_roles_table(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any]
) -> None:
    publication = f"roles_{uuid.uuid4().hex[:6]}"
    db.execute(f"CREATE PUBLICATION {publication} FOR TABLE public.orders")
    settings = Settings(database_url=pg.dsn, jwt_secret=TEST_SECRET, channels=REPO / "channels",
                        slot="roles_never_made", publication=publication)
    try:
        with pytest.raises(ConfigError) as refused:
            create_app(settings)
    finally:
        db.execute(f"DROP PUBLICATION {publication}")
    assert str(refused.value) == (
        f"publication {publication} does not include public.user_roles, so its changes never "
        f"arrive: ALTER PUBLICATION {publication} ADD TABLE public.user_roles;"
    )
