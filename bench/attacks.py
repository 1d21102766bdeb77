"""Attacks and faults against a real ``rtgw serve``, each while a control client checks that it
loses nothing and a prober times ``/healthz``.

    python -m bench.attacks                  # every attack, full size (a few minutes)
    python -m bench.attacks --short          # fewer connections and repetitions (CI)
    python -m bench.attacks --only slowloris # one of them (names: --list)

One embedded Postgres (as the other benchmarks) and one ``rtgw serve`` process with the default
settings, an HS256 secret and a JWKS URL (an RSA key served from 127.0.0.1); an attack that
needs a setting changed says so, and the gateway is restarted with it for that row only. For
each attack, in turn:

* the control process (``bench.control``) commits ``orders`` rows at a fixed rate for a
  customer of the row's own, follows them as a subscriber (``customer_id=eq.<id>``), resuming
  with ``since`` after any close, and probes ``/healthz`` every 50 ms;
* the attacker (``bench.attackers``) connects from 127.0.0.2 (another client address to the
  gateway) and does its worst, bounded in count and time;
* measured: the gateway's RSS before, at its peak (the kernel's high-water mark, reset before
  the attack), at the attack's end and after the attacker left; ``/healthz`` latency during the
  row; committed rows against rows received (lost, duplicated); what the gateway answered;
  and the lines it logged at error level.

All traffic goes to 127.0.0.1. The table is printed as markdown; ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

import psycopg
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from bench import attackers
from bench.attackers import FULL, SHORT, Attack, Outcome, Scale, Target
from bench.cdc import REPO, SECRET, drop_slot
from bench.fanout import embedded_postgres
from bench.harness import Child, environment_note, free_port, wait_listening
from bench.procs import raise_fd_limit, rss_kb
from gateway.sources.embedded import EmbeddedPostgres

CONTROL_RATE = 50.0  # committed rows per second, for every row
BASELINE_S = 0.5  # the control stream runs this long before the attack
SLOW_P99_MS = 200.0  # /healthz slower than this at p99 (or failing) counts as slowing others
SETTLE_S = 1.0  # after the attack (and again after the attacker left), before RSS is read


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    title: str
    attack: Attack
    require: frozenset[str]  # answers that must come
    allow: frozenset[str]  # answers that may come too
    settings: Mapping[str, str] = field(default_factory=dict)  # RTGW_* changed for this row
    # What the row stops on purpose: "source" (Postgres: the stream pauses) or "gateway" (and
    # /healthz fails meanwhile). Those delays are not counted as slowing others.
    outage: str = ""


def _spec(
    name: str, title: str, attack: Attack, *require: str, allow: tuple[str, ...] = (),
    outage: str = "", **settings: str,
) -> Spec:
    return Spec(name, title, attack, frozenset(require), frozenset(allow), settings, outage)


SPECS = (
    _spec("head-1mb", "a 1 MB Authorization header", attackers.oversized_head(attackers.HEAD_1MB),
          "431 request_head_too_large"),
    _spec("head-9kb-line", "a 9 KB header line",
          attackers.oversized_head(attackers.HEAD_9KB_LINE), "431 request_head_too_large"),
    _spec("head-200-lines", "200 header lines",
          attackers.oversized_head(attackers.HEAD_200_LINES), "431 request_head_too_large"),
    _spec("header-stream", "64 MB of header lines, streamed", attackers.header_stream,
          "431 request_head_too_large"),
    _spec("slowloris", "half-open requests, a header line a second", attackers.slowloris,
          "408 request_head_timeout", "429 too_many_connections"),
    _spec("ping-flood", "a ping flood, pongs never read", attackers.ping_flood,
          "pong", "no answer (over the ping rate)"),
    _spec("ping-flood-unanswered", "the same with the ping rate out of the way",
          attackers.ping_flood_unanswered, "dropped (connection reset)",
          RTGW_MAX_MESSAGES_PER_S="1000000"),
    _spec("text-flood", "a flood of ping frames past the rate", attackers.text_flood,
          "pong", "rate_limited", allow=("slow_consumer", "close 4008")),
    _spec("frame-not-json", "frames that are not JSON", attackers.not_json,
          f"bad_frame x{attackers.NOT_JSON_FRAMES}, then pong"),
    _spec("frame-not-utf8", "a text frame that is not UTF-8", attackers.not_utf8, "close 1007"),
    _spec("frame-oversized", "a 70 KB frame", attackers.oversized_frame, "close 1009"),
    _spec("forged-tokens", "forged and confused tokens, in a loop", attackers.forged,
          "wrong signature: token_signature, close 4001",
          "alg none: token_algorithm, close 4001",
          "HS256 signed with the RSA public key: token_signature, close 4001",
          "RS256 by another key under the JWKS kid: token_signature, close 4001",
          "expired: token_expired, close 4003",
          "no exp: token_claims, close 4001",
          "wrong aud: token_audience, close 4001"),
    _spec("idle-sockets", "idle authenticated sockets", attackers.idle_sockets, "ready"),
    _spec("postgres-restart", "Postgres fast restart under the stream",
          attackers.postgres_restart, "fast stop done", outage="source"),
    _spec("gateway-sigkill", "gateway SIGKILL, then started again",
          attackers.gateway_restart(signal.SIGKILL, -signal.SIGKILL, "killed"), "killed",
          "control client closed 1006", outage="gateway"),
    _spec("gateway-sigterm", "gateway SIGTERM (drain), then started again",
          attackers.gateway_restart(signal.SIGTERM, -signal.SIGTERM, "exited on the signal"),
          "exited on the signal", "control client got shutting_down",
          "control client closed 1012", outage="gateway"),
)


@dataclass
class Row:
    name: str
    title: str
    settings: dict[str, str]
    answers: dict[str, int]
    note: str
    problems: list[str]
    rss_mb: dict[str, float]  # before, peak, end, after
    control: dict[str, Any]  # bench.control's report
    errors_logged: list[str]
    seconds: float
    ok: bool = False  # the answers expected, nothing lost
    slowed: str = ""  # how the others were slowed down, if they were


# -- the gateway's process -------------------------------------------------------------------


class GatewayProcess:
    """``rtgw serve`` in a process of its own, its log in a file, its RSS read from /proc."""

    def __init__(self, pg: EmbeddedPostgres, port: int, jwks_url: str, log: TextIO) -> None:
        self.port, self.log = port, log
        self.slot = f"attacks_{secrets.token_hex(3)}"
        self.base_env = {
            **os.environ, "RTGW_DATABASE_URL": pg.dsn, "RTGW_JWT_SECRET": SECRET,
            "RTGW_JWKS_URL": jwks_url, "RTGW_PORT": str(self.port),
            "RTGW_CHANNELS": str(REPO / "channels"), "RTGW_SLOT": self.slot,
            "RTGW_LOG_FORMAT": "json",
        }
        self.settings: Mapping[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._peak_kb = 0  # of processes this row already stopped

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, settings: Mapping[str, str]) -> None:
        self.settings = dict(settings)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve"], env={**self.base_env, **settings},
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.log,
        )
        wait_listening(self.port, "/readyz", 60)

    def stop(self, how: int = signal.SIGTERM) -> int | None:
        """Signal the process and wait for it: its exit code."""
        if self.process is None:
            return None
        self._peak_kb = max(self._peak_kb, self._hwm_kb())
        self.process.send_signal(how)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def restart(self, how: int) -> tuple[int | None, float]:
        """Stop with ``how``, start again with the same settings: (exit code, seconds from the
        signal to /readyz 200)."""
        started = time.monotonic()
        code = self.stop(how)
        self.start(self.settings)
        return code, time.monotonic() - started

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def log_size(self) -> int:
        return os.fstat(self.log.fileno()).st_size

    def reset_peak(self) -> None:
        """Reset the kernel's RSS high-water mark (VmHWM) of the process."""
        self._peak_kb = 0
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def peak_kb(self) -> int:
        """The highest RSS since ``reset_peak``, of every process this row ran."""
        return max(self._peak_kb, self._hwm_kb())

    def _hwm_kb(self) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0


@contextlib.contextmanager
def jwks_server(key: rsa.RSAPrivateKey, kid: str) -> Iterator[str]:
    """Serve the public half of ``key`` as a JWKS on 127.0.0.1; its URL."""
    jwk = {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": kid, "alg": "RS256"}

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "jwks.json").write_text(json.dumps({"keys": [jwk]}))
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=folder))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        finally:
            server.shutdown()
            server.server_close()


# -- one row -----------------------------------------------------------------------------------


def new_customer(pg: EmbeddedPostgres, name: str) -> int:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO customers (name) VALUES (%s) RETURNING id", (name,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def errors_since(log_path: Path, offset: int) -> list[str]:
    """Messages the gateway logged at error level (or with a traceback) after ``offset``."""
    found = []
    with log_path.open("rb") as log:
        log.seek(offset)
        for line in log:
            try:
                entry = json.loads(line)
            except ValueError:
                found.append(line.decode(errors="replace").strip())
                continue
            if entry.get("level") in ("error", "critical") or "exc" in entry:
                found.append(f"{entry.get('logger')}: {entry.get('message')}")
    return found


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


async def run_row(
    spec: Spec, target: Target, gateway: GatewayProcess, control: Child, log_path: Path
) -> Row:
    if dict(spec.settings) != dict(gateway.settings):
        await asyncio.to_thread(gateway.stop)
        await asyncio.to_thread(gateway.start, spec.settings)
    customer = new_customer(target.pg, spec.name)
    await asyncio.to_thread(control.ask, f"begin {customer}")
    await asyncio.sleep(BASELINE_S)
    began = time.monotonic()
    log_offset = gateway.log_size()
    before = gateway.rss_kb()
    gateway.reset_peak()
    try:
        outcome = await spec.attack(target)
    except Exception as exc:  # reported in the row, not raised: the other rows still run
        outcome = Outcome(Counter({f"attack failed: {exc!r}": 1}))
        outcome.problems.append(f"the attack itself failed: {exc!r}")
    await asyncio.sleep(SETTLE_S)
    end, peak = gateway.rss_kb(), gateway.peak_kb()
    if outcome.release is not None:
        await outcome.release()
        await asyncio.sleep(SETTLE_S)
    after = gateway.rss_kb()
    seconds = time.monotonic() - began
    report = await asyncio.to_thread(control.ask, "end")
    answers = Counter(outcome.answers)
    for code, count in report["closes"].items():
        answers[f"control client closed {code}"] += count
    for code, count in report["errors"].items():
        answers[f"control client got {code}"] += count
    row = Row(
        name=spec.name, title=spec.title, settings=dict(spec.settings), answers=dict(answers),
        note=outcome.note, problems=list(outcome.problems),
        rss_mb={"before": _mb(before), "peak": _mb(max(peak, end, before)), "end": _mb(end),
                "after": _mb(after)},
        control=report, errors_logged=errors_since(log_path, log_offset), seconds=seconds,
    )
    row.problems.extend(judge(spec, row))
    row.ok = not row.problems
    row.slowed = slowed(spec, report)
    return row


def slowed(spec: Spec, report: dict[str, Any]) -> str:
    """How the others (``/healthz``, the control stream) suffered beyond what the machine's
    noise explains, and beyond what the row stops on purpose ("" when they did not)."""
    found = []
    p99 = report["healthz_p99_ms"]
    if p99 is not None and p99 > SLOW_P99_MS:
        found.append(f"/healthz p99 {p99:.0f} ms")
    if report["probe_failures"] and spec.outage != "gateway":
        found.append(f"{report['probe_failures']} probes failed")
    p99 = report["stream_p99_ms"]
    if p99 is not None and p99 > SLOW_P99_MS and not spec.outage:
        found.append(f"stream p99 {p99:.0f} ms")
    return ", ".join(found)


def judge(spec: Spec, row: Row) -> list[str]:
    """What in ``row`` goes against the expectation: answers, losses, the control client."""
    problems = []
    unexpected = set(row.answers) - spec.require - spec.allow
    if unexpected:
        problems.append(f"unexpected answers: {sorted(unexpected)}")
    missing = spec.require - set(row.answers)
    if missing:
        problems.append(f"missing answers: {sorted(missing)}")
    control = row.control
    for figure in ("lost", "duplicates", "unexpected", "unrecovered", "gaps"):
        if control[figure]:
            problems.append(f"control client: {figure} = {control[figure]}")
    if control["committed"] == 0:
        problems.append("control client: nothing was committed")
    if row.errors_logged:
        problems.append(f"{len(row.errors_logged)} lines logged at error level")
    return problems


# -- the run -----------------------------------------------------------------------------------


async def run_all(specs: list[Spec], scale: Scale, log_path: Path) -> list[Row]:
    rows: list[Row] = []
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = "attacks-1"
    with embedded_postgres() as pg, jwks_server(key, kid) as jwks_url, log_path.open("w") as log:
        port = free_port()
        gateway = GatewayProcess(pg, port, jwks_url, log)
        control: Child | None = None
        try:
            await asyncio.to_thread(gateway.start, {})
            control = Child("bench.control", "--port", str(port), "--dsn", pg.dsn,
                            "--rate", str(CONTROL_RATE))
            control.read()
            target = Target(port, gateway, pg, SECRET, key, kid, scale)
            for spec in specs:
                row = await run_row(spec, target, gateway, control, log_path)
                rows.append(row)
                verdict = "as expected" if row.ok else "MISS: " + "; ".join(row.problems)
                if row.slowed:
                    verdict += f"; others slowed: {row.slowed}"
                print(f"  {row.name}: {answers_text(row)} [{verdict}] ({row.seconds:.0f} s)",
                      flush=True)
        finally:
            if control is not None:
                control.stop()
            gateway.stop()
            drop_slot(pg, gateway.slot)
    return rows


def answers_text(row: Row) -> str:
    return ", ".join(f"{answer} ×{count:,}" for answer, count in row.answers.items())


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| attack | the gateway's answer | RSS MB: before / peak / end / after it left "
        "| /healthz ms: p50 / p99 / max (failed) | control rows: committed / lost / dup "
        "| control stream ms: p50 / p99 / max | figures | as expected | others slowed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rss, control = row.rss_mb, row.control
        settings = "".join(f" ({name}={value})" for name, value in row.settings.items())
        healthz = (f"{_ms(control['healthz_p50_ms'])} / {_ms(control['healthz_p99_ms'])} / "
                   f"{_ms(control['healthz_max_ms'])} ({control['probe_failures']})")
        stream = (f"{_ms(control['stream_p50_ms'])} / {_ms(control['stream_p99_ms'])} / "
                  f"{_ms(control['stream_max_ms'])}")
        lines.append(
            f"| `{row.name}`: {row.title}{settings} | {answers_text(row)} "
            f"| {rss['before']} / {rss['peak']} / {rss['end']} / {rss['after']} | {healthz} "
            f"| {control['committed']:,} / {control['lost']} / {control['duplicates']} "
            f"| {stream} | {row.note} | {'yes' if row.ok else 'NO: ' + '; '.join(row.problems)} "
            f"| {row.slowed or 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.attacks", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--short", action="store_true", help="fewer connections and repetitions")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run this attack only (repeatable)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the chosen attacks this many times over (memory growth)")
    parser.add_argument("--list", action="store_true", help="list the attacks and exit")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument("--log", type=Path, default=None,
                        help="the gateway's log (default: a temporary file)")
    args = parser.parse_args()
    if args.list:
        for spec in SPECS:
            print(f"{spec.name:24} {spec.title}")
        return
    unknown = set(args.only) - {spec.name for spec in SPECS}
    if unknown:
        parser.error(f"unknown attack(s) {sorted(unknown)}; see --list")
    specs = [spec for spec in SPECS if not args.only or spec.name in args.only] * args.repeat
    scale = SHORT if args.short else FULL
    raise_fd_limit()  # the idle sockets: the gateway inherits the limit
    began = time.monotonic()
    print(f"rtgw attacks ({'short' if args.short else 'full'}): {environment_note()}; "
          f"control stream {CONTROL_RATE:.0f} rows/s", flush=True)
    with contextlib.ExitStack() as stack:
        log_path = args.log or Path(stack.enter_context(tempfile.TemporaryDirectory()), "log")
        rows = asyncio.run(run_all(specs, scale, log_path))
    print()
    print(table(rows))
    print()
    missed = [row.name for row in rows if not row.ok]
    slow = [row.name for row in rows if row.slowed]
    print(f"{len(rows) - len(missed)} of {len(rows)} as expected"
          + (f"; missed: {', '.join(missed)}" if missed else "")
          + (f"; others slowed (p99 > {SLOW_P99_MS:.0f} ms or failing) by: {', '.join(slow)}"
             if slow else "")
          + f"; done in {time.monotonic() - began:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2))


if __name__ == "__main__":
    main()
