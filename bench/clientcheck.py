"""Check the cheap load client against the python-websockets one on the same events:
``python -m bench.clientcheck [--server rtgw] [--workload partitioned] [--n 1000] [--rate 500]``.

Both clients connect the same N clients (so every event reaches each of them once), both
record while the server sends at a low fixed rate and until the last event has arrived, then
each says how many events it counted, their latency percentiles and its CPU per event. Each
must count every event sent (rows committed x the clients each reaches), and the percentiles
be close; the CPU is what makes K raw clients read what
one server core writes.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import time
from collections.abc import Iterator

from bench.fanout import embedded_postgres
from bench.harness import Child, ask_all, free_port, wait_listening
from bench.procs import cpu_seconds, pin, raise_fd_limit

CLIENTS = ("rawclient", "loadclient")


@contextlib.contextmanager
def feeding(server: str, workload: str, n: int, secret: str) -> Iterator[tuple[str, Child]]:
    """The server under test and what sets its rate: (the clients' URL, the rate's Child)."""
    port = free_port()
    if server == "broadcast":
        source = Child("bench.servers", "broadcast", "--port", str(port))
        try:
            source.read()
            yield f"ws://127.0.0.1:{port}/ws", source
        finally:
            source.stop()
        return
    with embedded_postgres() as pg:
        gateway = Child("bench.servers", "rtgw", "--port", str(port), "--dsn", pg.dsn,
                        f"--secret={secret}")
        writer: Child | None = None
        try:
            wait_listening(port, "/readyz")
            users = str(n if workload == "partitioned" else 1)
            writer = Child("bench.writer", "--dsn", pg.dsn, "--workload", workload,
                           "--users", users)
            writer.read()
            yield f"ws://127.0.0.1:{port}/v1/ws", writer
        finally:
            if writer is not None:
                writer.stop()
            gateway.stop()


def settle(clients: list[Child], expected: int, timeout_s: float = 30.0) -> None:
    """Wait until every client counted ``expected`` events (or the time is up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(answer["count"] >= expected for answer in ask_all(clients, "count")):
            return
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.clientcheck", description=__doc__)
    parser.add_argument("--server", choices=("rtgw", "broadcast"), default="rtgw")
    parser.add_argument("--workload", choices=("topic", "partitioned"), default="partitioned")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500.0, help="events (changes) per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    pin(1)
    raise_fd_limit()
    secret = secrets.token_urlsafe(32)
    mode = "baseline" if args.server == "broadcast" else args.workload
    with feeding(args.server, args.workload, args.n, secret) as (url, rate):
        clients = [Child(f"bench.{name}", "--url", url, "--n", str(args.n), "--mode", mode,
                         f"--secret={secret}") for name in CLIENTS]
        try:
            for client in clients:
                client.read()
            for name, answer in zip(CLIENTS, ask_all(clients, "connect"), strict=True):
                print(f"{name}: {answer['connected']} connected, {answer['failed']} failed")
            cpu0 = [cpu_seconds(client.pid) for client in clients]
            ask_all(clients, "start")
            rate.ask(f"rate {args.rate}")
            time.sleep(args.seconds)
            rate.ask("rate 0")
            fan = args.n if args.server == "broadcast" or args.workload == "topic" else 1
            expected = rate.ask("stats")["sent"] * fan
            settle(clients, expected)
            stats = ask_all(clients, "stop")
            cpu = [cpu_seconds(c.pid) - c0 for c, c0 in zip(clients, cpu0, strict=True)]
        finally:
            for client in clients:
                with contextlib.suppress(Exception):
                    client.ask("quit")
                client.stop()
    print(f"{args.server}, {args.workload if args.server == 'rtgw' else 'one topic'}, "
          f"N = {args.n:,}, {args.rate:g} events/s for {args.seconds:g} s:")
    print("| client | events counted | p50 (ms) | p99 (ms) | max (ms) | CPU per event (µs) |")
    print("|---|---|---|---|---|---|")
    for name, answer, seconds in zip(CLIENTS, stats, cpu, strict=True):
        per_event = seconds / answer["count"] * 1e6 if answer["count"] else 0.0
        print(f"| {name} | {answer['count']:,} | {answer['p50_ms']} | {answer['p99_ms']} "
              f"| {answer['max_ms']} | {per_event:.1f} |")
    counts = [answer["count"] for answer in stats]
    if counts != [expected] * len(counts) or not expected:
        raise SystemExit(f"the clients counted {counts} of {expected} events sent")
    print("both clients counted every event sent")


if __name__ == "__main__":
    main()
