"""SIGKILL the source's process (alone, and as ``rtgw serve`` with a WebSocket client) in the
middle of a 100,000-row transaction, restart it: every row is delivered, and a row delivered
twice carries the same change id both times."""

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

from gateway.changes import Change
from gateway.encoding import loads
from gateway.sources.embedded import EmbeddedPostgres
from gateway.sources.postgres import PostgresSource, PostgresSourceConfig
from tests.conftest import (
    REPO,
    TEST_SECRET,
    Client,
    connect,
    drop_slot,
    free_port,
    token,
    wait_ready,
)

RTGW = str(Path(sys.executable).with_name("rtgw"))

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


async def _collect(client: Client, marker: str, into: dict[int, str], stop_at: int) -> None:
    """Record ``row id -> change id`` for our rows until ``stop_at`` of them have arrived."""
    while len(into) < stop_at:
        frame = loads(await client.socket.recv())
        if frame["type"] == "event":
            new = frame["change"]["new"]
            if new is not None and new["status"] == marker:
                into[new["id"]] = frame["change"]["id"]


async def _serve(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(RTGW, "serve", env=env, cwd=REPO)


async def _stop(process: asyncio.subprocess.Process | None) -> None:
    if process is not None and process.returncode is None:
        process.terminate()
        async with asyncio.timeout(20):
            await process.wait()


async def _poll(condition: Callable[[], Awaitable[bool]], what: str, wait_s: float = 20) -> None:
    deadline = time.monotonic() + wait_s
    for _ in range(100_000):
        if await condition():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_rtgw_serve_sigkilled_mid_transaction_redelivers_to_clients(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any]
) -> None:
    """The same through ``rtgw serve`` and a WebSocket client. The restarted gateway starts
    replaying at once, so while the client reconnects another process holds the slot (without
    confirming anything); the gateway retries with backoff and replays once it is released."""
    slot = f"crashserve_{secrets.token_hex(4)}"
    marker = f"crash-{secrets.token_hex(3)}"
    port = free_port()
    env = {**os.environ, "RTGW_DATABASE_URL": pg.dsn, "RTGW_JWT_SECRET": TEST_SECRET,
           "RTGW_PORT": str(port), "RTGW_CHANNELS": str(REPO / "channels"), "RTGW_SLOT": slot,
           "RTGW_MAX_OUTBOX_BYTES": str(256 * 1024 * 1024)}
    url = f"ws://127.0.0.1:{port}/v1/ws"
    found = db.execute("INSERT INTO customers (name) VALUES ('crash') RETURNING id").fetchone()
    assert found is not None
    before: dict[int, str] = {}
    after: dict[int, str] = {}
    holder = PostgresSource(PostgresSourceConfig(dsn=pg.dsn, slot=slot, backoff_initial_s=0.05))

    async def never_confirms(batch: Sequence[Change]) -> None:
        await asyncio.Event().wait()

    async def holding_the_slot() -> bool:
        return holder.streaming

    async def accepting() -> bool:
        try:
            async with connect(url):
                return True
        except OSError:
            return False

    first = await _serve(env)
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
                await _collect(client, marker, before, ROWS // 5)
            first.kill()  # SIGKILL
            await first.wait()
        assert len(before) < ROWS, "the kill came too late to test anything"

        holding = asyncio.create_task(holder.run(never_confirms))
        await _poll(holding_the_slot, "the holder to take the slot")
        second = await _serve(env)
        await _poll(accepting, "the restarted gateway to accept connections")
        async with connect(url) as client:
            await client.auth(token())
            await client.subscribe("orders")
            holding.cancel()  # the slot is free: the gateway's next retry replays
            with contextlib.suppress(asyncio.CancelledError):
                await holding
            async with asyncio.timeout(90):
                await _collect(client, marker, after, ROWS)
    finally:
        if holding is not None:
            holding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holding
        await _stop(first)
        await _stop(second)
        drop_slot(pg.dsn, slot)
        db.execute("DELETE FROM orders WHERE status = %s", (marker,))

    assert len(after) == ROWS  # every row (keys are row ids)
    # Rows delivered before the kill came again with the same change id.
    assert all(after[row] == change_id for row, change_id in before.items())
