"""Several ``rtgw serve`` processes on one database and one Redis (``RTGW_BUS=redis``), real
WebSocket clients: one slot and one owner, the owner SIGKILLed mid-stream, nodes scaled away,
Redis lost and restarted under load."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
import websockets

from gateway.sources.embedded import EmbeddedPostgres
from gateway.tokens import mint_token
from tests.conftest import (
    API_KEY,
    TEST_SECRET,
    Client,
    connect,
    drop_slot,
    eventually,
    free_port,
    insert_order,
    rtgw_serve,
    serve_env,
    stop_process,
    token,
    wait_ready,
)
from tests.integration.fake_supabase import service_key, start_fake_supabase
from tests.integration.phoenix_client import Phx
from tests.integration.test_roles import frames_until_marker, grant, notify, revoke
from tests.integration.test_supabase_source import orders_only  # noqa: F401
from tests.redis_server import RedisServer, forget

TAKEOVER_S = 5.0  # RTGW_TAKEOVER_S's default

WAIT_S = 30.0  # generous bounds for a loaded machine; nothing here is a timing claim


@dataclass
class Node:
    process: asyncio.subprocess.Process
    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{self.http}/readyz")
        return response.status_code, response.json()

    async def owner(self) -> bool:
        with contextlib.suppress(httpx.TransportError):
            status, body = await self.readyz()
            return status == 200 and body["slot_owner"] is True
        return False


@dataclass
class Cluster:
    dsn: str
    redis_url: str
    slot: str
    settings: dict[str, str]
    nodes: list[Node] = field(default_factory=list)

    async def add(self, count: int = 1) -> list[Node]:
        """Start ``count`` nodes at once and wait until each is ready."""
        ports = [free_port() for _ in range(count)]
        started = [
            Node(await rtgw_serve(serve_env(
                self.dsn, self.slot, port, bus="redis", redis_url=self.redis_url,
                log_level="warning", **self.settings,
            )), port)
            for port in ports
        ]
        self.nodes.extend(started)
        await asyncio.gather(*(wait_ready(node.http, WAIT_S) for node in started))
        return started

    async def owner(self, among: list[Node] | None = None) -> Node:
        """The one node that owns the slot (waits until exactly one says so)."""
        nodes = self.nodes if among is None else among
        async with asyncio.timeout(WAIT_S):
            while True:
                owners = [n for n, own in zip(nodes, await asyncio.gather(
                    *(n.owner() for n in nodes)), strict=True) if own]
                if len(owners) == 1:
                    return owners[0]
                await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def cluster(
    pg: EmbeddedPostgres, redis_url: str, **settings: str
) -> AsyncIterator[Cluster]:
    slot = f"scale_{secrets.token_hex(4)}"
    running = Cluster(pg.dsn, redis_url, slot, settings)
    try:
        yield running
    finally:
        for node in running.nodes:
            await stop_process(node.process)
        drop_slot(pg.dsn, slot)
        forget(redis_url, f"rtgw:{slot}")


async def subscribed(
    clients: contextlib.AsyncExitStack, url: str, since: dict[str, Any] | None = None
) -> tuple[Client, dict[str, Any]]:
    """A client on ``url`` (closed with ``clients``), subscribed to ``orders`` (resuming from
    ``since``)."""
    client = await clients.enter_async_context(connect(url))
    assert (await client.auth(token()))["type"] == "ready"
    extra = {} if since is None else {"since": since}
    frame = await client.subscribe("orders", **extra)
    assert frame["type"] == "subscribed", frame
    return client, frame


@dataclass
class Reader:
    """Reads a client's order events in the background: ids in arrival order, the last
    position, and how the socket closed."""

    client: Client
    ids: list[int | str] = field(default_factory=list)  # order ids; "n" of published events
    gaps: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, Any] | None = None
    closed: int | None = None
    task: asyncio.Task[None] | None = None

    def start(self) -> Reader:
        self.task = asyncio.create_task(self._read())
        return self

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.client.recv(WAIT_S * 4)
                if frame["type"] == "event":
                    change, message = frame.get("change"), frame.get("message")
                    self.ids.append(change["new"]["id"] if change else message["payload"]["n"])
                    self.last = {"offset": frame["offset"], "epoch": frame["epoch"]}
                elif frame["type"] == "gap":
                    self.gaps.append(frame)
        except websockets.ConnectionClosed as exc:
            self.closed = exc.rcvd.code if exc.rcvd is not None else None

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def insert(dsn: str, count: int, pause_s: float = 0.0) -> list[int]:
    """Commit ``count`` orders, one per transaction; their ids in commit order."""
    import time

    ids = []
    with psycopg.connect(dsn, autocommit=True) as db:
        customer = db.execute("INSERT INTO customers (name) VALUES ('scale') RETURNING id")
        who = customer.fetchone()
        assert who is not None
        for _ in range(count):
            row = db.execute(
                "INSERT INTO orders (customer_id) VALUES (%s) RETURNING id", (who[0],)
            ).fetchone()
            assert row is not None
            ids.append(int(row[0]))
            if pause_s:
                time.sleep(pause_s)
    return ids


def slots(dsn: str, slot: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as db:
        return db.execute(
            "SELECT slot_name, active, confirmed_flush_lsn - '0/0'::pg_lsn FROM "
            "pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchall()


def current_lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as db:
        row = db.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
        assert row is not None
        return int(row[0])


async def test_several_nodes_starting_at_once_make_one_slot_one_owner_and_no_duplicates(
    pg: EmbeddedPostgres, redis_url: str
) -> None:
    publication = f"pub_{secrets.token_hex(4)}"  # an empty database: nothing exists yet
    async with cluster(pg, redis_url, publication=publication) as running, \
            contextlib.AsyncExitStack() as clients:
        nodes = await running.add(3)
        owner = await running.owner()
        assert [row[0] for row in slots(pg.dsn, running.slot)] == [running.slot]
        async with httpx.AsyncClient() as http:
            metrics = [(await http.get(f"{node.http}/metrics")).text for node in nodes]
        assert [m.count("\nrtgw_slot_owner 1.0") for m in metrics] == [
            int(node is owner) for node in nodes]
        readers = [Reader((await subscribed(clients, node.ws))[0]).start() for node in nodes]
        ids = await asyncio.to_thread(insert, pg.dsn, 20)
        await eventually(lambda: all(len(r.ids) >= 20 for r in readers), WAIT_S)
        await asyncio.sleep(0.5)  # anything duplicated would have arrived by now
        assert [reader.ids for reader in readers] == [ids] * 3
        assert await running.owner() is owner
        for reader in readers:
            await reader.stop()
    with psycopg.connect(pg.dsn, autocommit=True) as db:
        db.execute(f"DROP PUBLICATION IF EXISTS {publication}")


async def test_sigkill_of_the_owner_mid_stream_loses_and_duplicates_nothing(
    pg: EmbeddedPostgres, redis_url: str
) -> None:
    async with cluster(pg, redis_url) as running, contextlib.AsyncExitStack() as clients:
        await running.add(2)
        owner = await running.owner()
        survivor = next(node for node in running.nodes if node is not owner)
        on_survivor = Reader((await subscribed(clients, survivor.ws))[0]).start()
        moving_client, moving_sub = await subscribed(clients, owner.ws)
        moving = Reader(moving_client).start()
        writer = asyncio.create_task(asyncio.to_thread(insert, pg.dsn, 150, 0.02))
        await eventually(lambda: len(on_survivor.ids) >= 40, WAIT_S)
        owner.process.send_signal(signal.SIGKILL)
        await owner.process.wait()
        await eventually(lambda: moving.done, WAIT_S)
        since = moving.last or {"offset": moving_sub["offset"], "epoch": moving_sub["epoch"]}
        resumed_client, resumed = await subscribed(clients, survivor.ws, since)
        assert resumed["recovered"] is True
        resumed_reader = Reader(resumed_client).start()
        ids = await writer
        await eventually(lambda: len(on_survivor.ids) >= len(ids), WAIT_S)
        await eventually(lambda: len(moving.ids) + len(resumed_reader.ids) >= len(ids), WAIT_S)
        await asyncio.sleep(0.5)  # anything duplicated would have arrived by now
        assert on_survivor.ids == ids
        assert moving.ids + resumed_reader.ids == ids
        assert await running.owner([survivor]) is survivor
        for reader in (on_survivor, resumed_reader):
            await reader.stop()


async def test_a_node_scaled_away_leaves_no_slot_and_pins_no_wal(
    pg: EmbeddedPostgres, redis_url: str
) -> None:
    async with cluster(pg, redis_url, history_age_s="1") as running:
        await running.add(2)
        owner = await running.owner()
        standby = next(node for node in running.nodes if node is not owner)
        await stop_process(standby.process)  # a standby scaled away
        running.nodes.remove(standby)
        (replacement,) = await running.add(1)
        await stop_process(owner.process)  # the owner scaled away: the new node takes over
        running.nodes.remove(owner)
        assert await running.owner() is replacement
        await asyncio.to_thread(insert, pg.dsn, 5)
        written = current_lsn(pg.dsn)

        def confirmed_past_the_writes() -> bool:
            found = slots(pg.dsn, running.slot)
            return len(found) == 1 and found[0][1] is True and int(found[0][2]) >= written

        await eventually(confirmed_past_the_writes, WAIT_S)
        with psycopg.connect(pg.dsn, autocommit=True) as db:
            ours = db.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE %s",
                              (f"{running.slot}%",)).fetchone()
        assert ours == (1,)


async def test_any_node_publishes_in_order_with_the_changes(
    pg: EmbeddedPostgres, redis_url: str
) -> None:
    async with cluster(pg, redis_url) as running, contextlib.AsyncExitStack() as clients:
        nodes = await running.add(2)
        owner = await running.owner()
        standby = next(node for node in nodes if node is not owner)
        readers = [Reader((await subscribed(clients, node.ws))[0]).start() for node in nodes]
        before = await asyncio.to_thread(insert, pg.dsn, 2)
        publisher = mint_token(TEST_SECRET, "backend", ["orders:read", "rtgw:publish"], 60)
        async with httpx.AsyncClient(base_url=standby.http) as http:
            sent = await http.post(
                "/v1/publish", headers={"Authorization": f"Bearer {publisher}"},
                json={"channel": "orders", "event": "note", "payload": {"n": "published"}},
            )
        assert sent.status_code == 200, sent.text
        assert sent.json()["delivered"] == 1  # the subscribers of the node that took it
        after = await asyncio.to_thread(insert, pg.dsn, 2)
        await eventually(lambda: all(len(r.ids) >= 5 for r in readers), WAIT_S)
        await asyncio.sleep(0.3)  # anything duplicated would have arrived by now
        assert [r.ids for r in readers] == [[*before, "published", *after]] * 2
        for reader in readers:
            await reader.stop()


async def test_a_supabase_client_on_a_standby_receives_the_changes(
    pg: EmbeddedPostgres, redis_url: str
) -> None:
    async with cluster(pg, redis_url, api_key=API_KEY) as running:
        nodes = await running.add(2)
        owner = await running.owner()
        standby = next(node for node in nodes if node is not owner)
        url = f"ws://127.0.0.1:{standby.port}/realtime/v1/websocket?apikey={API_KEY}&vsn=2.0.0"
        async with websockets.connect(url) as socket:
            phx = Phx(socket, "2.0.0")
            orders = {"event": "INSERT", "schema": "public", "table": "orders"}
            _, reply = await phx.join("realtime:room", [orders], token())
            assert reply["status"] == "ok"
            await phx.until("system")
            ids = await asyncio.to_thread(insert, pg.dsn, 3)
            got = [(await phx.until("postgres_changes"))[4] for _ in ids]
            assert [g["data"]["record"]["id"] for g in got] == ids


@pytest.mark.parametrize("kept", ["300", "0"], ids=["history-refilled", "history-lost"])
async def test_a_node_that_loses_redis_closes_its_clients_and_resumes_them_as_history_allows(
    pg: EmbeddedPostgres, private_redis: RedisServer, kept: str
) -> None:
    """Redis dies under load and comes back empty. Each node closes its clients (1012) and
    answers 503 meanwhile. The slot was confirmed only up to the oldest event Redis served, so
    the new owner refills history from the slot: clients resume exactly (or, when no history
    is kept, ``RTGW_HISTORY_AGE_S=0``, learn of the gap)."""
    async with cluster(pg, private_redis.url, history_age_s=kept) as running, \
            contextlib.AsyncExitStack() as clients:
        nodes = await running.add(2)
        await running.owner()
        readers = []
        for node in nodes:
            client, sub = await subscribed(clients, node.ws)
            readers.append((Reader(client).start(), sub))
        writer = asyncio.create_task(asyncio.to_thread(insert, pg.dsn, 100, 0.03))
        await eventually(lambda: all(len(r.ids) >= 10 for r, _ in readers), WAIT_S)
        private_redis.kill()
        await eventually(lambda: all(r.done for r, _ in readers), WAIT_S)
        assert [r.closed for r, _ in readers] == [1012, 1012]
        for node in nodes:
            assert (await node.readyz())[0] == 503
        private_redis.start()
        await asyncio.gather(*(wait_ready(node.http, WAIT_S) for node in nodes))
        await running.owner()
        committed = await writer
        for (reader, sub), node in zip(readers, nodes, strict=True):
            since = reader.last or {"offset": sub["offset"], "epoch": sub["epoch"]}
            client, resumed = await subscribed(clients, node.ws, since)
            again = Reader(client).start()
            more = await asyncio.to_thread(insert, pg.dsn, 3)
            committed += more
            await eventually(lambda again=again, more=more: again.ids[-3:] == more, WAIT_S)
            await asyncio.sleep(0.3)  # anything duplicated would have arrived by now
            if kept == "0":
                assert resumed["recovered"] is False  # told; what follows is exact
                assert again.ids == committed[len(committed) - len(again.ids):]
            else:
                assert resumed["recovered"] is True
                assert reader.ids + again.ids == committed
            await again.stop()


async def test_a_role_change_reaches_a_client_on_a_standby_in_stream_order(
    pg: EmbeddedPostgres, redis_url: str
) -> None:
    """Role changes travel on the bus: a client of a standby (not the slot owner) loses the
    subscription a revoked role gave it before any later change, and a grant lets its next
    subscribe succeed on the same connection."""
    user = str(uuid.uuid4())
    with psycopg.connect(pg.dsn, autocommit=True) as db:
        grant(db, user, "support")
    async with cluster(pg, redis_url) as running, contextlib.AsyncExitStack() as clients:
        nodes = await running.add(2)
        owner = await running.owner()
        standby = next(node for node in nodes if node is not owner)
        client = await clients.enter_async_context(connect(standby.ws))
        assert (await client.auth(token(user, scopes=())))["type"] == "ready"
        assert (await client.subscribe("my_notifications"))["type"] == "subscribed"
        assert (await client.subscribe("orders"))["type"] == "subscribed"
        with psycopg.connect(pg.dsn, autocommit=True) as db:
            before = insert_order(db)
            assert (await client.events(1))[0]["change"]["new"]["id"] == before
            revoke(db, user, "support")
            insert_order(db)  # committed after the revocation: never sent to this client
            notify(db, user, "revoked")
            assert await frames_until_marker(client, "revoked") == [
                {"type": "unsubscribed", "ref": None, "topic": "orders", "reason": "forbidden"}
            ]
            refused = await client.subscribe("orders")
            assert refused["type"] == "error" and refused["code"] == "forbidden"

            grant(db, user, "admin")
            notify(db, user, "granted")
            assert await frames_until_marker(client, "granted") == []
            assert (await client.subscribe("orders"))["type"] == "subscribed"
            order = insert_order(db)
            assert (await client.events(1))[0]["change"]["new"]["id"] == order
        assert await running.owner() is owner


async def test_a_supabase_upstream_is_read_by_one_lease_holder_and_taken_over_after_sigkill(
    pg: EmbeddedPostgres, redis_url: str, orders_only: Path  # noqa: F811
) -> None:
    """RTGW_SOURCE=supabase on the Redis bus, against the fake Supabase Realtime server: one
    gateway holds the lease and reads the upstream; SIGKILLed, the lease (half the takeover
    bound) lapses and the other node reads it. Its clients keep their socket, learn of the gap
    (the upstream cannot replay what the takeover missed) and receive what follows."""
    key = service_key()
    upstream = await start_fake_supabase(pg.dsn, key)
    try:
        async with cluster(
            pg, redis_url, source="supabase", supabase_url=upstream.http_url,
            supabase_service_key=key, channels=str(orders_only),
        ) as running, contextlib.AsyncExitStack() as clients:
            await running.add(2)
            owner = await running.owner()
            survivor = next(node for node in running.nodes if node is not owner)
            reader = Reader((await subscribed(clients, survivor.ws))[0]).start()
            before = await asyncio.to_thread(insert, pg.dsn, 5)
            await eventually(lambda: len(reader.ids) >= 5, WAIT_S)
            publisher = mint_token(TEST_SECRET, "backend", ["orders:read", "rtgw:publish"], 60)
            async with httpx.AsyncClient(base_url=survivor.http) as http:
                sent = await http.post(  # published events go through the upstream's reader
                    "/v1/publish", headers={"Authorization": f"Bearer {publisher}"},
                    json={"channel": "orders", "event": "note", "payload": {"n": "standby"}},
                )
            assert sent.status_code == 503 and sent.json()["code"] == "not_ready", sent.text

            lease = redis.Redis.from_url(redis_url)
            try:
                owner.process.send_signal(signal.SIGKILL)
                left_ms = lease.pttl(f"rtgw:{running.slot}:lease")
            finally:
                lease.close()
            assert 0 < left_ms <= TAKEOVER_S / 2 * 1000  # it lapses within half the bound
            killed = time.monotonic()
            await owner.process.wait()
            assert await running.owner([survivor]) is survivor
            logging.getLogger(__name__).info("took over in %.2fs", time.monotonic() - killed)

            await eventually(lambda: len(reader.gaps) == 1, WAIT_S)
            assert reader.gaps[0]["reason"].startswith("stream_changed")
            after = await asyncio.to_thread(insert, pg.dsn, 5)
            await eventually(lambda: len(reader.ids) >= 10, WAIT_S)
            await asyncio.sleep(0.3)  # anything duplicated would have arrived by now
            assert reader.ids == before + after
            assert reader.closed is None and not reader.done
            await reader.stop()
    finally:
        await upstream.stop()
        drop_slot(pg.dsn, upstream.settings.slot)
