"""Soak: ``rtgw serve`` with thousands of resuming clients under a steady stream of commits, for
half an hour; every client checks that it got every change it should, once, in order, and the
server's memory is sampled throughout.

    python -m bench.soak                    # 5,000 clients, 200 changes/s, 30 minutes
    python -m bench.soak --short            # 300 clients, 45 s of writing (runs in the suite)
    python -m bench.soak --clients 5000 --minutes 10 --rate 200

The gateway runs as ``rtgw serve`` on an embedded Postgres 18. The clients (``bench.soakclient``,
spread over several processes) each read ``orders``, which every client reads, and their own
partition of ``my_notifications``. The writer (``bench.writer --workload mixed``) commits
``--rate`` rows a second: every ``--topic-every``-th an order, the others notifications
round-robin over the clients' users. At the end the rows in the database are the truth: each
client's sequence of row ids per topic is compared with the rows committed after the clients
subscribed (lost, duplicated, out of order or different: all must be 0). The server's RSS is
sampled every 5 s (1 s with ``--short``) into a CSV and a PNG plot; after the warm-up (the
history's age bound, ``RTGW_HISTORY_AGE_S``, plus a minute: until then the history is still
filling) its slope is reported in MB/h.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import secrets
import signal
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType

import orjson
import psycopg

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
from bench.plot import line_chart
from bench.procs import cpu_seconds, raise_fd_limit, rss_kb
from bench.soakclient import CHANNELS, sequence_hash
from gateway.sources.embedded import EmbeddedPostgres

CLIENTS_PER_PROCESS = 1250
REPO = Path(__file__).resolve().parent.parent


class Gateway:
    """``rtgw serve`` on one port and one slot, stopped and started again at will."""

    def __init__(self, dsn: str, secret: str, log: Path, **settings: str) -> None:
        self.port = free_port()
        self.env = rtgw_env(dsn, secret, self.port, f"soak_{secrets.token_hex(3)}", **settings)
        self.log_path = log
        self._log = log.open("wb")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> float:
        """Start it; seconds until ``/readyz`` answered 200."""
        began = time.monotonic()
        self.process = rtgw_serve(self.env, self._log)
        wait_listening(self.port, "/readyz", timeout_s=120)
        return time.monotonic() - began

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 60.0) -> float:
        """Send ``sig`` and wait for the process to end; the seconds that took."""
        process, began = self.process, time.monotonic()
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return time.monotonic() - began

    def close(self) -> None:
        self.stop()
        self._log.close()

    def logged(self, message: str, after: int = 0) -> float | None:
        """When (Unix seconds) the gateway first logged a line starting with ``message`` past
        byte ``after`` of its log (JSON lines: with ``log_level`` info or lower)."""
        with self.log_path.open("rb") as log:
            log.seek(after)
            for line in log:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    record = orjson.loads(line)
                    if record["message"].startswith(message):
                        return datetime.fromisoformat(record["ts"]).timestamp()
        return None


@dataclass(frozen=True, slots=True)
class Load:
    clients: int
    rate: float  # rows committed per second
    topic_every: int  # every k-th row is an order (read by every client)

    @property
    def processes(self) -> int:
        return max(1, math.ceil(self.clients / CLIENTS_PER_PROCESS))

    def describe(self) -> str:
        orders = self.rate / self.topic_every
        return (f"{self.clients:,} clients in {self.processes} process(es); "
                f"{self.rate:g} changes/s ({orders:g}/s to orders, which every client reads: "
                f"{orders * self.clients:,.0f} deliveries/s; {self.rate - orders:g}/s to "
                f"my_notifications, one partition per client)")


@dataclass
class Verdict:
    """Every client's received sequences against the rows committed, summed up."""

    orders: int = 0  # rows committed to each topic since ``Rig.begin``
    notifications: int = 0
    expected: int = 0  # deliveries
    received: int = 0
    lost: int = 0
    repeated: int = 0  # duplicates, or events out of order
    different: int = 0  # (client, topic) sequences of the right length with other rows
    unrecovered: int = 0  # resumes answered ``recovered: false``
    gaps: int = 0
    reconnects: int = 0
    closes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    latency: dict[str, Histogram] = field(
        default_factory=lambda: {channel: Histogram() for channel in CHANNELS}
    )

    @property
    def clean(self) -> bool:
        return not (self.lost or self.repeated or self.different or self.unrecovered or self.gaps)

    def lines(self) -> list[str]:
        orders, notes = (self.latency[channel] for channel in CHANNELS)
        return [
            f"changes committed: {self.orders:,} orders + {self.notifications:,} notifications",
            f"deliveries expected {self.expected:,}, received {self.received:,}: "
            f"lost {self.lost}, duplicated {self.repeated}, different {self.different}",
            f"resumes not recovered {self.unrecovered}, gaps {self.gaps}, "
            f"reconnects {self.reconnects}, closes {self.closes or '{}'}, "
            f"errors {self.errors or '{}'}",
            "latency, row written -> client: "
            f"orders (each a burst to every client) p50 {_ms(orders.percentile(0.5))}, "
            f"p99 {_ms(orders.percentile(0.99))}; my_notifications (one client each) "
            f"p50 {_ms(notes.percentile(0.5))}, p99 {_ms(notes.percentile(0.99))}",
        ]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


class Rig:
    """An embedded Postgres, ``rtgw serve``, the client processes and the writer."""

    def __init__(
        self, pg: EmbeddedPostgres, load: Load, out: Path, ttl_s: int, **settings: str
    ) -> None:
        self.pg, self.load = pg, load
        self.secret = secrets.token_urlsafe(32)
        out.mkdir(parents=True, exist_ok=True)
        settings.setdefault("max_connections_per_ip", str(load.clients + 100))
        settings.setdefault("log_level", "warning")
        self.gateway = Gateway(pg.dsn, self.secret, out / "gateway.log", **settings)
        self.ttl_s = ttl_s
        self.clients: list[Child] = []
        self.writer: Child | None = None
        self.start_ids = (0, 0)

    def __enter__(self) -> Rig:
        try:
            self.gateway.start()
            share = math.ceil(self.load.clients / self.load.processes)
            for first in range(0, self.load.clients, share):
                self.clients.append(Child(
                    "bench.soakclient", "--url", self.gateway.url, "--first", str(first),
                    "--count", str(min(share, self.load.clients - first)),
                    f"--secret={self.secret}", "--ttl", str(self.ttl_s),
                ))
            self.writer = Child(
                "bench.writer", "--dsn", self.pg.dsn, "--workload", "mixed",
                "--users", str(self.load.clients), "--topic-every", str(self.load.topic_every),
            )
            for child in (*self.clients, self.writer):
                child.read()  # ready
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for child in self.clients:
            with contextlib.suppress(Exception):
                child.ask("quit")
            child.stop()
        if self.writer is not None:
            self.writer.stop()
        self.gateway.close()

    def connect(self) -> float:
        """Connect and subscribe every client; the seconds it took."""
        answers = ask_all(self.clients, "connect")
        return max(float(answer["seconds"]) for answer in answers)

    def begin(self) -> None:
        """Start writing; rows committed from here on are the ones every check expects."""
        self.start_ids = (self._max_id("orders"), self._max_id("notifications"))
        self.set_rate(self.load.rate)

    def set_rate(self, rate: float) -> None:
        assert self.writer is not None
        self.writer.ask(f"rate {rate:.3f}")

    def counts(self) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for answer in ask_all(self.clients, "count"):
            for key, value in answer.items():
                totals[key] += value
        return totals

    def _max_id(self, table: str) -> int:
        with psycopg.connect(self.pg.dsn, autocommit=True) as conn:
            row = conn.execute(f"SELECT coalesce(max(id), 0) FROM public.{table}").fetchone()
        assert row is not None
        return int(row[0])

    def _committed(self) -> tuple[list[int], dict[int, list[int]]]:
        """The rows committed since ``begin``: order ids, and notification ids by user index."""
        orders_from, notes_from = self.start_ids
        with psycopg.connect(self.pg.dsn, autocommit=True) as conn:
            orders = [row[0] for row in conn.execute(
                "SELECT id FROM public.orders WHERE id > %s ORDER BY id", (orders_from,))]
            notes: dict[int, list[int]] = defaultdict(list)
            for user, row_id in conn.execute(
                "SELECT user_id::text, id FROM public.notifications WHERE id > %s ORDER BY id",
                (notes_from,),
            ):
                notes[int(user[-12:], 16)].append(row_id)
        return orders, notes

    def quiesce(self, timeout_s: float = 120.0) -> int:
        """Stop writing and wait until every committed change was received (or nothing more
        arrives for 15 s); the deliveries expected."""
        self.set_rate(0)
        time.sleep(0.5)  # the writer's last INSERT
        orders, notes = self._committed()
        expected = len(orders) * self.load.clients + sum(len(ids) for ids in notes.values())
        deadline, last, still_since = time.monotonic() + timeout_s, -1, time.monotonic()
        while time.monotonic() < deadline:
            received = self.counts()["events"]
            if received >= expected:
                break
            if received != last:
                last, still_since = received, time.monotonic()
            elif time.monotonic() - still_since > 15:
                break
            time.sleep(0.5)
        return expected

    def verify(self) -> Verdict:
        """Compare every client's sequences with the rows committed (after ``quiesce``)."""
        orders, notes = self._committed()
        order_digest = sequence_hash(orders)
        verdict = Verdict(orders=len(orders), notifications=sum(map(len, notes.values())))
        closes: dict[str, int] = defaultdict(int)
        errors: dict[str, int] = defaultdict(int)
        for answer in ask_all(self.clients, "report"):
            for (index, o_count, o_digest, o_repeats, n_count, n_digest, n_repeats,
                 unrecovered, gaps, reconnects) in answer["clients"]:
                mine = notes.get(index, [])
                for count, digest, wanted, wanted_digest in (
                    (o_count, o_digest, len(orders), order_digest),
                    (n_count, n_digest, len(mine), sequence_hash(mine)),
                ):
                    verdict.expected += wanted
                    verdict.received += count
                    verdict.lost += max(0, wanted - count)
                    verdict.different += count >= wanted and digest != wanted_digest
                verdict.repeated += o_repeats + n_repeats
                verdict.unrecovered += unrecovered
                verdict.gaps += gaps
                verdict.reconnects += reconnects
            for channel, counts in answer["latency"].items():
                verdict.latency[channel].merge(counts)
            for code, count in answer["closes"].items():
                closes[code] += count
            for name, count in answer["errors"].items():
                errors[name] += count
        verdict.closes, verdict.errors = dict(closes), dict(errors)
        return verdict


@dataclass
class Sample:
    seconds: float  # since writing began
    rss_mb: float
    events: int


def slope_mb_per_h(samples: list[Sample]) -> float | None:
    """Least-squares slope of RSS over time."""
    if len(samples) < 2:
        return None
    xs, ys = [s.seconds / 3600 for s in samples], [s.rss_mb for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else None


def write_outputs(samples: list[Sample], out: Path, title: str, warmup_s: float) -> Path:
    csv = out / "soak-rss.csv"
    csv.write_text("seconds,rss_mb,events\n" + "".join(
        f"{s.seconds:.1f},{s.rss_mb:.2f},{s.events}\n" for s in samples))
    png = out / "soak-rss.png"
    line_chart(png, [(s.seconds / 60, s.rss_mb) for s in samples], title,
               "minutes since writing began", "RSS (MB)", warmup_s / 60, "end of warm-up")
    return png


def soak(load: Load, minutes: float, interval_s: float, warmup_s: float, out: Path,
         settings: dict[str, str]) -> bool:
    print(f"rtgw soak: {load.describe()}; {minutes:g} min; {environment_note()}", flush=True)
    duration = minutes * 60
    with embedded_postgres() as pg, Rig(pg, load, out, int(duration) + 3600, **settings) as rig:
        seconds = rig.connect()
        print(f"connected {load.clients:,} clients in {seconds:.1f} s "
              f"({load.clients / seconds:,.0f}/s)", flush=True)
        rss_idle = rss_kb(rig.gateway.pid) / 1024
        samples: list[Sample] = []
        rig.begin()
        cpu0 = cpu_seconds(rig.gateway.pid)
        began, progress_every = time.monotonic(), max(interval_s, min(60.0, duration / 6))
        next_progress = progress_every
        while (elapsed := time.monotonic() - began) < duration:
            sample = Sample(elapsed, rss_kb(rig.gateway.pid) / 1024, rig.counts()["events"])
            samples.append(sample)
            if elapsed >= next_progress:
                next_progress += progress_every
                print(f"  [{elapsed / 60:5.1f} min] RSS {sample.rss_mb:.1f} MB, "
                      f"{sample.events:,} events received", flush=True)
            time.sleep(max(0.0, interval_s - (time.monotonic() - began - elapsed)))
        cores = (cpu_seconds(rig.gateway.pid) - cpu0) / (time.monotonic() - began)
        rig.quiesce()
        samples.append(Sample(time.monotonic() - began, rss_kb(rig.gateway.pid) / 1024,
                              rig.counts()["events"]))
        verdict = rig.verify()
    print("result:")
    for line in verdict.lines():
        print(f"  {line}")
    after = [s for s in samples if s.seconds >= warmup_s]
    at_warmup = after[0].rss_mb if after else None
    slope = slope_mb_per_h(after)
    print(f"  server RSS: {rss_idle:.1f} MB connected and idle, "
          f"{'-' if at_warmup is None else f'{at_warmup:.1f}'} MB at the end of the warm-up "
          f"({warmup_s / 60:.1f} min), {samples[-1].rss_mb:.1f} MB at the end, "
          f"peak {max(s.rss_mb for s in samples):.1f} MB; slope after the warm-up "
          f"{'-' if slope is None else f'{slope:+.1f}'} MB/h over {len(after)} samples")
    print(f"  server CPU while writing: {cores:.2f} cores on average")
    title = f"rtgw serve RSS: {load.clients:,} clients, {load.rate:g} changes/s"
    png = write_outputs(samples, out, title, warmup_s)
    print(f"  samples: {out / 'soak-rss.csv'}, plot: {png}")
    print("PASS: nothing lost, nothing twice, in order" if verdict.clean else "FAIL")
    return verdict.clean


def add_setting_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", dest="settings",
        help="a gateway setting for rtgw serve, RTGW_ name in lower case without the prefix "
             "(repeatable), e.g. --set history_size=0",
    )


def parse_settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--set wants NAME=VALUE, not {pair!r}")
        settings[name.lower().removeprefix("rtgw_")] = value
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true",
                        help="300 clients, 45 s, history age 15 s (the suite's run)")
    parser.add_argument("--clients", type=int, default=None, help="default 5,000 (300 short)")
    parser.add_argument("--minutes", type=float, default=None, help="default 30 (0.75 short)")
    parser.add_argument("--rate", type=float, default=200.0, help="changes/s (default 200)")
    parser.add_argument("--topic-every", type=int, default=100,
                        help="every k-th change is an order that every client reads")
    parser.add_argument("--history-age", type=float, default=None,
                        help="RTGW_HISTORY_AGE_S (default the gateway's, 300; 15 short)")
    parser.add_argument("--out", type=Path, default=REPO / "artifacts",
                        help="folder for soak-rss.csv, soak-rss.png and gateway.log")
    add_setting_option(parser)
    args = parser.parse_args()
    clients = args.clients or (300 if args.short else 5000)
    minutes = args.minutes or (0.75 if args.short else 30.0)
    settings = parse_settings(args.settings)
    age = args.history_age if args.history_age is not None else (15.0 if args.short else None)
    if age is not None:
        settings["history_age_s"] = f"{age:g}"
    warmup_s = (age if age is not None else 300.0) + (10.0 if args.short else 60.0)
    if warmup_s >= minutes * 60:
        print(f"note: {minutes:g} min is within the warm-up ({warmup_s / 60:.1f} min): "
              "the RSS slope is not meaningful", flush=True)
    raise_fd_limit()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    ok = soak(Load(clients, args.rate, args.topic_every), minutes, 1.0 if args.short else 5.0,
              warmup_s, args.out, settings)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
