"""Driving one server through one workload: start it, connect the load, ramp, measure."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from bench.latency import Histogram
from bench.procs import core_busy_seconds, cpu_seconds, rss_kb, tree_cpu_seconds

REPO = Path(__file__).resolve().parent.parent


class Child:
    """A benchmark subprocess controlled over stdin/stdout JSON lines."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, command: str) -> None:
        stdin: IO[bytes] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(command.encode() + b"\n")
        stdin.flush()

    def ask(self, command: str) -> dict[str, Any]:
        self.send(command)
        return self.read()

    def read(self) -> dict[str, Any]:
        stdout = self.proc.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"{self.proc.args!r} exited ({self.proc.poll()})")
        answer: dict[str, Any] = orjson.loads(line)
        return answer

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def ask_all(children: Sequence[Child], command: str) -> list[dict[str, Any]]:
    """Send ``command`` to every child, then collect their answers: they work meanwhile."""
    for child in children:
        child.send(command)
    return [child.read() for child in children]


def add_up(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Load-client processes' answers to one command as one: counts summed, seconds the
    longest, latency histograms merged (and their percentiles read), the first failure."""
    total: dict[str, Any] = {
        name: sum(a[name] for a in answers) for name in ("count", "closed", "connected",
                                                          "failed") if name in answers[0]
    }
    if "seconds" in answers[0]:
        total["seconds"] = max(a["seconds"] for a in answers)
    if "histogram" in answers[0]:
        latency = Histogram()
        for answer in answers:
            latency.merge(answer["histogram"])
        total |= latency.summary()
    failures = [a["first_failure"] for a in answers if a.get("first_failure")]
    if failures:
        total["first_failure"] = failures[0]
    return total


def rtgw_env(dsn: str, secret: str, port: int, slot: str, **settings: str) -> dict[str, str]:
    """The environment of an ``rtgw serve`` process; ``settings`` are RTGW_* names without the
    prefix, in lower case (``history_size="0"``)."""
    return {
        **os.environ, "RTGW_DATABASE_URL": dsn, "RTGW_JWT_SECRET": secret,
        "RTGW_PORT": str(port), "RTGW_CHANNELS": str(REPO / "channels"), "RTGW_SLOT": slot,
        **{f"RTGW_{name.upper()}": value for name, value in settings.items()},
    }


def rtgw_serve(env: dict[str, str], log: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """``rtgw serve`` in a process of its own (its log to ``log``, else discarded)."""
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"], env=env, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=log if log is not None else subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, path: str | None, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if path is None:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                return
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"port {port} never became ready")


@dataclass(frozen=True, slots=True)
class Plan:
    n: int
    workload: str  # "topic" | "partitioned"
    ramp_start: float  # deliveries/s of the first ramp step
    ramp_factor: float
    ramp_steps: int
    warmup_s: float
    window_s: float
    fixed_window_s: float
    concurrency: int = 100
    server_args: tuple[str, ...] = ()  # extra ``bench.servers`` options, e.g. ("--no-gc",)
    load_client: str = "rawclient"  # or "loadclient" (python-websockets): a ``bench`` module
    load_procs: int = 1  # the clients spread over this many processes (all on CPU 1)
    rows_per_txn: int = 1  # rtgw's writer: rows per committed transaction


@dataclass
class Step:
    offered: float  # deliveries/s asked for
    delivered: float
    server_cpu: float  # fraction of one core
    client_cpu: float
    p50_ms: float | None
    p99_ms: float | None
    source_cpu: float = 0.0  # rtgw only: Postgres (all its processes) + the writer
    core_busy: tuple[float, float] = (0.0, 0.0)  # CPU 0 and CPU 1, by every process on them


@dataclass
class Run:
    server: str
    n: int
    workload: str
    setup_per_s: float = 0.0
    failed: int = 0
    kb_per_conn: float = 0.0
    steps: list[Step] = field(default_factory=list)
    saturation: float = 0.0
    per_core: float = 0.0  # deliveries/s divided by the server's CPU share, at the best step
    feed_per_core: float = 0.0  # the same for what shares CPU 1: load clients, Postgres, writer
    sat_server_cpu: float = 0.0  # cores used in the step that saturated
    sat_client_cpu: float = 0.0
    sat_source_cpu: float = 0.0
    limited_by: str = ""  # which side limited the saturation step (see ``limiting_side``)
    fixed_rate: float = 0.0  # events (or changes) per second
    fixed_delivered: float = 0.0
    cpu_us: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    closed: int = 0


class Session:
    """One server process, its load-client processes and (for rtgw) its writer."""

    def __init__(
        self, server: str, plan: Plan, dsn: str, secret: str, pg_pid: int | None = None
    ) -> None:
        self.name = server
        self.pg_pid = pg_pid
        self.plan = plan
        port = free_port()
        args = ["bench.servers", server, "--port", str(port), *plan.server_args]
        if server == "rtgw":
            args += ["--dsn", dsn, f"--secret={secret}"]
        self.server = Child(*args)
        self.writer: Child | None = None
        self.clients: list[Child] = []
        try:
            if server == "rtgw":
                wait_listening(port, "/readyz")
                users = plan.n if plan.workload == "partitioned" else 1
                self.writer = Child(
                    "bench.writer", "--dsn", dsn, "--workload", plan.workload,
                    "--users", str(users), "--rows-per-txn", str(plan.rows_per_txn),
                )
                self.writer.read()
                path, mode = "/v1/ws", plan.workload
            else:
                if server in ("broadcast", "node"):
                    self.server.read()  # it says when it listens
                else:
                    wait_listening(port, None)
                path, mode = "/ws", "baseline"
            self.clients = start_load(
                plan.load_client, f"ws://127.0.0.1:{port}{path}", plan.n, plan.load_procs, mode,
                secret, plan.concurrency,
            )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with contextlib.suppress(Exception):
            ask_all(self.clients, "quit")
        for client in self.clients:
            client.stop()
        if self.writer is not None:
            self.writer.stop()
        self.server.stop()

    @property
    def _rate_control(self) -> Child:
        return self.writer if self.writer is not None else self.server

    def set_rate(self, events_per_s: float) -> None:
        self._rate_control.ask(f"rate {events_per_s:.3f}")

    def _source_cpu(self) -> float:
        if self.writer is None:
            return 0.0
        pg = tree_cpu_seconds(self.pg_pid) if self.pg_pid is not None else 0.0
        return pg + cpu_seconds(self.writer.pid)

    def _client_cpu(self) -> float:
        return sum(cpu_seconds(client.pid) for client in self.clients)

    def ask_clients(self, command: str) -> dict[str, Any]:
        """``command`` to every load-client process, their answers added up (``add_up``)."""
        return add_up(ask_all(self.clients, command))

    def window(self, seconds: float) -> tuple[dict[str, Any], float, float, float]:
        """Deliveries, latencies and the CPU fractions of the server, of the load clients
        (together) and of what feeds rtgw (Postgres and the writer)."""
        server0, client0 = cpu_seconds(self.server.pid), self._client_cpu()
        source0, cores0, began = self._source_cpu(), core_busy_seconds(), time.monotonic()
        self.ask_clients("start")
        time.sleep(seconds)
        stats = self.ask_clients("stop")
        # The CPU readings bracket the clients' window and the round trips to them: divide by
        # the time between the readings, not by the window (longer when the machine is busy).
        elapsed = time.monotonic() - began
        server_cpu = (cpu_seconds(self.server.pid) - server0) / elapsed
        client_cpu = (self._client_cpu() - client0) / elapsed
        source_cpu = (self._source_cpu() - source0) / elapsed
        cores = [(b - a) / elapsed for a, b in zip(cores0, core_busy_seconds(), strict=True)]
        stats["core_busy"] = (cores + [0.0, 0.0])[:2]
        return stats, server_cpu, client_cpu, source_cpu

    def drain(self, timeout_s: float = 20.0) -> None:
        """Stop the load and wait until nothing is in flight any more."""
        self.set_rate(0)
        deadline = time.monotonic() + timeout_s
        last = -1
        while time.monotonic() < deadline:
            count = self.ask_clients("count")["count"]
            if count == last:
                return
            last = count
            time.sleep(0.5)

    def measure(self, result: Run, fixed_rate: float) -> None:
        """Fill ``result``: setup, idle memory, the ramp, then the fixed rate (events/s)."""
        plan = self.plan
        time.sleep(0.5)
        rss0 = rss_kb(self.server.pid)
        connected = self.ask_clients("connect")
        if connected["connected"] == 0:
            raise RuntimeError(f"{self.name}: no connection succeeded: {connected}")
        result.failed = connected["failed"]
        result.setup_per_s = connected["connected"] / connected["seconds"]
        time.sleep(1.0)
        result.kb_per_conn = (rss_kb(self.server.pid) - rss0) / connected["connected"]
        fan = 1 if plan.workload == "partitioned" else connected["connected"]

        offered = plan.ramp_start
        for _ in range(plan.ramp_steps):
            self.set_rate(offered / fan)
            time.sleep(plan.warmup_s)
            stats, server_cpu, client_cpu, source_cpu = self.window(plan.window_s)
            delivered = stats["count"] / stats["seconds"]
            step = Step(offered, delivered, server_cpu, client_cpu, stats["p50_ms"],
                        stats["p99_ms"], source_cpu, tuple(stats["core_busy"]))
            result.steps.append(step)
            # Throughput decides, not latency: on a shared machine a neighbour's burst can
            # stall a step without the server being anywhere near its limit.
            if delivered < 0.9 * offered:
                break
            offered *= plan.ramp_factor
        best = max(result.steps, key=lambda s: s.delivered)
        result.saturation = best.delivered
        result.per_core = max(s.delivered / s.server_cpu for s in result.steps if s.server_cpu)
        result.feed_per_core = max(
            (s.delivered / (s.client_cpu + s.source_cpu) for s in result.steps
             if s.client_cpu + s.source_cpu), default=0.0,
        )
        last = result.steps[-1]
        result.limited_by = limiting_side(last)
        result.sat_server_cpu, result.sat_client_cpu = last.server_cpu, last.client_cpu
        result.sat_source_cpu = last.source_cpu
        self.drain()

        rate = fixed_rate
        self.set_rate(rate)
        time.sleep(max(1.0, plan.warmup_s))
        stats, server_cpu, _, _ = self.window(plan.fixed_window_s)
        self.drain()
        result.fixed_rate = rate
        result.fixed_delivered = stats["count"] / stats["seconds"]
        if stats["count"]:
            result.cpu_us = server_cpu * stats["seconds"] / stats["count"] * 1e6
        result.p50_ms, result.p99_ms = stats["p50_ms"], stats["p99_ms"]
        result.closed = self.ask_clients("count")["closed"]


def start_load(
    module: str, url: str, n: int, procs: int, mode: str, secret: str, concurrency: int
) -> list[Child]:
    """``n`` clients of ``url`` spread over ``procs`` processes of ``bench.<module>`` (a load
    client), ``concurrency`` connections in flight in all, once each says it is ready."""
    procs = max(1, min(procs, n))
    clients: list[Child] = []
    try:
        for first, count in shares(n, procs):
            clients.append(Child(
                f"bench.{module}", "--url", url, "--first", str(first), "--n", str(count),
                "--mode", mode, f"--secret={secret}",
                "--concurrency", str(max(1, concurrency // procs)),
            ))
        for client in clients:
            client.read()
    except BaseException:
        for client in clients:
            client.stop()
        raise
    return clients


def shares(n: int, parts: int) -> list[tuple[int, int]]:
    """``n`` clients cut into ``parts`` runs as even as can be: (first index, count) each."""
    base, extra = divmod(n, parts)
    cuts, first = [], 0
    for part in range(parts):
        count = base + (part < extra)
        cuts.append((first, count))
        first += count
    return cuts


BUSY = 0.85  # of a core: a side using this much of its CPU is the one that limits
FULL = 0.95  # of a core: busy with every process on the machine, ours and the neighbours'


def limiting_side(step: Step) -> str:
    """Which side limited a ramp step: ``server`` (it has CPU 0), ``clients`` or
    ``Postgres+writer`` (they share CPU 1), whichever used most of a core that was full; when
    the machine's other processes took most of that core, they are named too. ``not reached``:
    the step delivered what it offered; ``none``: neither core was full."""
    if step.delivered >= 0.9 * step.offered:
        return "not reached"
    return busy_side(step.server_cpu, step.client_cpu, step.source_cpu, step.core_busy)


def busy_side(
    server_cpu: float, client_cpu: float, source_cpu: float, core_busy: tuple[float, float]
) -> str:
    """The side that used most of a full core over a window (see ``limiting_side``); fractions
    of one core each, ``core_busy`` by every process on CPU 0 and CPU 1."""
    server_core, feeding_core = core_busy
    feeding = client_cpu + source_cpu
    sides = []  # (core, the side named, its share, our processes' share of the core)
    if server_cpu >= BUSY or server_core >= FULL:
        sides.append((0, "server", server_cpu, server_cpu, server_core))
    if feeding >= BUSY or feeding_core >= FULL:
        feeder, share = max(("clients", client_cpu), ("Postgres+writer", source_cpu),
                            key=lambda side: side[1])
        sides.append((1, feeder, share, feeding, feeding_core))
    if not sides:
        return "none"
    names = []
    for core, name, share, ours, busy in sides:
        names.append(name if ours >= BUSY else
                     f"CPU {core} full ({name} {share:.2f}, neighbours {busy - ours:.2f})")
    return " and ".join(names)


def run_server(
    server: str, plan: Plan, dsn: str, secret: str, fixed: float, pg_pid: int | None = None
) -> Run:
    result = Run(server=server, n=plan.n, workload=plan.workload)
    session = Session(server, plan, dsn, secret, pg_pid)
    try:
        session.measure(result, fixed)
    finally:
        session.close()
    return result


def environment_note() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} at start"
