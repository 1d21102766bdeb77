"""Change capture benchmark: streaming (rtgw) against SQL polling (what Supabase Realtime does:
``pg_logical_slot_get_*changes`` every 100 ms), on the same Postgres in the same run.

1. Throughput: a 100,000-row transaction, from COMMIT to the last change decoded and routed
   (source -> router -> hub, in process), streaming vs one polling loop with the same decoder.
2. Latency: ``rtgw serve`` in its own process, N WebSocket clients in another (each subscribed
   to its own partition of ``my_notifications``), single-row commits at a fixed rate; each row
   is timed from just before its INSERT to its arrival at its client. The polling baseline
   reads the same rows from its own slot.

    python -m bench.cdc            # full: 3 throughput rounds, 10 s of latency
    python -m bench.cdc --short    # 1 round, 3 s

The cluster runs with fsync=off and synchronous_commit=on: the walsender sends only flushed WAL,
so with asynchronous commit every number would be the WAL writer's delay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import secrets
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import websockets

from bench.harness import free_port, rtgw_env, rtgw_serve, wait_listening
from gateway.bus.memory import MemoryBus
from gateway.changes import Change
from gateway.channels import ChannelSet, load_channels
from gateway.demo import apply_migrations
from gateway.encoding import dumps_text, loads
from gateway.enrich import Enrichment
from gateway.events import GapNotice, TopicEvent
from gateway.hub import Hub
from gateway.router import Router, WorkSink
from gateway.sources.embedded import EmbeddedPostgres
from gateway.sources.postgres import PostgresSource, PostgresSourceConfig
from gateway.sources.postgres.decoder import Decoder
from gateway.sources.postgres.messages import parse_message
from gateway.sources.postgres.source import MAX_BATCH
from gateway.sources.postgres.types import TypeRegistry
from gateway.tokens import mint_token

REPO = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-" + "x" * 40
DRAIN_S = 15.0  # after the last commit, how long the latency run waits for every arrival
POLL_S = 0.1
POLL_SQL = (
    "SELECT data FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, "
    "'proto_version', '1', 'publication_names', 'rtgw')"
)


class Counter:
    """A hub subscriber that only counts (the in-process throughput test has no sockets)."""

    def __init__(self) -> None:
        self.count = 0

    def deliver(self, event: TopicEvent) -> None:
        self.count += 1

    def gap(self, notice: GapNotice) -> None:
        pass


def _router(
    enrichment: Callable[[ChannelSet], Enrichment] | None = None,
    channels: ChannelSet | None = None,
    enqueue: WorkSink | None = None,
) -> tuple[Router, Hub, Counter]:
    """The router (with the enrichment ``enrichment`` makes, if given, and tasks handed to
    ``enqueue``), a memory bus and a hub, as a node composes them. ``channels``: the demo's by
    default."""
    channels = channels or load_channels(REPO / "channels")
    bus = MemoryBus()
    hub = Hub(interest=bus)
    bus.attach(hub)
    counter = Counter()
    hub.subscribe(counter, "orders", "orders", None, None)
    enriching = None if enrichment is None else enrichment(channels)
    return Router(channels, bus, enriching, enqueue), hub, counter


# ---------------------------------------------------------------------------------------------
# Throughput


async def _stream_100k(
    pg: EmbeddedPostgres,
    rows: int,
    enrichment: Callable[[ChannelSet], Enrichment] | None = None,
    insert: str = "",
    transaction_part: int = MAX_BATCH,
    channels: ChannelSet | None = None,
    enqueue: WorkSink | None = None,
) -> float:
    """Seconds from the COMMIT of ``rows`` orders (``insert``, default ``_INSERT_ORDERS``, with
    ``rows`` as its parameter) to the last of them routed (and their tasks enqueued); the source
    hands a transaction on in parts of ``transaction_part`` changes."""
    router, _, counter = _router(enrichment, channels, enqueue)
    done = asyncio.Event()

    async def sink(batch: Sequence[Change]) -> None:
        await router(batch)
        if counter.count >= rows:
            done.set()

    slot = f"bench_{secrets.token_hex(3)}"
    source = PostgresSource(PostgresSourceConfig(
        dsn=pg.dsn, slot=slot, tables=_TABLES, transaction_part=transaction_part))
    task = asyncio.create_task(source.run(sink))
    try:
        for _ in range(3000):  # up to 30 s
            if source.streaming:
                break
            await asyncio.sleep(0.01)
        async with await psycopg.AsyncConnection.connect(pg.dsn, autocommit=True) as conn:
            await conn.execute(insert or _INSERT_ORDERS, (rows,))
            committed = time.perf_counter()
        await asyncio.wait_for(done.wait(), 120)
        return time.perf_counter() - committed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        drop_slot(pg, slot)


def _poll_100k(pg: EmbeddedPostgres, rows: int) -> float:
    router, hub, counter = _router()
    slot = f"poll_{secrets.token_hex(3)}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        try:
            decoder = Decoder(TypeRegistry())
            conn.execute(_INSERT_ORDERS, (rows,))
            committed = time.perf_counter()
            while counter.count < rows:
                time.sleep(POLL_S)
                for (data,) in conn.execute(POLL_SQL, (slot,)):
                    for change in decoder.feed(parse_message(data)):
                        hub.receive([router.route(change)])
            return time.perf_counter() - committed
        finally:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


_TABLES = (("public", "customers"), ("public", "orders"), ("public", "notifications"))
_INSERT_ORDERS = (
    "INSERT INTO orders (customer_id, status, total) "
    "SELECT (SELECT min(id) FROM customers), 'pending', n %% 1000 FROM generate_series(1, %s) n"
)


def drop_slot(pg: EmbeddedPostgres, slot: str) -> None:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        for _ in range(100):
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                return
            except psycopg.errors.ObjectInUse:
                time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Latency


def _clients(url: str, users: list[str], pipe: multiprocessing.connection.Connection) -> None:
    """In a process of its own: one WebSocket per user; reports {seq: receive time}."""

    async def main() -> None:
        arrivals: dict[int, float] = {}
        stop = asyncio.Event()
        complete = asyncio.Event()  # every commit written has arrived
        wanted: list[int] = []  # how many commits were written, once the writer is done

        async def one(user: str) -> None:
            async with websockets.connect(url, max_size=None) as ws:
                token = mint_token(SECRET, user, (), 3600)
                await ws.send(dumps_text({"type": "auth", "token": token}))
                await ws.recv()
                await ws.send(dumps_text({"type": "subscribe", "ref": "s",
                                          "channel": "my_notifications"}))
                reply = loads(await ws.recv())
                assert reply["type"] == "subscribed", reply
                ready.append(user)
                while not stop.is_set():
                    try:
                        async with asyncio.timeout(0.5):
                            message = await ws.recv()
                    except TimeoutError:
                        continue
                    now = time.time()
                    frame = loads(message)
                    if frame["type"] == "event":
                        arrivals[int(frame["change"]["new"]["title"])] = now
                        if wanted and len(arrivals) >= wanted[0]:
                            complete.set()

        ready: list[str] = []
        tasks = []
        for index, user in enumerate(users):
            tasks.append(asyncio.create_task(one(user)))
            if index % 50 == 49:
                await asyncio.sleep(0.05)  # do not stampede the accept queue
        while len(ready) < len(users):
            await asyncio.sleep(0.05)
            for task in tasks:
                if task.done() and task.exception():
                    raise task.exception()  # type: ignore[misc]
        pipe.send("ready")
        # How many commits were written: wait for them all (at most DRAIN_S), then stop.
        wanted.append(await asyncio.get_running_loop().run_in_executor(None, pipe.recv))
        if len(arrivals) >= wanted[0]:
            complete.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(complete.wait(), DRAIN_S)
        stop.set()
        await asyncio.gather(*tasks)
        pipe.send(arrivals)

    asyncio.run(main())


def _poller(dsn: str, slot: str, stop: threading.Event, arrivals: dict[int, float]) -> None:
    decoder = Decoder(TypeRegistry())
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            time.sleep(POLL_S)
            for (data,) in conn.execute(POLL_SQL, (slot,)):
                now = time.time()
                message = parse_message(data)
                for change in decoder.feed(message):
                    if change.table == "notifications" and change.new is not None:
                        arrivals[int(change.new["title"])] = now


def _latency(pg: EmbeddedPostgres, clients: int, rate: float, seconds: float) -> dict[str, Any]:
    port = free_port()
    env = rtgw_env(pg.dsn, SECRET, port, f"lat_{secrets.token_hex(3)}", max_subscriptions="10",
                   max_connections_per_ip=str(clients + 10))  # every client is on 127.0.0.1
    server = rtgw_serve(env)
    poll_slot = f"latpoll_{secrets.token_hex(3)}"
    users = [str(uuid.uuid4()) for _ in range(clients)]
    try:
        wait_listening(port, "/readyz")
        parent, child = multiprocessing.Pipe()
        process = multiprocessing.get_context("spawn").Process(
            target=_clients, args=(f"ws://127.0.0.1:{port}/v1/ws", users, child), daemon=True
        )
        process.start()
        if not parent.poll(120):
            raise RuntimeError("clients did not connect")
        assert parent.recv() == "ready"
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
                         (poll_slot,))
        stop = threading.Event()
        polled: dict[int, float] = {}
        poller = threading.Thread(target=_poller, args=(pg.dsn, poll_slot, stop, polled))
        poller.start()
        sent = _write(pg, users, rate, seconds)
        parent.send(len(sent))  # the clients stop once they have them all (or after DRAIN_S)
        deadline = time.monotonic() + DRAIN_S
        while len(polled) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        poller.join()
        streamed: dict[int, float] = parent.recv()
        process.join(30)
    finally:
        server.terminate()
        server.wait(30)
        drop_slot(pg, env["RTGW_SLOT"])
        drop_slot(pg, poll_slot)
    return {
        "sent": len(sent),
        "stream": _percentiles(sent, streamed),
        "poll": _percentiles(sent, polled),
    }


def _write(pg: EmbeddedPostgres, users: list[str], rate: float, seconds: float) -> dict[int, float]:
    """Single-row commits at ``rate`` per second, round-robin over the users."""
    sent: dict[int, float] = {}
    total = int(rate * seconds)
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        start = time.perf_counter()
        for seq in range(total):
            delay = start + seq / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent[seq] = time.time()
            conn.execute(
                "INSERT INTO notifications (user_id, title, body) VALUES (%s, %s, 'b')",
                (users[seq % len(users)], str(seq)),
            )
    return sent


def _percentiles(sent: dict[int, float], arrived: dict[int, float]) -> dict[str, float]:
    delays = sorted((arrived[seq] - at) * 1000 for seq, at in sent.items() if seq in arrived)
    if not delays:
        return {"received": 0}
    return {
        "received": len(delays),
        "p50_ms": delays[len(delays) // 2],
        "p99_ms": delays[min(len(delays) - 1, int(len(delays) * 0.99))],
        "max_ms": delays[-1],
    }


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="1 round, 3 s of latency")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000.0)
    args = parser.parse_args()
    rounds, seconds = (1, 3.0) if args.short else (3, 10.0)

    pg = EmbeddedPostgres(Path(f"/var/tmp/rtgw-bench-{os.getpid()}/pgdata"))
    pg.destroy()
    pg.init({"fsync": "off", "synchronous_commit": "on", "full_page_writes": "off"})
    pg.start()
    try:
        apply_migrations(pg.dsn)
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO customers (name) VALUES ('bench')")
        streamed = [asyncio.run(_stream_100k(pg, args.rows)) for _ in range(rounds)]
        polled = [_poll_100k(pg, args.rows) for _ in range(rounds)]
        s, p = statistics.median(streamed), statistics.median(polled)
        print(f"throughput, {args.rows} rows in one transaction, COMMIT -> all decoded+routed "
              f"(median of {rounds}):")
        print(f"  streaming  {s:6.2f} s  {args.rows / s:9,.0f} changes/s")
        print(f"  polling    {p:6.2f} s  {args.rows / p:9,.0f} changes/s")
        print(f"  ratio      {p / s:6.2f}x")
        result = _latency(pg, args.clients, args.rate, seconds)
        stream, poll = result["stream"], result["poll"]
        print(f"latency, {result['sent']} single-row commits at {args.rate:.0f}/s, "
              f"{args.clients} clients (INSERT sent -> event at its client):")
        for name, row in (("streaming", stream), ("polling", poll)):
            print(f"  {name:9}  p50 {row.get('p50_ms', 0):7.2f} ms  p99 {row.get('p99_ms', 0):7.2f}"
                  f" ms  max {row.get('max_ms', 0):7.2f} ms  received {row['received']}")
        if stream.get("p50_ms") and poll.get("p50_ms"):
            print(f"  ratio      p50 {poll['p50_ms'] / stream['p50_ms']:.1f}x  "
                  f"p99 {poll['p99_ms'] / stream['p99_ms']:.1f}x")
    finally:
        pg.destroy()
        with contextlib.suppress(OSError):
            pg.data_dir.parent.rmdir()


if __name__ == "__main__":
    main()
