"""Connecting: ``python -m bench.connect [--n 2000] [--rounds 5] [--servers broadcast,rtgw]``.

Each server in its own process pinned to CPU 0 (as ``bench.fanout`` starts them), the load
client on CPU 1 with 100 connections in flight. Per round the client opens N connections (for
rtgw: the token in the ``Authorization`` header, ``ready``, then ``subscribe`` to ``orders``
and its ``subscribed``; ``--mode partitioned``: a token per client, each subscribing to its own
partition of ``my_notifications``), then closes them all. Figures per server, medians over the
rounds: connections per second, and the server's CPU (utime + stime) per connection while they
were opened, which depends far less on the machine's other load than the rate does.
"""

from __future__ import annotations

import argparse
import secrets
import statistics

from bench.fanout import embedded_postgres
from bench.harness import Child, environment_note, free_port, wait_listening
from bench.procs import cpu_seconds, pin, raise_fd_limit


def rounds_of(server: str, dsn: str, n: int, mode: str, rounds: int) -> list[tuple[float, float]]:
    """(connections/s, server µs of CPU per connection) of each round."""
    secret = secrets.token_urlsafe(32)
    port = free_port()
    args = ["bench.servers", server, "--port", str(port)]
    if server == "rtgw":
        args += ["--dsn", dsn, f"--secret={secret}"]
    child = Child(*args)
    figures = []
    try:
        if server == "broadcast":
            child.read()
            path, client_mode = "/ws", "baseline"
        else:
            wait_listening(port, "/readyz")
            path, client_mode = "/v1/ws", mode
        for _ in range(rounds):
            client = Child(
                "bench.loadclient", "--url", f"ws://127.0.0.1:{port}{path}", "--n", str(n),
                "--mode", client_mode, f"--secret={secret}", "--concurrency", "100",
            )
            try:
                client.read()
                before = cpu_seconds(child.pid)
                answer = client.ask("connect")
                used = cpu_seconds(child.pid) - before
                if answer["failed"]:
                    raise RuntimeError(f"{server}: {answer['failed']} failed: {answer}")
                figures.append((n / answer["seconds"], used / n * 1e6))
                client.ask("quit")
            finally:
                client.stop()
    finally:
        child.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.connect", description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", choices=("topic", "partitioned"), default="topic")
    parser.add_argument("--servers", default="broadcast,rtgw")
    args = parser.parse_args()
    pin(1)
    raise_fd_limit()
    print(f"rtgw connect benchmark: {environment_note()}; N={args.n}, {args.rounds} rounds, "
          f"mode {args.mode}", flush=True)
    with embedded_postgres() as pg:
        for server in args.servers.split(","):
            figures = rounds_of(server, pg.dsn, args.n, args.mode, args.rounds)
            rates = ", ".join(f"{rate:,.0f}" for rate, _ in figures)
            cpus = ", ".join(f"{cpu:.0f}" for _, cpu in figures)
            print(f"{server}: {statistics.median(r for r, _ in figures):,.0f} conn/s ({rates}); "
                  f"server CPU {statistics.median(c for _, c in figures):.0f} µs/connection "
                  f"({cpus})", flush=True)


if __name__ == "__main__":
    main()
