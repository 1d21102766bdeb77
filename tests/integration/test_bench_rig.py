"""The fan-out rig measures what it claims: the writer's transactions hold the rows asked for,
and the raw load client counts every event sent, as the python-websockets client does; the
connect rig opens every connection over several load-client processes of either client.

No timing assertions: the benchmark reports speed; these prove the rig's shapes and counts.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from bench.writer import Writer
from gateway.sources.embedded import EmbeddedPostgres
from tests.integration.test_bench_short import run_bench


def transactions_of_new_rows(db: psycopg.Connection[Any], after: int) -> tuple[int, int]:
    """(rows, distinct transactions) among the notifications with an id above ``after``."""
    row = db.execute(
        "SELECT count(*), count(DISTINCT xmin::text) FROM public.notifications WHERE id > %s",
        (after,),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


@pytest.mark.parametrize(("per_txn", "transactions"), [(1, 12), (5, 3), (100, 1)])
async def test_the_writer_commits_the_rows_per_transaction_asked_for(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], per_txn: int, transactions: int
) -> None:
    row = db.execute("SELECT coalesce(max(id), 0) FROM public.notifications").fetchone()
    assert row is not None
    writer = Writer(pg.dsn, "partitioned", users=4, topic_every=0, rows_per_txn=per_txn)
    try:
        await writer.fire([0.0] * 12)
    finally:
        await writer.close()
    assert writer.failures == 0
    assert transactions_of_new_rows(db, row[0]) == (12, transactions)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("workload", ["partitioned", "topic"])
def test_the_raw_client_counts_what_python_websockets_counts(workload: str) -> None:
    out = run_bench("clientcheck", "--workload", workload, "--n", "60", "--rate", "30",
                    "--seconds", "2")  # exits non-zero unless both counted every event
    assert "both clients counted every event sent" in out


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("client", "mode"), [("raw", "topic"), ("websockets", "partitioned")])
def test_bench_connect_spreads_the_clients_over_processes(client: str, mode: str) -> None:
    out = run_bench("connect", "--n", "40", "--rounds", "2", "--load-procs", "3",
                    "--load-client", client, "--mode", mode, "--in-flight", "6")
    # (it fails if a connection failed)
    assert f"load: 3 x bench.{'rawclient' if client == 'raw' else 'loadclient'}" in out, out
    for server in ("broadcast", "rtgw"):
        line = next(line for line in out.splitlines() if line.startswith(f"{server}: "))
        assert "limited by (round by round): " in line and "cores while connecting" in line
    assert "rtgw conn/s vs broadcast(): " in out, out
