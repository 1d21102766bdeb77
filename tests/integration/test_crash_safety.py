"""SIGKILL the source's process (alone, and as ``rtgw serve`` with a WebSocket client) in the
middle of a 100,000-row transaction, restart it: every row is delivered (by the source alone at
least once, with the same change id when twice; by the gateway to a resuming client exactly
once)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from gateway.changes import Item
from gateway.encoding import loads
from gateway.sources.embedded import EmbeddedPostgres
from gateway.sources.postgres import PostgresSource, PostgresSourceConfig
from tests.conftest import (
    REPO,
    Client,
    connect,
    drop_slot,
    free_port,
    rtgw_serve,
    serve_env,
    stop_process,
    token,
    wait_ready,
)

ROWS = 100_000


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    text = path.read_text(encoding="ascii")
    return text.splitlines()[: text.count("\n")]  # a half-written last line is not delivered


def _start(pg: EmbeddedPostgres, slot: str, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.source_runner", pg.dsn, slot, "crash_pub",
         "public.crash_rows", str(out)],
        cwd=REPO,
    )


def _wait_lines(path: Path, count: int, process: subprocess.Popen[bytes], wait_s: float) -> int:
    deadline = time.monotonic() + wait_s
    while (found := len(_lines(path))) < count:
        assert process.poll() is None, f"the source process exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{found} of {count} lines"
        time.sleep(0.01)
    return found


def test_sigkill_mid_transaction_loses_nothing(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    slot = f"crash_{secrets.token_hex(4)}"
    out = tmp_path / "delivered.txt"
    db.execute("CREATE TABLE crash_rows (id int PRIMARY KEY, payload text)")
    first = _start(pg, slot, out)
    try:
        deadline = time.monotonic() + 20
        while db.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active",
                         (slot,)).fetchone() is None:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        db.execute(
            "INSERT INTO crash_rows SELECT n, repeat('x', 40) FROM generate_series(1, %s) n",
            (ROWS,),
        )
        _wait_lines(out, ROWS // 5, first, 60)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        killed_at = len(_lines(out))
        assert killed_at < ROWS, "the kill came too late to test anything"

        second = _start(pg, slot, out)
        try:
            _wait_lines(out, killed_at + ROWS, second, 60)
        finally:
            second.terminate()
            second.wait(20)
    finally:
        if first.poll() is None:
            first.kill()
        drop_slot(pg.dsn, slot)
        db.execute("DROP PUBLICATION IF EXISTS crash_pub")
        db.execute("DROP TABLE crash_rows")

    ids_by_row: dict[str, set[str]] = defaultdict(set)
    for line in _lines(out):
        change_id, row_id = line.split()
        ids_by_row[row_id].add(change_id)
    assert set(ids_by_row) == {str(n) for n in range(1, ROWS + 1)}
    # Duplicates (rows delivered before the kill and again after) carry the same id.
    assert all(len(ids) == 1 for ids in ids_by_row.values())


async def _collect(
    client: Client, marker: str, into: dict[int, str], stop_at: int
) -> dict[str, Any]:
    """Record ``row id -> change id`` for our rows until ``stop_at`` of them have arrived.
    Returns the last of our events."""
    while True:
        frame = loads(await client.socket.recv())
        if frame["type"] == "event":
            new = frame["change"]["new"]
            if new is not None and new["status"] == marker:
                assert new["id"] not in into, f"row {new['id']} arrived twice"
                into[new["id"]] = frame["change"]["id"]
                if len(into) >= stop_at:
                    return dict(frame)


async def _poll(condition: Callable[[], Awaitable[bool]], what: str, wait_s: float = 20) -> None:
    deadline = time.monotonic() + wait_s
    for _ in range(100_000):
        if await condition():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_rtgw_serve_sigkilled_mid_transaction_resumes_its_client(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any]
) -> None:
    """The same through ``rtgw serve`` and a WebSocket client that resumes with ``since``: the
    client gets every row exactly once. The restarted gateway starts replaying at once, so
    while the client reconnects another process holds the slot (without confirming anything);
    the gateway retries with backoff, replays its history once the slot is released, and the
    client's subscription waits for that replay."""
    slot = f"crashserve_{secrets.token_hex(4)}"
    marker = f"crash-{secrets.token_hex(3)}"
    port = free_port()
    env = serve_env(pg.dsn, slot, port, max_outbox_bytes=str(256 * 1024 * 1024),
                    history_size=str(2 * ROWS), history_total=str(2 * ROWS))
    url = f"ws://127.0.0.1:{port}/v1/ws"
    found = db.execute("INSERT INTO customers (name) VALUES ('crash') RETURNING id").fetchone()
    assert found is not None
    before: dict[int, str] = {}
    after: dict[int, str] = {}
    holder = PostgresSource(PostgresSourceConfig(dsn=pg.dsn, slot=slot, backoff_initial_s=0.05))

    async def never_confirms(batch: Sequence[Item]) -> None:
        await asyncio.Event().wait()

    async def holding_the_slot() -> bool:
        return holder.streaming

    async def accepting() -> bool:
        try:
            async with connect(url):
                return True
        except OSError:
            return False

    first = await rtgw_serve(env)
    second = None
    holding = None
    try:
        await wait_ready(f"http://127.0.0.1:{port}")
        async with connect(url) as client:
            await client.auth(token())
            await client.subscribe("orders")
            await asyncio.to_thread(
                db.execute,
                "INSERT INTO orders (customer_id, status, total) "
                "SELECT %s, %s, n FROM generate_series(1, %s) n",
                (found[0], marker, ROWS),
            )
            async with asyncio.timeout(60):
                last = await _collect(client, marker, before, ROWS // 5)
            first.kill()  # SIGKILL
            await first.wait()
        assert len(before) < ROWS, "the kill came too late to test anything"

        holding = asyncio.create_task(holder.run(never_confirms))
        await _poll(holding_the_slot, "the holder to take the slot")
        second = await rtgw_serve(env)
        await _poll(accepting, "the restarted gateway to accept connections")
        async with connect(url) as client:
            await client.auth(token())
            holding.cancel()  # the slot is free: the gateway's next retry replays
            with contextlib.suppress(asyncio.CancelledError):
                await holding
            resumed = await client.subscribe(
                "orders", since={"offset": last["offset"], "epoch": last["epoch"]}
            )
            assert resumed["recovered"] is True, resumed
            async with asyncio.timeout(90):
                await _collect(client, marker, after, ROWS - len(before))
    finally:
        if holding is not None:
            holding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holding
        await stop_process(first)
        await stop_process(second)
        drop_slot(pg.dsn, slot)
        db.execute("DELETE FROM orders WHERE status = %s", (marker,))

    assert set(before) | set(after) == set(range(min(before), min(before) + ROWS))
    assert not set(before) & set(after)  # exactly once across the crash
