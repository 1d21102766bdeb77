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

from bench.procs import cpu_seconds, rss_kb, tree_cpu_seconds

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


@dataclass
class Step:
    offered: float  # deliveries/s asked for
    delivered: float
    server_cpu: float  # fraction of one core
    client_cpu: float
    p50_ms: float | None
    p99_ms: float | None
    source_cpu: float = 0.0  # rtgw only: Postgres (all its processes) + the writer


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
    client_bound: bool = False
    per_core: float = 0.0  # deliveries/s divided by the server's CPU share, at the best step
    sat_server_cpu: float = 0.0  # cores used in the step that saturated
    sat_client_cpu: float = 0.0
    sat_source_cpu: float = 0.0
    fixed_rate: float = 0.0  # events (or changes) per second
    fixed_delivered: float = 0.0
    cpu_us: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    closed: int = 0


class Session:
    """One server process, its load client and (for rtgw) its writer."""

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
        self.client: Child | None = None
        try:
            if server == "rtgw":
                wait_listening(port, "/readyz")
                users = plan.n if plan.workload == "partitioned" else 1
                self.writer = Child(
                    "bench.writer", "--dsn", dsn, "--workload", plan.workload,
                    "--users", str(users),
                )
                self.writer.read()
                path, mode = "/v1/ws", plan.workload
            else:
                if server in ("broadcast", "node"):
                    self.server.read()  # it says when it listens
                else:
                    wait_listening(port, None)
                path, mode = "/ws", "baseline"
            self.client = Child(
                "bench.loadclient", "--url", f"ws://127.0.0.1:{port}{path}", "--n", str(plan.n),
                "--mode", mode, f"--secret={secret}", "--concurrency", str(plan.concurrency),
            )
            self.client.read()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.ask("quit")
            self.client.stop()
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

    def window(self, seconds: float) -> tuple[dict[str, Any], float, float, float]:
        """Deliveries, latencies and the CPU fractions of the server, of the load client and
        of what feeds rtgw (Postgres and the writer)."""
        assert self.client is not None
        server0, client0 = cpu_seconds(self.server.pid), cpu_seconds(self.client.pid)
        source0 = self._source_cpu()
        self.client.ask("start")
        time.sleep(seconds)
        stats = self.client.ask("stop")
        elapsed = stats["seconds"]
        server_cpu = (cpu_seconds(self.server.pid) - server0) / elapsed
        client_cpu = (cpu_seconds(self.client.pid) - client0) / elapsed
        source_cpu = (self._source_cpu() - source0) / elapsed
        return stats, server_cpu, client_cpu, source_cpu

    def drain(self, timeout_s: float = 20.0) -> None:
        """Stop the load and wait until nothing is in flight any more."""
        assert self.client is not None
        self.set_rate(0)
        deadline = time.monotonic() + timeout_s
        last = -1
        while time.monotonic() < deadline:
            count = self.client.ask("count")["count"]
            if count == last:
                return
            last = count
            time.sleep(0.5)

    def measure(self, result: Run, fixed_rate: float) -> None:
        """Fill ``result``: setup, idle memory, the ramp, then the fixed rate (events/s)."""
        plan, client = self.plan, self.client
        assert client is not None
        time.sleep(0.5)
        rss0 = rss_kb(self.server.pid)
        connected = client.ask("connect")
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
                        stats["p99_ms"], source_cpu)
            result.steps.append(step)
            # Throughput decides, not latency: on a shared machine a neighbour's burst can
            # stall a step without the server being anywhere near its limit.
            if delivered < 0.9 * offered:
                break
            offered *= plan.ramp_factor
        best = max(result.steps, key=lambda s: s.delivered)
        result.saturation = best.delivered
        result.per_core = max(s.delivered / s.server_cpu for s in result.steps if s.server_cpu)
        last = result.steps[-1]
        result.client_bound = last.client_cpu >= 0.85 and last.client_cpu > last.server_cpu
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
        result.closed = client.ask("count")["closed"]


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
