"""Scale-out benchmark: the fan-out workload through (a) one ``rtgw serve`` with the memory bus,
(b) one with the Redis bus, (c) two with the Redis bus (one per core, the clients split
between them), in one invocation; then the takeover time after SIGKILL of the slot owner.

    .venv/bin/python -m bench.scaleout            # N = 1,000 clients on one topic
    .venv/bin/python -m bench.scaleout --short    # N = 200, short windows (runs in the suite)

Each configuration gets the same clients (``bench.loadclient``, one process per gateway) and
the same writer (``bench.writer``, one ``orders`` row per tick, stamped with its commit time).
The offered rate ramps up (x1.5 a step) until a step delivers under 90 % of it; the best step
is the configuration's messages/s. Then, at one fixed rate for all three, server CPU per
delivery: the CPU seconds of every gateway process and of Redis (a ``redis-server`` of the
benchmark's own), divided by the deliveries; and p99 latency (row commit -> client receive,
over every client process's deliveries: their histograms merged). The three configurations run
in turn, three times (once with ``--short``); each figure is the median of its configuration's
runs. Gateways are pinned one per core; the load clients all run on CPU 1
(``bench.loadclient`` pins itself), so on a 2-core machine the second gateway shares a core
with them: the table says when the clients bound a result.

Takeover: two gateways on the Redis bus, a writer at 50 rows/s and a client on the standby;
SIGKILL the owner, and time until the client receives the first row it had not received before
(the standby took the slot and published); the client must then receive every committed row
once, in order. Repeated (the killed gateway comes back as the next standby); the median.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import websockets

from bench.fanout import embedded_postgres
from bench.harness import (
    Child,
    ask_all,
    environment_note,
    free_port,
    rtgw_env,
    rtgw_serve,
    wait_listening,
)
from bench.latency import Histogram
from bench.procs import cpu_seconds, raise_fd_limit
from gateway.encoding import dumps_text, loads
from gateway.tokens import mint_token
from tests.redis_server import RedisServer

SECRET = "bench-scaleout-" + "s" * 40
CONFIGS = (("memory", 1), ("redis", 1), ("redis", 2))


@dataclass
class Result:
    name: str
    best: float = 0.0  # deliveries/s at the best ramp step
    client_bound: bool = False
    cpu_us: float | None = None  # gateways + Redis, per delivery, at the fixed rate
    p99_ms: float | None = None
    fixed_delivered: float = 0.0


@dataclass(frozen=True)
class Plan:
    n: int
    start: float  # deliveries/s of the first ramp step
    steps: int
    warmup_s: float
    window_s: float
    fixed: float  # deliveries/s of the fixed-rate window
    takeovers: int
    repeats: int  # of the three configurations, interleaved; medians are reported


def plan_for(short: bool) -> Plan:
    if short:
        return Plan(200, 4_000.0, 3, 0.5, 1.0, 4_000.0, 2, 1)
    return Plan(1_000, 10_000.0, 7, 1.0, 2.0, 15_000.0, 5, 3)


def medians(runs: list[Result]) -> Result:
    """One configuration's repeats, as their medians (client-bound when most were)."""

    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    return Result(
        runs[0].name, median([r.best for r in runs]) or 0.0,
        sum(r.client_bound for r in runs) * 2 > len(runs),
        median([r.cpu_us for r in runs]), median([r.p99_ms for r in runs]),
        median([r.fixed_delivered for r in runs]) or 0.0,
    )


class Gateways:
    """``count`` ``rtgw serve`` processes on one slot, pinned one per core."""

    def __init__(self, dsn: str, count: int, bus: str, redis_url: str) -> None:
        self.slot = f"scale_{secrets.token_hex(3)}"
        self.dsn, self.bus, self.redis_url = dsn, bus, redis_url
        self.processes: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        for _ in range(count):
            self.add()
        for port in self.ports:
            wait_listening(port, "/readyz", 60)

    def add(self) -> int:
        """Start one more gateway (not waited for); its index."""
        port = free_port()
        env = rtgw_env(self.dsn, SECRET, port, self.slot, bus=self.bus,
                       redis_url=self.redis_url, log_level="error",
                       max_connections_per_ip="1000000")  # every client is on 127.0.0.1
        process = rtgw_serve(env)
        with contextlib.suppress(OSError):
            os.sched_setaffinity(process.pid, {len(self.processes) % (os.cpu_count() or 1)})
        self.processes.append(process)
        self.ports.append(port)
        return len(self.processes) - 1

    def owner(self, timeout_s: float = 30.0) -> int:
        """The index of the gateway that owns the slot."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for index, port in enumerate(self.ports):
                if self.processes[index].poll() is None and _owns(port):
                    return index
            time.sleep(0.05)
        raise TimeoutError("no gateway took the slot")

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.processes if p.poll() is None)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(20)
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.dsn, autocommit=True) as db:
            db.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                       "WHERE slot_name = %s AND NOT active", (self.slot,))


def _owns(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
            return bool(json.loads(answer.read()).get("slot_owner"))
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def gateways(dsn: str, count: int, bus: str, redis_url: str) -> Iterator[Gateways]:
    running = Gateways(dsn, count, bus, redis_url)
    try:
        yield running
    finally:
        running.close()


def measure(plan: Plan, dsn: str, redis: RedisServer, bus: str, count: int) -> Result:
    result = Result(f"{count} process{'es' if count > 1 else ''}, {bus} bus")
    with gateways(dsn, count, bus, redis.url) as running:
        writer = Child("bench.writer", "--dsn", dsn, "--workload", "topic", "--users", "1")
        clients = [
            Child("bench.loadclient", "--url", f"ws://127.0.0.1:{port}/v1/ws",
                  "--n", str(plan.n // count), "--mode", "topic", "--secret", SECRET,
                  "--concurrency", "50")
            for port in running.ports
        ]
        try:
            writer.read()
            for client in clients:
                client.read()
            connected = sum(a["connected"] for a in ask_all(clients, "connect"))
            if connected != plan.n:
                raise RuntimeError(f"{result.name}: {connected} of {plan.n} clients connected")

            def window(seconds: float) -> tuple[float, float, float | None, float]:
                cpu0 = running.cpu() + (cpu_seconds(redis.pid) if bus == "redis" else 0.0)
                client0 = sum(cpu_seconds(c.pid) for c in clients)
                ask_all(clients, "start")
                time.sleep(seconds)
                stats = ask_all(clients, "stop")
                elapsed = max(s["seconds"] for s in stats)
                cpu = running.cpu() + (cpu_seconds(redis.pid) if bus == "redis" else 0.0) - cpu0
                client_cpu = (sum(cpu_seconds(c.pid) for c in clients) - client0) / elapsed
                count_ = sum(s["count"] for s in stats)
                latency = Histogram()
                for answer in stats:
                    latency.merge(answer["histogram"])
                return count_ / elapsed, cpu, latency.percentile(0.99), client_cpu

            offered = plan.start
            for _ in range(plan.steps):
                writer.ask(f"rate {offered / connected:.3f}")
                time.sleep(plan.warmup_s)
                delivered, _, _, client_cpu = window(plan.window_s)
                if delivered > result.best:
                    result.best = delivered
                    result.client_bound = client_cpu >= 0.85  # they share one core
                if delivered < 0.9 * offered:
                    break
                offered *= 1.5
            drain(writer, clients)
            writer.ask(f"rate {plan.fixed / connected:.3f}")
            time.sleep(plan.warmup_s)
            delivered, cpu, p99, _ = window(plan.window_s * 1.5)
            result.fixed_delivered, result.p99_ms = delivered, p99
            deliveries = delivered * plan.window_s * 1.5
            result.cpu_us = cpu / deliveries * 1e6 if deliveries else None
        finally:
            writer.stop()
            for client in clients:
                with contextlib.suppress(Exception):
                    client.ask("quit")
                client.stop()
    return result


def drain(writer: Child, clients: list[Child], timeout_s: float = 60.0) -> None:
    """Stop writing and wait until nothing is in flight (what a saturated step queued)."""
    writer.ask("rate 0")
    deadline, last = time.monotonic() + timeout_s, -1
    while time.monotonic() < deadline:
        count = sum(answer["count"] for answer in ask_all(clients, "count"))
        if count == last:
            return
        last = count
        time.sleep(0.5)


async def _takeover(dsn: str, running: Gateways, index: int) -> tuple[float, bool]:
    """SIGKILL the owner while a client on gateway ``index`` reads a steady stream: seconds
    from the kill to the first new row it receives, and whether it then got every committed
    row exactly once, in order."""
    received: list[int] = []
    arrived = asyncio.Event()
    token = mint_token(SECRET, "bench", ["orders:read"], 600)
    url = f"ws://127.0.0.1:{running.ports[index]}/v1/ws"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}
                                  ) as ws:
        await ws.recv()
        await ws.send(dumps_text({"type": "subscribe", "ref": "s", "channel": "orders"}))
        await ws.recv()

        async def read() -> None:
            async for message in ws:
                frame = loads(message)
                if frame.get("type") == "event":
                    received.append(frame["change"]["new"]["id"])
                    arrived.set()

        async def until(count: int, wait_s: float) -> None:
            while len(received) < count:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), wait_s)

        reader = asyncio.create_task(read())
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as db:
            cur = await db.execute("INSERT INTO customers (name) VALUES ('bench') RETURNING id")
            customer = await cur.fetchone()
            assert customer is not None

            async def write(rows: int) -> None:
                for _ in range(rows):
                    await db.execute("INSERT INTO orders (customer_id) VALUES (%s)",
                                     (customer[0],))
                    await asyncio.sleep(0.02)

            await write(25)
            await until(25, 30)
            owner = running.owner()
            before = len(received)
            killed = time.monotonic()
            os.kill(running.processes[owner].pid, signal.SIGKILL)
            writing = asyncio.create_task(write(100))
            await until(before + 1, 60)
            took = time.monotonic() - killed
            await writing
            cur = await db.execute("SELECT id FROM orders WHERE id >= %s ORDER BY id",
                                   (received[0],))
            committed = [row[0] for row in await cur.fetchall()]
            with contextlib.suppress(TimeoutError):
                await until(len(committed), 30)
            exact = received == committed
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
            await reader
    running.processes[owner].wait()
    return took, exact


def takeovers(plan: Plan, dsn: str, redis: RedisServer) -> tuple[list[float], bool]:
    times, exact = [], True
    with gateways(dsn, 2, "redis", redis.url) as running:
        for _ in range(plan.takeovers):
            owner = running.owner()
            standby = next(i for i, p in enumerate(running.processes)
                           if i != owner and p.poll() is None)
            took, ok = asyncio.run(_takeover(dsn, running, standby))
            times.append(took)
            exact = exact and ok
            replacement = running.add()  # the next standby
            wait_listening(running.ports[replacement], "/readyz", 60)
    return times, exact


def report(results: list[Result], times: list[float], exact: bool) -> str:
    lines = [
        "| configuration | messages/s (best step) | CPU/delivery, gateways + Redis (µs) "
        "| fixed rate delivered (msgs/s) | p99 (ms) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        best = f"{r.best:,.0f}" + (" (client-bound)" if r.client_bound else "")
        cpu = "-" if r.cpu_us is None else f"{r.cpu_us:.1f}"
        p99 = "-" if r.p99_ms is None else f"{r.p99_ms:.1f}"
        lines.append(f"| {r.name} | {best} | {cpu} | {r.fixed_delivered:,.0f} | {p99} |")
    memory, redis_one, redis_two = results
    if memory.cpu_us and redis_one.cpu_us:
        extra = redis_one.cpu_us / memory.cpu_us - 1
        verdict = "met" if extra <= 0.15 else "MISSED"
        lines.append(f"\nRedis bus CPU/delivery vs memory bus: {extra:+.0%} "
                     f"(target at most +15 %: {verdict})")
    if redis_one.best:
        gain = redis_two.best / redis_one.best
        verdict = "met" if gain >= 1.6 else "MISSED"
        bound = " (the clients were the bottleneck)" if redis_two.client_bound else ""
        lines.append(f"Two processes vs one (Redis bus): {gain:.2f}x messages/s "
                     f"(target at least 1.6x: {verdict}){bound}")
    median = statistics.median(times)
    lines.append(f"Takeover after SIGKILL of the owner: median {median:.2f} s over "
                 f"{len(times)} ({', '.join(f'{t:.2f}' for t in times)}); every committed row "
                 f"received once, in order: {'yes' if exact else 'NO'} "
                 f"(target p50 under 5 s: {'met' if median < 5 and exact else 'MISSED'})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout")
    parser.add_argument("--short", action="store_true", help="small N, short windows")
    args = parser.parse_args()
    plan = plan_for(args.short)
    raise_fd_limit()
    print(f"scale-out, fan-out to N = {plan.n} on one topic, medians of {plan.repeats}; "
          f"{environment_note()}", flush=True)
    redis = RedisServer()
    redis.start()
    try:
        with embedded_postgres() as pg:
            runs = [[measure(plan, pg.dsn, redis, bus, count) for bus, count in CONFIGS]
                    for _ in range(plan.repeats)]
            results = [medians(list(each)) for each in zip(*runs, strict=True)]
            times, exact = takeovers(plan, pg.dsn, redis)
    finally:
        redis.close()
    print(report(results, times, exact))


if __name__ == "__main__":
    main()
