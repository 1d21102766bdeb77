"""Supabase's JavaScript client, ``@supabase/realtime-js`` (vsn 2.0.0), unchanged, against the
Supabase-compatible endpoint of a running gateway with a real Postgres. The client runs in
Node (tests/js/client.mjs, installed from tests/js/package-lock.json by ``scripts/test``)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

from gateway.encoding import dumps_text, loads
from tests.conftest import API_KEY, REPO, Gateway, insert_order, token

JS = REPO / "tests" / "js"
Message = dict[str, Any]


class JsClient:
    """One Node process running realtime-js; commands in, observations out."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pending: list[Message] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.pending.append(loads(line))
            self._arrived.set()

    async def expect(self, match: Callable[[Message], bool], wait_s: float = 10.0) -> Message:
        async with asyncio.timeout(wait_s):
            while True:
                for index, message in enumerate(self.pending):
                    if match(message):
                        return self.pending.pop(index)
                self._arrived.clear()
                await self._arrived.wait()

    async def run(self, cmd: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(dumps_text({"cmd": cmd, **fields}).encode() + b"\n")
        await self.process.stdin.drain()
        done = await self.expect(lambda m: m.get("cmd") == cmd and m["type"] in ("done",
                                                                                   "failed"))
        assert done["type"] == "done", done

    async def status(self, channel: str, wait_s: float = 10.0) -> Message:
        return await self.expect(lambda m: m["type"] == "status" and m["channel"] == channel,
                                 wait_s)

    async def change(self, channel: str) -> Message:
        found = await self.expect(lambda m: m["type"] == "change" and m["channel"] == channel)
        payload: Message = found["payload"]
        return payload

    async def subscribed(self, channel: str, bindings: list[Message]) -> None:
        await self.run("subscribe", name=channel, bindings=bindings)
        assert (await self.status(channel))["status"] == "SUBSCRIBED"
        system = await self.expect(lambda m: m["type"] == "system" and m["channel"] == channel)
        assert system["payload"]["message"] == "Subscribed to PostgreSQL"

    def has_no(self, kind: str, channel: str) -> bool:
        return not any(m["type"] == kind and m["channel"] == channel for m in self.pending)


@pytest.fixture
async def js(gateway: Gateway) -> AsyncIterator[JsClient]:
    node = shutil.which("node")
    assert node is not None, "Node.js is required for the realtime-js tests"
    assert (JS / "node_modules" / "@supabase" / "realtime-js").is_dir(), (
        "run `npm ci --prefix tests/js` (scripts/test does)"
    )
    url = f"ws://127.0.0.1:{gateway.settings.port}/realtime/v1"
    process = await asyncio.create_subprocess_exec(
        node, "--experimental-websocket", "--no-warnings", str(JS / "client.mjs"), url, API_KEY,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    client = JsClient(process)
    try:
        yield client
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        await client._reader


ALL_ORDERS = {"event": "*", "schema": "public", "table": "orders"}


async def test_realtime_js_receives_insert_update_delete_with_and_without_filters(
    js: JsClient, db: psycopg.Connection[Any]
) -> None:
    await js.run("auth", token=token())
    await js.subscribed("all", [ALL_ORDERS])
    await js.subscribed("paid", [{"event": "UPDATE", "schema": "public", "table": "orders",
                                  "filter": "status=eq.paid,total=gte.10"}])

    order_id = insert_order(db, total=12)
    small = insert_order(db, total=1)
    db.execute("UPDATE orders SET status = 'paid' WHERE id IN (%s, %s)", (order_id, small))
    db.execute("DELETE FROM orders WHERE id = %s", (order_id,))

    got = [await js.change("all") for _ in range(5)]
    assert [(g["eventType"], (g["new"] or g["old"])["id"]) for g in got] == [
        ("INSERT", order_id), ("INSERT", small), ("UPDATE", order_id), ("UPDATE", small),
        ("DELETE", order_id),
    ]
    insert, update, delete = got[0], got[2], got[4]
    assert insert["schema"] == "public" and insert["table"] == "orders"
    assert insert["new"]["status"] == "pending" and insert["old"] == {}
    assert insert["new"]["total"] == 12  # realtime-js converts numeric by column type
    assert insert["commit_timestamp"].endswith("Z") and insert["errors"] is None
    assert update["new"]["status"] == "paid" and update["old"]["status"] == "pending"
    assert delete["new"] == {} and delete["old"]["id"] == order_id

    only = await js.change("paid")
    assert only["eventType"] == "UPDATE" and only["new"]["id"] == order_id
    await asyncio.sleep(0.3)
    assert js.has_no("change", "paid")


async def test_realtime_js_refreshes_its_token(js: JsClient, db: psycopg.Connection[Any]) -> None:
    await js.run("auth", token=token(ttl=3))
    await js.subscribed("refreshing", [ALL_ORDERS])
    await js.run("auth", token=token(ttl=300))  # setAuth pushes access_token to the channel
    await asyncio.sleep(3.2)  # the first token has expired by now
    order_id = insert_order(db)
    assert (await js.change("refreshing"))["new"]["id"] == order_id
    assert js.has_no("status", "refreshing")


async def test_realtime_js_is_refused_a_binding_it_may_not_read(js: JsClient) -> None:
    await js.run("auth", token=token(scopes=()))  # no orders:read
    await js.run("subscribe", name="not-mine", bindings=[ALL_ORDERS])
    refused = await js.status("not-mine")
    assert refused["status"] == "CHANNEL_ERROR"
    assert "forbidden: channel 'orders' requires scope 'orders:read'" in refused["error"]
    await js.run("remove", name="not-mine")


async def test_realtime_js_leaves(js: JsClient, db: psycopg.Connection[Any]) -> None:
    await js.run("auth", token=token())
    await js.subscribed("leaving", [ALL_ORDERS])
    await js.subscribed("staying", [ALL_ORDERS])
    await js.run("leave", name="leaving")
    left = await js.expect(lambda m: m["type"] == "left")
    assert left["result"] == "ok"
    assert (await js.status("leaving"))["status"] == "CLOSED"
    order_id = insert_order(db)
    assert (await js.change("staying"))["new"]["id"] == order_id
    await asyncio.sleep(0.3)
    assert js.has_no("change", "leaving")


async def test_realtime_js_broadcast_is_refused_without_breaking_the_socket(
    js: JsClient, db: psycopg.Connection[Any]
) -> None:
    await js.run("auth", token=token())
    await js.subscribed("room", [ALL_ORDERS])
    await js.run("broadcast", name="room", event="ping")  # a binary frame under vsn 2.0.0
    await js.expect(lambda m: m["type"] == "sent")
    order_id = insert_order(db)
    assert (await js.change("room"))["new"]["id"] == order_id
    assert js.has_no("status", "room")  # neither errored nor closed
