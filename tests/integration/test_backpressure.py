"""One stalled client does not delay delivery to 500 others."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import psycopg
import websockets

from gateway.node import Node
from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import Client, connect, drop_slot, start_gateway, token

OTHERS = 500
LIVE_EVENTS = 20


async def test_a_stalled_client_does_not_delay_500_others(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any]
) -> None:
    gateway = await start_gateway(
        pg.dsn, max_outbox_bytes=16 * 1024 * 1024, max_connections_per_ip=OTHERS + 10
    )
    node: Node = gateway.server.config.app.state.node
    try:
        async with contextlib.AsyncExitStack() as stack:
            # The stalled client: a 4 KB receive buffer and a reader that never reads.
            tiny = socket.socket()
            tiny.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            tiny.connect(("127.0.0.1", gateway.settings.port))
            stalled = await stack.enter_async_context(
                connect(gateway.ws_url, sock=tiny, max_queue=1)
            )
            await stalled.auth(token("stalled"))
            await stalled.subscribe("orders")

            others: list[Client] = []
            for n in range(OTHERS):
                client = await stack.enter_async_context(
                    connect(gateway.ws_url, max_queue=None)
                )
                await client.auth(token(f"user-{n}"))
                assert (await client.subscribe("orders", filter="status=eq.live"))["type"] == (
                    "subscribed"
                )
                others.append(client)

            customer = db.execute(
                "INSERT INTO customers (name) VALUES ('bp') RETURNING id"
            ).fetchone()
            assert customer is not None
            # Fill the stalled client's socket buffers and part of its outbox with bulk rows
            # that only it receives, until its writer is blocked.
            db.execute(
                "INSERT INTO orders (customer_id, status) SELECT %s, 'bulk-' || "
                "(SELECT string_agg(md5(random()::text || g::text || s::text), '') "
                " FROM generate_series(1, 64) AS s) FROM generate_series(1, 3000) AS g",
                (customer[0],),
            )
            stalled_connection = None
            async with asyncio.timeout(30):
                while stalled_connection is None:
                    await asyncio.sleep(0.05)
                    stalled_connection = next(
                        (c for c in node.connections
                         if getattr(c.session, "claims", None) is not None
                         and c.session.claims.subject == "stalled"
                         and c.queued_bytes > 0),
                        None,
                    )

            for _ in range(LIVE_EVENTS):
                db.execute(
                    "INSERT INTO orders (customer_id, status) VALUES (%s, 'live')",
                    (customer[0],),
                )
            async with asyncio.timeout(60):
                received = await asyncio.gather(*(c.events(LIVE_EVENTS) for c in others))
            assert all(len(events) == LIVE_EVENTS for events in received)
            assert all(
                [e["offset"] for e in events] == [e["offset"] for e in received[0]]
                for events in received
            )
            # All 500 were served while the stalled client still had not taken its frames.
            assert stalled_connection.queued_bytes > 0 or stalled_connection.closing
            with contextlib.suppress(websockets.ConnectionClosed):
                await stalled.socket.close()
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)
