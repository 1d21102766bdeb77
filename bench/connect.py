"""Connecting: ``python -m bench.connect [--n 2000] [--rounds 5] [--servers broadcast,rtgw]``.

Each server in its own process pinned to CPU 0 (as ``bench.fanout`` starts them), the load
client on CPU 1 with 100 connections in flight. Per round the client opens N connections (for
rtgw: the token in the ``Authorization`` header, ``ready``, then ``subscribe`` to ``orders``
and its ``subscribed``; ``--mode partitioned``: a token per client, each subscribing to its own
partition of ``my_notifications``), then closes them all. Figures per server, medians over the
rounds: connections per second, and the server's CPU (utime + stime) per connection while they
were opened, which depends far less on the machine's other load than the rate does.

``--callgrind``: each server under ``valgrind --tool=callgrind`` (slow: rtgw takes about a
minute to start), a warm-up round, then the instructions the server executed per connection
over a round (opened and closed again): a figure that does not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.fanout import embedded_postgres
from bench.harness import REPO, Child, environment_note, free_port, wait_listening
from bench.procs import cpu_seconds, pin, raise_fd_limit, rss_kb


def rounds_of(
    server: str, dsn: str, n: int, mode: str, rounds: int
) -> list[tuple[float, float, float]]:
    """(connections/s, server µs of CPU per connection, KB of RSS per idle connection) of each
    round."""
    secret = secrets.token_urlsafe(32)
    port = free_port()
    args = ["bench.servers", server, "--port", str(port)]
    if server == "rtgw":
        args += ["--dsn", dsn, f"--secret={secret}"]
    child = Child(*args)
    try:
        if server == "broadcast":
            child.read()
            path, mode = "/ws", "baseline"
        else:
            wait_listening(port, "/readyz")
            path = "/v1/ws"
        return [connect_round(port, path, n, mode, secret, child.pid) for _ in range(rounds)]
    finally:
        child.stop()


def connect_round(
    port: int, path: str, n: int, mode: str, secret: str, pid: int | None = None
) -> tuple[float, float, float]:
    """Open ``n`` clients (100 in flight), then close them: connections/s, the CPU the process
    ``pid`` used per connection while they were opened (µs), and its RSS per connection a
    second after (KB)."""
    client = Child(
        "bench.loadclient", "--url", f"ws://127.0.0.1:{port}{path}", "--n", str(n),
        "--mode", mode, f"--secret={secret}", "--concurrency", "100",
    )
    try:
        client.read()
        before, rss = (cpu_seconds(pid), rss_kb(pid)) if pid is not None else (0.0, 0)
        answer = client.ask("connect")
        used = cpu_seconds(pid) - before if pid is not None else 0.0
        if answer["failed"]:
            raise RuntimeError(f"{path}: {answer['failed']} failed: {answer}")
        time.sleep(1.0)
        rss = rss_kb(pid) - rss if pid is not None else 0
        client.ask("quit")
        return n / answer["seconds"], used / n * 1e6, rss / n
    finally:
        client.stop()


def instructions_per_connection(server: str, dsn: str, n: int, mode: str) -> float:
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
            connect_round(port, path, n, mode, secret)
            subprocess.run(["callgrind_control", "--zero", str(process.pid)], check=True,
                           capture_output=True)
            connect_round(port, path, n, mode, secret)
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.connect", description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", choices=("topic", "partitioned"), default="topic")
    parser.add_argument("--servers", default="broadcast,rtgw")
    parser.add_argument("--callgrind", action="store_true",
                        help="the servers' instructions per connection (valgrind's callgrind)")
    args = parser.parse_args()
    pin(1)
    raise_fd_limit()
    print(f"rtgw connect benchmark: {environment_note()}; N={args.n}, {args.rounds} rounds, "
          f"mode {args.mode}", flush=True)
    with embedded_postgres() as pg:
        if args.callgrind:
            for server in args.servers.split(","):
                count = instructions_per_connection(server, pg.dsn, args.n, args.mode)
                print(f"{server}: {count:,.0f} instructions per connection (opened and "
                      "closed)", flush=True)
            return
        for server in args.servers.split(","):
            figures = rounds_of(server, pg.dsn, args.n, args.mode, args.rounds)
            rates, cpus, sizes = zip(*figures, strict=True)
            print(f"{server}: {statistics.median(rates):,.0f} conn/s "
                  f"({', '.join(f'{r:,.0f}' for r in rates)}); server CPU "
                  f"{statistics.median(cpus):.0f} µs/connection "
                  f"({', '.join(f'{c:.0f}' for c in cpus)}); "
                  f"{statistics.median(sizes):.1f} KB/idle connection (first round: "
                  f"{sizes[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
