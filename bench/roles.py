"""Revocation latency: from the COMMIT that deletes a user's role to the ``unsubscribed`` frame
on their live native subscription, against the baseline of the same run: from the COMMIT of an
order to its event on that subscription.

    .venv/bin/python -m bench.roles            # 200 rounds
    .venv/bin/python -m bench.roles --short    # 20 rounds

Each round grants the role, subscribes, commits an order (baseline), then revokes the role
(revocation). One gateway (in this process, as ``rtgw serve`` runs it) and an embedded Postgres;
both times include the client's COMMIT round trip alike.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
import uuid
from typing import Any

import psycopg
import websockets

from bench.fanout import embedded_postgres
from bench.harness import REPO, free_port, wait_listening
from bench.latency import percentile
from gateway.app import create_app
from gateway.encoding import dumps_text, loads
from gateway.server import gateway_server
from gateway.settings import Settings
from gateway.sources.embedded import EmbeddedPostgres
from gateway.tokens import mint_token


async def frame_of(socket: websockets.ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = loads(await asyncio.wait_for(socket.recv(), 10))
        if frame["type"] == kind:
            return frame


async def subscribed(socket: websockets.ClientConnection) -> None:
    """Subscribe to orders once the stream has brought the grant (until then: forbidden)."""
    while True:
        await socket.send(dumps_text({"type": "subscribe", "channel": "orders"}))
        frame: dict[str, Any] = loads(await asyncio.wait_for(socket.recv(), 10))
        if frame["type"] == "subscribed":
            return
        assert frame.get("code") == "forbidden", frame
        await asyncio.sleep(0.01)  # a few retries at most: well inside the frame rate limit


async def measure(pg: EmbeddedPostgres, rounds: int) -> tuple[list[float], list[float]]:
    secret = secrets.token_hex(32)
    settings = Settings(database_url=pg.dsn, jwt_secret=secret, channels=REPO / "channels",
                        port=free_port(), slot=f"bench_{secrets.token_hex(4)}", publication="rtgw",
                        max_messages_per_s=10_000)  # a subscribe per round, as fast as it goes
    server = gateway_server(create_app(settings), settings, "warning")
    serving = asyncio.create_task(server.serve())
    events, revocations = [], []
    user = str(uuid.uuid4())
    try:
        await asyncio.to_thread(wait_listening, settings.port, "/readyz")
        url = f"ws://127.0.0.1:{settings.port}/v1/ws"
        with psycopg.connect(pg.dsn, autocommit=True) as db:
            async with websockets.connect(url) as socket:
                await socket.send(dumps_text({"type": "auth",
                                              "token": mint_token(secret, user, [], 3600)}))
                await frame_of(socket, "ready")
                for _ in range(rounds):
                    db.execute("INSERT INTO user_roles VALUES (%s, 'support')", (user,))
                    await subscribed(socket)
                    started = time.perf_counter()
                    db.execute("INSERT INTO orders (customer_id) VALUES (1)")
                    await frame_of(socket, "event")
                    events.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    db.execute("DELETE FROM user_roles WHERE user_id = %s", (user,))
                    await frame_of(socket, "unsubscribed")
                    revocations.append(time.perf_counter() - started)
    finally:
        server.should_exit = True
        await serving
        with psycopg.connect(pg.dsn, autocommit=True) as db:
            db.execute("SELECT pg_drop_replication_slot(%s)", (settings.slot,))
    return events, revocations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="20 rounds")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (20 if args.short else 200)
    with embedded_postgres() as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as db:
            db.execute("INSERT INTO customers (id, name) OVERRIDING SYSTEM VALUE "
                       "VALUES (1, 'bench')")
        events, revocations = asyncio.run(measure(pg, rounds))
    print(f"revocation latency, {rounds} rounds (COMMIT -> frame on the live subscription, ms):")
    print("| | median | p99 | max |")
    print("|---|---|---|---|")
    for name, values in (("order event (baseline)", events), ("revocation", revocations)):
        ordered = sorted(v * 1000 for v in values)
        print(f"| {name} | {statistics.median(ordered):.2f} | "
              f"{percentile(ordered, 0.99):.2f} | {ordered[-1]:.2f} |")
    print(f"revocation vs order event (median): "
          f"{statistics.median(revocations) / statistics.median(events):.2f}x "
          "(bound: 1 s from the commit)")


if __name__ == "__main__":
    main()
