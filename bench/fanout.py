"""Fan-out benchmark: rtgw against two baselines, in one invocation.

    .venv/bin/python -m bench.fanout            # N = 1,000 on one topic, 3 repeats
    .venv/bin/python -m bench.fanout --short    # small N, short windows (< ~60 s)
    .venv/bin/python -m bench.fanout --workloads topic:10000,partitioned:10000 --repeats 1

Servers run pinned to CPU 0; the load clients (``--load-procs`` processes of ``--load-client``),
Postgres and its writer on CPU 1. Per server: connection setup rate, memory per idle
connection, a rate ramp up to saturation (and the side that limited it), then server CPU per
delivery and p50/p99 latency at a fixed rate, the same for every server: 20,000 deliveries/s
(10,000 with ``--short``), about half of what the tutorial loop saturates at, so below every
server's saturation; ``--rate`` (events/s) overrides it. The partitioned workload runs rtgw
only, at 5,000 changes/s unless ``--rate`` says otherwise (its target: ``--rate 20000``).
Figures are medians over ``--repeats``; compare the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from bench.harness import Plan, Run, environment_note, run_server
from bench.procs import pin, raise_fd_limit
from bench.report import ratios, summarize, table
from gateway.sources.embedded import EmbeddedPostgres

SERVERS = ("tutorial", "broadcast", "rtgw")  # also: tutorial-sansio, node (Node's ws)
LOAD_CLIENTS = {"raw": "rawclient", "websockets": "loadclient"}
LOAD_PROCS = 2


def plan_for(workload: str, n: int, args: argparse.Namespace) -> Plan:
    if args.short:
        start = 10_000.0 if workload == "topic" else 1_000.0
        plan = Plan(n, workload, start, 2.0, 5, 0.3, 0.8, 1.5, concurrency=50)
    else:
        start = 10_000.0 if workload == "topic" else 2_000.0
        plan = Plan(n, workload, start, 1.5, 9, 0.7, 2.0, 3.0)
    return dataclasses.replace(
        plan, load_client=LOAD_CLIENTS[args.load_client], load_procs=args.load_procs,
        rows_per_txn=args.rows_per_txn, server_args=("--no-gc",) if args.no_gc else (),
    )


def parse_workloads(spec: str) -> list[tuple[str, int]]:
    found = []
    for item in spec.split(","):
        name, _, count = item.partition(":")
        if name not in ("topic", "partitioned"):
            raise SystemExit(f"unknown workload {name!r} (topic or partitioned)")
        found.append((name, int(count)))
    return found


def remove_stale_clusters() -> None:
    """Stop and delete clusters of benchmark runs that were killed (their pid is gone)."""
    for folder in Path("/var/tmp").glob("rtgw-bench-*"):
        pid = folder.name.rsplit("-", 1)[1]
        if not pid.isdigit():
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(pid), 0)
            continue
        EmbeddedPostgres(folder / "pgdata").destroy()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def embedded_postgres() -> Iterator[EmbeddedPostgres]:
    from gateway.demo import apply_migrations

    remove_stale_clusters()
    folder = Path(f"/var/tmp/rtgw-bench-{os.getpid()}")
    pg = EmbeddedPostgres(folder / "pgdata")
    pg.destroy()
    # fsync off: the disk is not under test. synchronous_commit stays on: with it off, the
    # walsender only sees WAL after the WAL writer's 200 ms cycle, which is not rtgw's latency.
    pg.init({"fsync": "off", "full_page_writes": "off"})
    pg.start()
    try:
        apply_migrations(pg.dsn)
        yield pg
    finally:
        pg.destroy()
        shutil.rmtree(folder, ignore_errors=True)


def postmaster_pid(pg: EmbeddedPostgres) -> int | None:
    try:
        return int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    parser.add_argument("--short", action="store_true", help="small N, short windows")
    parser.add_argument("--workloads", default=None, help="e.g. topic:1000,partitioned:10000")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--rate", type=float, default=None, help="fixed rate, events/s")
    parser.add_argument("--json", type=Path, default=None, help="write raw results here")
    parser.add_argument("--load-client", choices=tuple(LOAD_CLIENTS), default="raw",
                        help="raw: bench.rawclient (cheap); websockets: bench.loadclient")
    parser.add_argument("--load-procs", type=int, default=LOAD_PROCS,
                        help="load-client processes the clients are spread over (all on CPU 1)")
    parser.add_argument("--rows-per-txn", type=int, default=1,
                        help="rtgw's writer: rows per transaction (100: notify a project)")
    parser.add_argument(
        "--no-gc",
        action="store_true",
        help="experiment: servers run with the cyclic GC disabled (an upper bound on its cost)",
    )
    args = parser.parse_args()

    pin(1)
    raise_fd_limit()
    workloads = parse_workloads(args.workloads or ("topic:200" if args.short else "topic:1000"))
    repeats = args.repeats or (1 if args.short else 3)
    servers = [s for s in args.servers.split(",") if s]
    secret = secrets.token_urlsafe(32)
    began = time.monotonic()
    note = (
        f"; load: {args.load_procs} x bench.{LOAD_CLIENTS[args.load_client]}"
        f"; writer: {args.rows_per_txn} row(s) per transaction"
        + ("; servers without the cyclic GC" if args.no_gc else "")
    )
    print(f"rtgw fan-out benchmark: {environment_note()}; repeats={repeats}{note}", flush=True)

    results: list[Run] = []
    with embedded_postgres() as pg:
        dsn = pg.dsn
        for workload, n in workloads:
            plan = plan_for(workload, n, args)
            names = servers if workload == "topic" else ["rtgw"]
            if workload == "partitioned":
                fixed: float = args.rate or 5_000.0
            else:
                fixed = args.rate or (10_000.0 if args.short else 20_000.0) / n
            runs: list[Run] = []
            for repeat in range(repeats):
                for server in names:
                    result = run_server(server, plan, dsn, secret, fixed, postmaster_pid(pg))
                    runs.append(result)
                    print(
                        f"  [{workload} N={n} #{repeat + 1}] {server}: "
                        f"{result.cpu_us:.1f} µs/delivery, sat {result.saturation:,.0f}/s"
                        f" (limited by: {result.limited_by}; cores {result.sat_server_cpu:.2f}"
                        f" / {result.sat_client_cpu:.2f} / {result.sat_source_cpu:.2f}), "
                        f"p99 {result.p99_ms or 0:.1f} ms, {result.kb_per_conn:.1f} KB/conn, "
                        f"{result.setup_per_s:,.0f} conn/s",
                        flush=True,
                    )
            results.extend(runs)
            summary = summarize(runs)
            title = f"{workload}, N = {n:,}"
            if workload == "partitioned":
                title += " (each client on its own partition; rate = changes/s)"
            print()
            print(table(title, summary))
            print()
            print(ratios(summary, workload))
            print(flush=True)
    print(f"done in {time.monotonic() - began:.0f} s")
    if args.json is not None:
        args.json.write_bytes(orjson.dumps([vars(r) | {"steps": [vars(s) for s in r.steps]}
                                            for r in results], option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
