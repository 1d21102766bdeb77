"""Restart benchmark: how long ``rtgw serve`` takes from its start to ``/readyz`` 200 after a
SIGKILL, when it must rebuild a full history from the slot, against the same gateway keeping no
history (so its slot was confirmed to the end and nothing is replayed), in the same run.

    python -m bench.restart            # 100,000 changes in history, 3 rounds each
    python -m bench.restart --short    # 10,000 changes, 1 round each

Changes are single-row INSERTs into ``orders`` committed 100 to a transaction; the gateway is
killed once it has received all of them.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import statistics
import time

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from bench.cdc import SECRET, drop_slot
from bench.fanout import embedded_postgres
from bench.harness import free_port, rtgw_env, rtgw_serve, wait_listening
from gateway.sources.embedded import EmbeddedPostgres

PER_TRANSACTION = 100


def _received(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "rtgw_changes_received_total"
    )


def _round(pg: EmbeddedPostgres, rows: int, keep_history: bool) -> float:
    """Seconds from the restarted process's start to ready."""
    port, slot = free_port(), f"restart_{secrets.token_hex(3)}"
    kept = str(rows) if keep_history else "0"
    env = rtgw_env(pg.dsn, SECRET, port, slot, history_size=kept, history_total=str(rows))
    first = rtgw_serve(env)
    second = None
    try:
        wait_listening(port, "/readyz")
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            for _ in range(rows // PER_TRANSACTION):
                conn.execute("INSERT INTO orders (customer_id, status) SELECT 1, 'restart' "
                             "FROM generate_series(1, %s)", (PER_TRANSACTION,))
        deadline = time.monotonic() + 120
        while _received(port) < rows:
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not receive every change")
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)
        first.wait()
        started = time.perf_counter()
        second = rtgw_serve(env)
        wait_listening(port, "/readyz")
        elapsed = time.perf_counter() - started
        if keep_history and _received(port) < rows:
            raise RuntimeError("ready before the history was replayed")
        return elapsed
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(30)
        drop_slot(pg, slot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="10,000 changes, 1 round")
    args = parser.parse_args()
    rows, rounds = (10_000, 1) if args.short else (100_000, 3)

    with embedded_postgres() as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO customers (name) VALUES ('bench')")
        without = [_round(pg, rows, keep_history=False) for _ in range(rounds)]
        with_history = [_round(pg, rows, keep_history=True) for _ in range(rounds)]
    base, full = statistics.median(without), statistics.median(with_history)
    print(f"restart after SIGKILL, start -> /readyz 200 (median of {rounds}):")
    print(f"  no history (nothing to replay)    {base:6.2f} s")
    print(f"  {rows:,} changes of history         {full:6.2f} s   "
          f"({rows / max(full - base, 1e-9):,.0f} changes/s replayed)")
    print(f"  ratio                             {full / base:6.2f}x")


if __name__ == "__main__":
    main()
