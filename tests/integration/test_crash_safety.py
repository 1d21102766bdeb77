"""SIGKILL the source's process in the middle of a 100,000-row transaction, restart it: every row
is delivered, and a row delivered twice carries the same change id both times."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg

from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import REPO, drop_slot

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
