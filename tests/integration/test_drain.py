"""Graceful drain: a real ``rtgw serve`` process, real WebSocket clients, a real SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from gateway.encoding import loads
from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import (
    RTGW,
    connect,
    drop_slot,
    free_port,
    insert_orders,
    serve_env,
    token,
    wait_ready,
)

GRACE_S = 2.0


@contextlib.contextmanager
def serve(dsn: str, slot: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    env = serve_env(dsn, slot, port, shutdown_grace_s=str(GRACE_S), log_format="json")
    process = subprocess.Popen(
        [RTGW, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        yield process, f"127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def pending_in_slot(db: psycopg.Connection[Any], slot: str) -> int:
    row = db.execute(
        "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
        "'proto_version', '1', 'publication_names', 'rtgw')",
        (slot,),
    ).fetchone()
    assert row is not None
    return int(row[0])


async def orders_received(address: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://{address}/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "rtgw_changes_received_total"
        and sample.labels["table"] == "public.orders"
    )


def stuck_websocket(address: str) -> socket.socket:
    """A client that completes the handshake, then never reads again (nor answers a close)."""
    host, port = address.split(":")
    sock = socket.create_connection((host, int(port)))
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    sock.sendall(
        f"GET /v1/ws HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade"
        f"\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    return sock


async def test_sigterm_drains_clients_with_1012_confirms_the_slot_and_exits_in_grace(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any]
) -> None:
    slot = f"drain_{secrets.token_hex(4)}"
    try:
        with serve(pg.dsn, slot) as (process, address):
            await wait_ready(f"http://{address}")
            url = f"ws://{address}/v1/ws"
            async with connect(url) as a, connect(url) as b:
                for client in (a, b):
                    await client.auth(token())
                    await client.subscribe("orders")
                insert_orders(db, 3)
                for client in (a, b):
                    await client.events(3)
                stuck = stuck_websocket(address)

                process.send_signal(signal.SIGTERM)
                started = time.monotonic()
                for client in (a, b):
                    frame = await client.recv()
                    assert frame["type"] == "error" and frame["code"] == "shutting_down"
                    with pytest.raises(websockets.ConnectionClosed) as closed:
                        await client.recv()
                    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
                # Draining has begun: the listener is closed, nobody new gets in.
                with pytest.raises(OSError):
                    async with websockets.connect(url, open_timeout=2):
                        pass
            output, _ = await asyncio.to_thread(process.communicate, timeout=GRACE_S + 10)
            elapsed = time.monotonic() - started
            stuck.close()
            # uvicorn re-raises the signal once drained: the exit status says "terminated".
            assert process.returncode == -signal.SIGTERM, output
            assert elapsed < GRACE_S + 3, (elapsed, output)
            assert "Traceback" not in output
            events = [loads(line) for line in output.splitlines() if line.startswith("{")]
            assert any(e["message"].startswith("draining: closing 3") for e in events), output

        # The final status update confirmed what the history no longer needs: the slot keeps
        # exactly the one transaction the history held (BEGIN, RELATION, 3 INSERTs, COMMIT) ...
        assert pending_in_slot(db, slot) == 6

        # ... so a restart replays just that into its history, and new changes still flow.
        with serve(pg.dsn, slot) as (process, address):
            await wait_ready(f"http://{address}")
            assert await orders_received(address) == 3  # ready means replayed
            insert_orders(db, 1)
            deadline = time.monotonic() + 10
            while await orders_received(address) != 4:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.communicate, timeout=GRACE_S + 10)
            assert process.returncode == -signal.SIGTERM
    finally:
        drop_slot(pg.dsn, slot)
