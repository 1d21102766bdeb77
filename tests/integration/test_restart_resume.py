"""Resume across a restart of a single gateway process (no Redis): a client connected before the
restart resumes after it with nothing lost, because offsets are stream positions and the slot
is confirmed only up to the oldest event the history still holds."""

from __future__ import annotations

import asyncio
import secrets
import signal
from typing import Any

import httpx
import psycopg
import pytest

from gateway.changes import ChangeId
from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import (
    connect,
    drop_slot,
    free_port,
    insert_statuses,
    rtgw_serve,
    serve_env,
    sse_events,
    take,
    token,
    wait_ready,
)

PUBLISHER = ("orders:read", "rtgw:publish")


def _confirmed_flush(db: psycopg.Connection[Any], slot: str) -> int:
    row = db.execute(
        "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots "
        "WHERE slot_name = %s", (slot,)
    ).fetchone()
    assert row is not None
    return int(row[0])


async def _clean_up(
    dsn: str, slot: str, *processes: asyncio.subprocess.Process | None
) -> None:
    for process in processes:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
    drop_slot(dsn, slot)


def _what(event: dict[str, Any]) -> str:
    if "message" in event:
        return f"message:{event['message']['payload']['n']}"
    return str(event["change"]["new"]["status"])


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_a_client_resumes_across_a_gateway_restart(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], how: signal.Signals
) -> None:
    slot, port = f"restart_{secrets.token_hex(4)}", free_port()
    env = serve_env(pg.dsn, slot, port)
    http_url, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1/ws"
    found = db.execute("INSERT INTO customers (name) VALUES ('restart') RETURNING id").fetchone()
    assert found is not None
    customer = found[0]
    mine = f"customer_id=eq.{customer}"
    first = await rtgw_serve(env)
    second = None
    try:
        await wait_ready(http_url)
        async with connect(ws_url) as client:
            await client.auth(token())
            await client.subscribe("orders", filter=mine)
            insert_statuses(db, customer, "seen-0", "seen-1", "seen-2")
            seen = await client.events(3)
        # The client is away. The gateway sees two more rows and a published event, then dies.
        insert_statuses(db, customer, "away-0", "away-1")
        async with httpx.AsyncClient(base_url=http_url) as http:
            published = await http.post(
                "/v1/publish",
                headers={"Authorization": f"Bearer {token(scopes=PUBLISHER)}"},
                json={"channel": "orders", "event": "note", "payload": {"n": 1}},
            )
        assert published.status_code == 200, published.text
        first.send_signal(how)
        await first.wait()
        insert_statuses(db, customer, "down-0", "down-1", "down-2")  # while no gateway runs

        second = await rtgw_serve(env)
        await wait_ready(http_url)
        async with connect(ws_url) as client, connect(ws_url) as newcomer:
            await client.auth(token())
            await newcomer.auth(token())
            last = seen[-1]
            resumed = await client.subscribe(
                "orders", filter=mine, since={"offset": last["offset"], "epoch": last["epoch"]}
            )
            assert resumed["recovered"] is True
            fresh = await newcomer.subscribe("orders", filter=mine)
            assert "recovered" not in fresh  # no since, no resume
            missed = await client.events(6)
            insert_statuses(db, customer, "live-0")
            live = await client.events(1)
            [only_live] = await newcomer.events(1)  # the replay is history, not news
            assert await client.silent_for(0.3) and await newcomer.silent_for(0.1)

            # A position older than anything the history holds is not recovered.
            async with connect(ws_url) as stale:
                await stale.auth(token())
                old = await stale.subscribe(
                    "orders", filter=mine, since={"offset": 1, "epoch": last["epoch"]}
                )
                assert old["recovered"] is False

            # The slot keeps the history: it is confirmed no further than its oldest event.
            oldest_commit = ChangeId.parse(seen[0]["change"]["id"]).lsn
            assert _confirmed_flush(db, slot) <= oldest_commit
    finally:
        await _clean_up(pg.dsn, slot, first, second)
        db.execute("DELETE FROM orders WHERE customer_id = %s", (customer,))

    assert [_what(e) for e in seen] == ["seen-0", "seen-1", "seen-2"]
    assert [_what(e) for e in missed] == [
        "away-0", "away-1", "message:1", "down-0", "down-1", "down-2"
    ]
    assert [_what(e) for e in live] == ["live-0"] and _what(only_live) == "live-0"
    assert only_live["offset"] == live[0]["offset"]
    offsets = [(e["epoch"], e["offset"]) for e in seen + missed + live]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert missed[2]["message"]["id"] == published.json()["id"]
    assert published.json()["topics"] == []  # nobody subscribed to "orders" unfiltered then


async def test_a_restart_replays_the_history_of_many_partitions(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any]
) -> None:
    """Partitioned channels resume per user: each user gets only their own missed events."""
    slot, port = f"restart_{secrets.token_hex(4)}", free_port()
    env = serve_env(pg.dsn, slot, port)
    http_url, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1/ws"
    users = [f"00000000-0000-4000-8000-{n:012d}" for n in range(1, 4)]
    first = await rtgw_serve(env)
    second = None
    try:
        await wait_ready(http_url)
        positions = {}
        for user in users:
            async with connect(ws_url) as client:
                await client.auth(token(sub=user, scopes=("notifications:read",)))
                subscribed = await client.subscribe("my_notifications")
                positions[user] = {"offset": subscribed["offset"], "epoch": subscribed["epoch"]}
        for round_ in range(2):
            for user in users:
                db.execute("INSERT INTO notifications (user_id, title, body) VALUES (%s, 't', %s)",
                           (user, f"{user[-1]}-{round_}"))
        first.send_signal(signal.SIGKILL)
        await first.wait()
        second = await rtgw_serve(env)
        await wait_ready(http_url)
        bodies = {}
        for user in users:
            async with connect(ws_url) as client:
                await client.auth(token(sub=user, scopes=("notifications:read",)))
                resumed = await client.subscribe("my_notifications", since=positions[user])
                assert resumed["recovered"] is True
                events = await client.events(2)
                assert await client.silent_for(0.2)
                bodies[user] = [e["change"]["new"]["body"] for e in events]
    finally:
        await _clean_up(pg.dsn, slot, first, second)
        db.execute("DELETE FROM notifications WHERE user_id = ANY(%s)", (users,))
    assert bodies == {user: [f"{user[-1]}-0", f"{user[-1]}-1"] for user in users}



async def test_an_sse_stream_resumes_across_a_restart_with_last_event_id(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any]
) -> None:
    slot, port = f"restart_{secrets.token_hex(4)}", free_port()
    env = serve_env(pg.dsn, slot, port)
    http_url = f"http://127.0.0.1:{port}"
    user = "00000000-0000-4000-8000-0000000005e5"
    headers = {"Authorization": f"Bearer {token(sub=user, scopes=())}"}
    params = {"channel": "my_notifications"}
    first = await rtgw_serve(env)
    second = None
    try:
        await wait_ready(http_url)
        async with httpx.AsyncClient(base_url=http_url, timeout=20) as http:
            async with http.stream("GET", "/v1/sse", params=params, headers=headers) as response:
                stream = sse_events(response)
                await take(stream, 2)  # ready, subscribed
                db.execute("INSERT INTO notifications (user_id, title) VALUES (%s, 'before')",
                           (user,))
                (before,) = await take(stream, 1)
            first.send_signal(signal.SIGKILL)
            await first.wait()
            db.execute("INSERT INTO notifications (user_id, title) VALUES (%s, 'while down')",
                       (user,))
            second = await rtgw_serve(env)
            await wait_ready(http_url)
            resume = {**headers, "Last-Event-ID": before["id"]}
            async with http.stream("GET", "/v1/sse", params=params, headers=resume) as response:
                _, subscribed, missed = await take(sse_events(response), 3)
    finally:
        await _clean_up(pg.dsn, slot, first, second)
        db.execute("DELETE FROM notifications WHERE user_id = %s", (user,))
    assert before["data"]["change"]["new"]["title"] == "before"
    assert subscribed["data"]["recovered"] is True
    assert missed["data"]["change"]["new"]["title"] == "while down"
    position = (missed["data"]["epoch"], missed["data"]["offset"])
    assert position > (before["data"]["epoch"], before["data"]["offset"])


async def test_a_quiet_partition_resumes_after_a_clean_restart(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any]
) -> None:
    """History bounded to 3 events in total pushes the quiet user's only event out while a
    busy user's events arrive, and the slot moves past it. A clean stop leaves the history's
    floors in the slot, so the restarted gateway still knows nothing of the quiet user's was
    lost since: it resumes. (Without the note it could only answer recovered: false.)"""
    slot, port = f"restart_{secrets.token_hex(4)}", free_port()
    env = serve_env(pg.dsn, slot, port, history_total="3")
    http_url, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1/ws"
    quiet, busy = "00000000-0000-4000-8000-00000000a000", "00000000-0000-4000-8000-00000000b000"
    scopes = ("notifications:read",)
    first = await rtgw_serve(env)
    second = None
    try:
        await wait_ready(http_url)
        async with connect(ws_url) as client:
            await client.auth(token(sub=quiet, scopes=scopes))
            before = await client.subscribe("my_notifications")
            db.execute("INSERT INTO notifications (user_id, title) VALUES (%s, 'only')", (quiet,))
            (seen,) = await client.events(1)
        for n in range(5):
            db.execute("INSERT INTO notifications (user_id, title) VALUES (%s, %s)",
                       (busy, f"busy-{n}"))
        await asyncio.sleep(0.5)  # routed (and the quiet event pushed out) before the stop
        first.send_signal(signal.SIGTERM)
        await first.wait()
        # The slot will not replay the quiet user's event: only the note can vouch for it.
        assert _confirmed_flush(db, slot) > ChangeId.parse(seen["change"]["id"]).lsn
        second = await rtgw_serve(env)
        await wait_ready(http_url)
        async with connect(ws_url) as client:
            await client.auth(token(sub=quiet, scopes=scopes))
            resumed = await client.subscribe(
                "my_notifications", since={"offset": seen["offset"], "epoch": seen["epoch"]}
            )
            assert await client.silent_for(0.2)
            await client.send({"type": "unsubscribe", "topic": resumed["topic"]})
            await client.recv()
            too_old = await client.subscribe(
                "my_notifications", since={"offset": before["offset"], "epoch": before["epoch"]}
            )
    finally:
        await _clean_up(pg.dsn, slot, first, second)
        db.execute("DELETE FROM notifications WHERE user_id IN (%s, %s)", (quiet, busy))
    assert resumed["recovered"] is True
    assert too_old["recovered"] is False  # its event was dropped: that much is still known
