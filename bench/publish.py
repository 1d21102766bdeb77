"""Publishing over HTTP: events per second and gateway CPU per event, single and batched.

    .venv/bin/python -m bench.publish            # 3 rounds of 5 s per form
    .venv/bin/python -m bench.publish --short    # 1 round of 2 s per form (in the suite)
    .venv/bin/python -m bench.publish --forms single --rounds 5

One gateway (``bench.servers rtgw``, as ``rtgw serve`` runs it, pinned to CPU 0) on an embedded
Postgres, ten native subscribers of ``orders`` and the publishers (``bench.publishload``, one
process on CPU 1): keep-alive HTTP connections publishing in a closed loop, one event per
``POST /v1/publish`` (``single``) or N per ``POST /v1/publish/batch`` (``batch:N``). Per form:
events accepted per second, the gateway's CPU per event (and Postgres's, and the load's),
request and publish → delivery latency, and ratios against ``single`` measured in the same run.
The forms alternate round by round; figures are medians over the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import statistics
import time
from dataclasses import dataclass

from bench.fanout import embedded_postgres, postmaster_pid
from bench.harness import Child, environment_note, free_port, wait_listening
from bench.procs import cpu_seconds, pin, tree_cpu_seconds

FORMS = ("single", "batch:1", "batch:10", "batch:100")


@dataclass(frozen=True, slots=True)
class Window:
    per_s: float  # events accepted per second
    gateway_us: float  # gateway CPU per accepted event
    postgres_us: float  # Postgres CPU (every backend) per accepted event
    load_cpu: float  # the load process's share of its core
    gateway_cpu: float  # the gateway's share of its core
    refused: int
    request_p50_ms: float
    request_p99_ms: float
    delivery_p50_ms: float
    delivery_p99_ms: float


def measure(
    gateway: Child, load: Child, pg_pid: int | None, form: str, seconds: float, connections: int
) -> Window:
    gateway0, load0 = cpu_seconds(gateway.pid), cpu_seconds(load.pid)
    pg0 = tree_cpu_seconds(pg_pid) if pg_pid is not None else 0.0
    began = time.monotonic()
    answer = load.ask(f"run {form} {seconds} {connections}")
    elapsed = time.monotonic() - began
    accepted = max(answer["accepted"], 1)
    gateway_s = cpu_seconds(gateway.pid) - gateway0
    pg_s = (tree_cpu_seconds(pg_pid) - pg0) if pg_pid is not None else 0.0
    return Window(
        per_s=answer["accepted"] / elapsed,
        gateway_us=gateway_s / accepted * 1e6,
        postgres_us=pg_s / accepted * 1e6,
        load_cpu=(cpu_seconds(load.pid) - load0) / elapsed,
        gateway_cpu=gateway_s / elapsed,
        refused=answer["refused"],
        request_p50_ms=answer["request_p50_ms"] or 0.0,
        request_p99_ms=answer["request_p99_ms"] or 0.0,
        delivery_p50_ms=answer["delivery_p50_ms"] or 0.0,
        delivery_p99_ms=answer["delivery_p99_ms"] or 0.0,
    )


def settled_frames(load: Child, timeout_s: float = 20.0) -> int:
    """The subscribers' frame count once it stops growing (what was published has arrived)."""
    last, deadline = -1, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        frames: int = load.ask("count")["frames"]
        if frames == last:
            return frames
        last = frames
        time.sleep(0.5)
    return last


def median_window(windows: list[Window]) -> Window:
    fields = Window.__dataclass_fields__
    return Window(**{name: statistics.median(getattr(w, name) for w in windows)
                     for name in fields})  # type: ignore[arg-type]


def report(results: dict[str, list[Window]], subscribers: int) -> str:
    base = median_window(results["single"]) if "single" in results else None
    lines = [
        "| form | events/s | gateway CPU/event (µs) | events/s per gateway core "
        "| Postgres CPU/event (µs) | gateway core | load core | request p50/p99 (ms) "
        "| delivery p50/p99 (ms) | events/s vs single | CPU/event vs single |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for form, windows in results.items():
        w = median_window(windows)
        speed = f"{w.per_s / base.per_s:.2f}x" if base and base.per_s else "—"
        cost = f"{w.gateway_us / base.gateway_us:.3f}x" if base and base.gateway_us else "—"
        lines.append(
            f"| {form} | {w.per_s:,.0f} | {w.gateway_us:.1f} | {1e6 / w.gateway_us:,.0f} "
            f"| {w.postgres_us:.1f} "
            f"| {w.gateway_cpu:.2f} | {w.load_cpu:.2f} "
            f"| {w.request_p50_ms:.1f} / {w.request_p99_ms:.1f} "
            f"| {w.delivery_p50_ms:.1f} / {w.delivery_p99_ms:.1f} | {speed} | {cost} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.publish", description=__doc__)
    parser.add_argument("--short", action="store_true", help="1 round of 2 s per form")
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None, help="window per form")
    parser.add_argument("--connections", type=int, default=16, help="publishing connections")
    parser.add_argument("--subscribers", type=int, default=10)
    args = parser.parse_args()
    forms = [form for form in args.forms.split(",") if form]
    rounds = args.rounds or (1 if args.short else 3)
    seconds = args.seconds or (2.0 if args.short else 5.0)
    pin(1)
    secret = secrets.token_urlsafe(32)
    print(f"rtgw publish benchmark: {environment_note()}; {rounds} round(s) of {seconds:g} s, "
          f"{args.connections} connections, {args.subscribers} subscribers", flush=True)
    results: dict[str, list[Window]] = {form: [] for form in forms}
    with embedded_postgres() as pg:
        port = free_port()
        gateway = Child("bench.servers", "rtgw", "--port", str(port), "--dsn", pg.dsn,
                        f"--secret={secret}")
        load: Child | None = None
        try:
            wait_listening(port, "/readyz")
            load = Child("bench.publishload", "--port", str(port), f"--secret={secret}",
                         "--subscribers", str(args.subscribers))
            load.read()
            load.ask("connect")
            for form in forms:  # warm up every path once
                load.ask(f"run {form} 0.5 {args.connections}")
            for round_number in range(rounds):
                for form in forms:
                    window = measure(gateway, load, postmaster_pid(pg), form, seconds,
                                     args.connections)
                    results[form].append(window)
                    print(f"  [round {round_number + 1}] {form}: {window.per_s:,.0f} events/s, "
                          f"{window.gateway_us:.1f} µs gateway CPU/event "
                          f"(gateway core {window.gateway_cpu:.2f}, load core "
                          f"{window.load_cpu:.2f}), refused {window.refused}", flush=True)
            frames = settled_frames(load)
            published = load.ask("count")["accepted"]
        finally:
            if load is not None:
                with contextlib.suppress(Exception):
                    load.ask("quit")
                load.stop()
            gateway.stop()
    print()
    print(report(results, args.subscribers))
    print()
    expected = published * args.subscribers
    print(f"deliveries: {frames:,} frames for {published:,} accepted events to "
          f"{args.subscribers} subscribers ({expected:,} expected: "
          f"{'every one arrived once' if frames == expected else 'MISMATCH'})")


if __name__ == "__main__":
    main()
