"""RTGW_SOURCE=supabase, driven for real: a second gateway whose upstream is the fake Supabase
Realtime server (``fake_supabase``: the first gateway's Supabase-compatible endpoint), so
Supabase's ``realtime`` client does the streaming."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import websockets

from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import (
    API_KEY,
    REPO,
    connect,
    drop_slot,
    insert_order,
    start_gateway,
    token,
    wait_ready,
)
from tests.integration.fake_supabase import service_key, start_fake_supabase
from tests.integration.phoenix_client import Phx


@pytest.fixture
def orders_only(tmp_path: Path) -> Path:
    """The downstream's channels: a service-role key reads every order. (Partitioned channels
    need a per-user upstream token, which a service-role source does not have; the upstream
    here, a fake, has no channel for customers, which the demo's customer lookup would need.)"""
    folder = tmp_path / "channels"
    folder.mkdir()
    demo = (REPO / "channels" / "orders.toml").read_text(encoding="utf-8")
    (folder / "orders.toml").write_text(demo.split("[channels.orders.enrich")[0], "utf-8")
    return folder


async def test_a_gateway_streams_from_a_supabase_endpoint_and_reports_gaps_on_reconnect(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], orders_only: Path
) -> None:
    key = service_key()
    upstream = await start_fake_supabase(pg.dsn, key)
    downstream = await start_gateway(
        pg.dsn, source="supabase", supabase_url=upstream.http_url,
        supabase_service_key=key, channels=orders_only,
    )  # start_gateway waited for /readyz: "Subscribed to PostgreSQL" arrived upstream
    try:
        phx_url = f"ws://127.0.0.1:{downstream.settings.port}/socket/websocket?apikey={API_KEY}"
        async with connect(downstream.ws_url) as client, websockets.connect(phx_url) as socket:
            await client.auth(token())
            subscribed = await client.subscribe("orders", filter="total=gt.100")
            assert subscribed["type"] == "subscribed"
            phx = Phx(socket, "1.0.0")  # a Supabase client of the downstream
            _, reply = await phx.join("realtime:o", [{"event": "*", "schema": "public",
                                                      "table": "orders"}], token())
            assert reply["status"] == "ok"
            await phx.until("system")

            insert_order(db, total=5.0)
            big = insert_order(db, total=123.45)
            (event,) = await client.events(1)
            change = event["change"]
            assert (change["op"], change["table"], change["new"]["id"]) == (
                "INSERT", "orders", big
            )
            assert change["new"]["total"] == "123.45" and change["old"] is None
            assert change["commit_time"].endswith("Z")
            assert await client.silent_for(0.3)

            # Publishing goes through the source here too, queued behind the changes received
            # (in memory: Supabase keeps nothing to replay), and numbered after them.
            async with httpx.AsyncClient(base_url=downstream.http_url) as http:
                sent = await http.post(
                    "/v1/publish",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"channel": "orders", "event": "note", "payload": {"n": 1}},
                )
            assert sent.status_code == 403, sent.text  # no rtgw:publish scope, not service_role
            publisher = token("pub", scopes=("orders:read", "rtgw:publish"))
            async with httpx.AsyncClient(base_url=downstream.http_url) as http:
                sent = await http.post(
                    "/v1/publish",
                    headers={"Authorization": f"Bearer {publisher}"},
                    json={"channel": "orders", "event": "note", "payload": {"n": 1}},
                )
            assert sent.status_code == 200, sent.text
            (note,) = await client.events(1)
            assert note["message"]["payload"] == {"n": 1} and note["offset"] > event["offset"]
            topics = sent.json()["topics"]  # the Supabase client's binding reads "orders"
            assert sorted(t["topic"] for t in topics) == ["orders", "orders?total=gt.100"]
            assert {(t["offset"], t["epoch"]) for t in topics} == {(note["offset"], note["epoch"])}

            # The upstream goes away and comes back: the downstream reconnects by itself and,
            # since Supabase Realtime cannot replay, tells its subscribers about the gap.
            port, slot = upstream.settings.port, upstream.settings.slot
            await upstream.stop()
            async with httpx.AsyncClient() as http:
                for _ in range(200):  # the downstream notices within its liveness check
                    if (await http.get(f"{downstream.http_url}/readyz")).status_code == 503:
                        break
                    await asyncio.sleep(0.05)
                else:
                    pytest.fail("the downstream never noticed that its upstream went away")
            # A join while the source is down is answered, but the readiness signal waits.
            _, reply = await phx.join("realtime:late", [{"event": "INSERT", "schema": "public",
                                                         "table": "orders"}], token())
            assert reply["status"] == "ok"
            assert await phx.silent_for(0.5)
            upstream = await start_fake_supabase(pg.dsn, key, port=port, slot=slot)
            await wait_ready(downstream.http_url)
            gap = await client.recv()
            assert gap["type"] == "gap" and gap["topic"] == "orders?total=gt.100"
            assert "cannot replay" in gap["reason"]
            notices = {}
            for _ in range(3):  # a gap for realtime:o and realtime:late, and late's readiness
                _, _, topic, _, notice = await phx.until("system")
                notices.setdefault(topic, []).append(notice["message"])
            assert notices["realtime:o"][0].startswith("gap: ")
            assert "Subscribed to PostgreSQL" in notices["realtime:late"]

            again = insert_order(db, total=999.0)
            (event,) = await client.events(1)
            assert event["change"]["new"]["id"] == again
            assert (event["epoch"], event["offset"]) > (gap["epoch"], gap["offset"])
    finally:
        await downstream.stop()
        await upstream.stop()
        drop_slot(pg.dsn, upstream.settings.slot)
