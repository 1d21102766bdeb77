"""Connecting: ``python -m bench.connect [--n 2000] [--rounds 5] [--servers broadcast,rtgw]``.

Each server in its own process pinned to CPU 0 (as ``bench.fanout`` starts them), the load
clients on CPU 1: ``--load-procs`` processes (default 2) of ``--load-client`` (default ``raw``,
bench/rawclient.py; ``websockets``: bench/loadclient.py), ``--in-flight`` connections (default
100) being opened at a time in all. Per round they open N connections (for rtgw: the token in
the ``Authorization`` header, ``ready``, then ``subscribe`` to ``orders`` and its
``subscribed``; ``--mode partitioned``: a token per client, each subscribing to its own
partition of ``my_notifications``), then close them all.
Figures per server, medians over the rounds: connections per second, the server's CPU
(utime + stime) per connection while they were opened, which depends far less on the machine's
other load than the rate does (and the rate it means for a core of its own), the share of a
core the server and the load clients used meanwhile, and so which side limited the rate (as
``bench.fanout`` names it).

``--profile FILE``: py-spy samples rtgw over the rounds (``--format raw`` into FILE; install
py-spy into the venv first), and the functions with the most self and inclusive time are
printed (``bench.profile``'s summary).

``--callgrind``: each server under ``valgrind --tool=callgrind`` (slow: rtgw takes about a
minute to start), a warm-up round, then the instructions the server executed per connection
over a round (opened and closed again): a figure that does not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.fanout import LOAD_CLIENTS, LOAD_PROCS, embedded_postgres
from bench.harness import (
    REPO,
    Child,
    add_up,
    ask_all,
    busy_side,
    environment_note,
    free_port,
    start_load,
    wait_listening,
)
from bench.procs import core_busy_seconds, cpu_seconds, pin, raise_fd_limit, rss_kb
from bench.profile import summarize


@dataclass(frozen=True, slots=True)
class Rig:
    """The load: ``procs`` processes of ``bench.<client>``, ``in_flight`` connections being
    opened at a time in all."""

    client: str = "rawclient"
    procs: int = LOAD_PROCS
    in_flight: int = 100


@dataclass(frozen=True, slots=True)
class Round:
    rate: float  # connections/s
    cpu_us: float  # the server's CPU per connection
    kb: float  # the server's RSS per idle connection
    server_cpu: float  # fractions of a core while connecting: the server,
    client_cpu: float  # and the load clients together (all on CPU 1)
    limited_by: str  # ``busy_side``


@contextlib.contextmanager
def started(server: str, dsn: str, secret: str) -> Iterator[tuple[int, str, int]]:
    """``server`` in a process of its own: (port, path, pid) once it listens."""
    port = free_port()
    args = ["bench.servers", server, "--port", str(port)]
    if server == "rtgw":
        args += ["--dsn", dsn, f"--secret={secret}"]
    child = Child(*args)
    try:
        if server == "broadcast":
            child.read()
        else:
            wait_listening(port, "/readyz")
        yield port, "/v1/ws" if server == "rtgw" else "/ws", child.pid
    finally:
        child.stop()


def rounds_of(
    servers: list[str], dsn: str, n: int, mode: str, rounds: int, rig: Rig,
    profile: Path | None = None,
) -> dict[str, list[Round]]:
    """Each server's rounds, the servers taking turns (round 1 of each, then round 2 …), so
    that a neighbour's burst on the machine falls on all of them alike; rtgw sampled by
    py-spy into ``profile`` meanwhile, when given."""
    secret = secrets.token_urlsafe(32)
    found: dict[str, list[Round]] = {server: [] for server in servers}
    with contextlib.ExitStack() as stack:
        running = {server: stack.enter_context(started(server, dsn, secret))
                   for server in servers}
        if profile is not None and "rtgw" in running:
            stack.enter_context(sampled(running["rtgw"][2], profile))
        for _ in range(rounds):
            for server, (port, path, pid) in running.items():
                kind = mode if server == "rtgw" else "baseline"
                found[server].append(connect_round(port, path, n, kind, secret, rig, pid))
    return found


@contextlib.contextmanager
def sampled(pid: int, out: Path) -> Iterator[None]:
    """py-spy samples the process ``pid`` into ``out`` (raw, folded stacks) meanwhile."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    spy = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", "1000", "--format",
                            "raw", "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)


def connect_round(
    port: int, path: str, n: int, mode: str, secret: str, rig: Rig, pid: int | None = None
) -> Round:
    """Open ``n`` clients, then close them; the server's figures read from the process ``pid``
    (its RSS a second after the last opened)."""
    clients = start_load(rig.client, f"ws://127.0.0.1:{port}{path}", n, rig.procs, mode, secret,
                         rig.in_flight)
    try:
        before, rss = (cpu_seconds(pid), rss_kb(pid)) if pid is not None else (0.0, 0)
        clients0, cores0 = sum(map(cpu_seconds, (c.pid for c in clients))), core_busy_seconds()
        began = time.monotonic()
        answer = add_up(ask_all(clients, "connect"))
        elapsed = time.monotonic() - began
        used = cpu_seconds(pid) - before if pid is not None else 0.0
        client_cpu = (sum(map(cpu_seconds, (c.pid for c in clients))) - clients0) / elapsed
        cores = [(b - a) / elapsed for a, b in zip(cores0, core_busy_seconds(), strict=True)]
        if answer["failed"]:
            raise RuntimeError(f"{path}: {answer['failed']} failed: {answer}")
        time.sleep(1.0)
        rss = rss_kb(pid) - rss if pid is not None else 0
        ask_all(clients, "quit")
        server_cpu = used / elapsed
        core0, core1 = (cores + [0.0, 0.0])[:2]
        limited_by = busy_side(server_cpu, client_cpu, 0.0, (core0, core1))
        return Round(answer["connected"] / answer["seconds"], used / n * 1e6, rss / n,
                     server_cpu, client_cpu, limited_by)
    finally:
        for client in clients:
            client.stop()


def instructions_per_connection(server: str, dsn: str, n: int, mode: str, rig: Rig) -> float:
    """The instructions the server's process executed per connection opened and closed
    (callgrind, counted from after a warm-up round of ``n`` to the end of a second round)."""
    secret = secrets.token_urlsafe(32)
    port = free_port()
    args = ["bench.servers", server, "--port", str(port)]
    path = "/ws" if server == "broadcast" else "/v1/ws"
    if server == "rtgw":
        args += ["--dsn", dsn, f"--secret={secret}"]
    else:
        mode = "baseline"
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        process = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
             sys.executable, "-m", *args],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening(port, "/readyz" if server == "rtgw" else None, 600)
            connect_round(port, path, n, mode, secret, rig)
            subprocess.run(["callgrind_control", "--zero", str(process.pid)], check=True,
                           capture_output=True)
            connect_round(port, path, n, mode, secret, rig)
            subprocess.run(["callgrind_control", "--dump", str(process.pid)], check=True,
                           capture_output=True)
            dumps = sorted(Path(folder).glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
            found = re.search(r"^(?:summary|totals): (\d+)", dumps[-1].read_text(), re.M)
            if found is None:
                raise RuntimeError("no instruction count in the callgrind dump")
            return int(found.group(1)) / n
        finally:
            process.terminate()
            process.wait(120)


def report(server: str, figures: list[Round]) -> str:
    median = statistics.median
    return (
        f"{server}: {median(r.rate for r in figures):,.0f} conn/s "
        f"({', '.join(f'{r.rate:,.0f}' for r in figures)}); server CPU "
        f"{median(r.cpu_us for r in figures):.0f} µs/connection "
        f"({', '.join(f'{r.cpu_us:.0f}' for r in figures)}), so "
        f"{1e6 / median(r.cpu_us for r in figures):,.0f} conn/s per core of its own; "
        f"cores while connecting: server "
        f"{median(r.server_cpu for r in figures):.2f}, load clients "
        f"{median(r.client_cpu for r in figures):.2f}; limited by (round by round): "
        f"{'; '.join(r.limited_by for r in figures)}; "
        f"{median(r.kb for r in figures):.1f} KB/idle connection (first round: "
        f"{figures[0].kb:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.connect", description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", choices=("topic", "partitioned"), default="topic")
    parser.add_argument("--servers", default="broadcast,rtgw")
    parser.add_argument("--load-client", choices=tuple(LOAD_CLIENTS), default="raw",
                        help="raw: bench.rawclient (cheap); websockets: bench.loadclient")
    parser.add_argument("--load-procs", type=int, default=LOAD_PROCS,
                        help="load-client processes the clients are spread over (all on CPU 1)")
    parser.add_argument("--in-flight", type=int, default=Rig.in_flight,
                        help="connections being opened at a time, over all load processes")
    parser.add_argument("--profile", type=Path,
                        help="py-spy rtgw over the rounds into this file and summarize it")
    parser.add_argument("--callgrind", action="store_true",
                        help="the servers' instructions per connection (valgrind's callgrind)")
    args = parser.parse_args()
    pin(1)
    raise_fd_limit()
    rig = Rig(LOAD_CLIENTS[args.load_client], args.load_procs, args.in_flight)
    servers = [server for server in args.servers.split(",") if server]
    print(f"rtgw connect benchmark: {environment_note()}; N={args.n}, {args.rounds} rounds, "
          f"mode {args.mode}; load: {rig.procs} x bench.{rig.client}", flush=True)
    with embedded_postgres() as pg:
        if args.callgrind:
            for server in servers:
                count = instructions_per_connection(server, pg.dsn, args.n, args.mode, rig)
                print(f"{server}: {count:,.0f} instructions per connection (opened and "
                      "closed)", flush=True)
            return
        found = rounds_of(servers, pg.dsn, args.n, args.mode, args.rounds, rig, args.profile)
    for server, figures in found.items():
        print(report(server, figures), flush=True)
    if "rtgw" in found and "broadcast" in found:
        pairs = [a.rate / b.rate for a, b in zip(found["rtgw"], found["broadcast"], strict=True)]
        print(f"rtgw conn/s vs broadcast(): {statistics.median(pairs):.2f}x (round by round: "
              f"{', '.join(f'{x:.2f}' for x in pairs)})", flush=True)
    if args.profile is not None:
        print(summarize(args.profile, 40))


if __name__ == "__main__":
    main()
