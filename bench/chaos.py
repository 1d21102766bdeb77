"""Chaos under load: faults injected while a steady stream reaches resuming clients, each client
checking afterwards that it lost nothing and got nothing twice.

    python -m bench.chaos              # 1,000 clients, 3 rounds of the three faults
    python -m bench.chaos --short      # 300 clients, 1 round (runs in the suite)

The same rig as ``bench.soak`` (``rtgw serve`` on an embedded Postgres 18, ``bench.soakclient``
processes, the mixed writer). The faults, in this order in every round:

* ``postgres-restart``: ``pg_ctl stop -m fast``, then start again. Clients stay connected; the
  gateway's source reconnects, the writer too (what it could not commit meanwhile is simply not
  in the database).
* ``gateway-sigkill``: ``rtgw serve`` SIGKILLed, then started again on the same port and slot.
* ``gateway-sigterm``: ``rtgw serve`` drained (clients get 1012), then started again.

Clients reconnect with backoff and resubscribe with ``since``. Per fault:

* how long the stop took, and the start: for a gateway until it opened subscriptions (its log
  says when), and until a ``/readyz`` probe (1 s timeout, as a load balancer's) first got 200,
  which under a reconnect storm can be much later;
* how long until each client receives again: from the start of the fault to the arrival of
  its first order written after the repair (Postgres back, or the gateway's subscriptions
  open). Orders written before it can still arrive on a connection being drained, or from a
  Postgres being stopped, and say nothing about recovery;
* at a checkpoint after it (writing paused until every committed change was received), what
  was lost, duplicated or not recovered since the previous checkpoint.

Between faults the stream runs until every partition has had a change: a crash is replayed from
the slot, which a Postgres fast restart confirms past the gateway's history, so a partition
quiet since that restart would (as documented) resume with ``recovered: false``.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.fanout import embedded_postgres
from bench.harness import ask_all, environment_note
from bench.latency import percentile
from bench.procs import raise_fd_limit
from bench.soak import REPO, Load, Rig, Verdict, add_setting_option, parse_settings

FAULTS = ("postgres-restart", "gateway-sigkill", "gateway-sigterm")
RECOVERY_TIMEOUT_S = 90.0
SUBSCRIPTIONS_OPEN = "history replayed from the source: subscriptions open"  # gateway.node


@dataclass
class Outcome:
    fault: str
    stop_s: float = 0.0  # the fault itself: Postgres stopping, the gateway dying or draining
    start_s: float = 0.0  # the repair: started again, until ready (Postgres; gateway /readyz)
    open_s: float | None = None  # a gateway's start until it opened subscriptions (its log)
    repaired: float = 0.0  # Unix time: Postgres accepting again, or subscriptions open
    back_p50_s: float | None = None
    back_max_s: float | None = None
    not_back: int = 0  # clients that received nothing new within RECOVERY_TIMEOUT_S
    reconnects: int = 0
    closes: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    repeated: int = 0
    different: int = 0
    unrecovered: int = 0
    gaps: int = 0

    @property
    def clean(self) -> bool:
        return not (self.not_back or self.lost or self.repeated or self.different
                    or self.unrecovered or self.gaps)


def inject(rig: Rig, fault: str, outcome: Outcome) -> None:
    """Cause ``fault``, then repair it; time the stop and the start (until Postgres accepts
    connections, or until a ``/readyz`` probe got 200 and, from the gateway's log, until it
    opened subscriptions)."""
    began = time.monotonic()
    match fault:
        case "postgres-restart":
            rig.pg.stop("fast", timeout_s=60)
            outcome.stop_s = time.monotonic() - began
            rig.pg.start()
        case "gateway-sigkill" | "gateway-sigterm":
            rig.gateway.stop(signal.SIGKILL if fault == "gateway-sigkill" else signal.SIGTERM)
            outcome.stop_s = time.monotonic() - began
            logged, started = rig.gateway.log_path.stat().st_size, time.time()
            rig.gateway.start()
            opened = rig.gateway.logged(SUBSCRIPTIONS_OPEN, logged)
            outcome.open_s = None if opened is None else opened - started
        case _:
            raise ValueError(f"unknown fault {fault!r}")
    outcome.start_s = time.monotonic() - began - outcome.stop_s
    outcome.repaired = time.time() if outcome.open_s is None else started + outcome.open_s


def wait_back(rig: Rig, outcome: Outcome) -> None:
    """Wait until every client received an order written after the repair."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while True:
        answers = ask_all(rig.clients, f"recovery {outcome.repaired!r}")
        delays = [d for answer in answers for d in answer["delays"]]
        if all(d is not None for d in delays) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    back = sorted(d for d in delays if d is not None)
    outcome.back_p50_s, outcome.back_max_s = percentile(back, 0.5), percentile(back, 1.0)
    outcome.not_back = len(delays) - len(back)
    outcome.reconnects = sum(answer["reconnects"] for answer in answers)
    for answer in answers:
        for code, count in answer["closes"].items():
            outcome.closes[code] = outcome.closes.get(code, 0) + count


def checkpoint(rig: Rig, previous: Verdict, outcome: Outcome | None) -> Verdict:
    """Pause writing until every change committed was received, compare, write again."""
    rig.quiesce()
    verdict = rig.verify()
    if outcome is not None:
        for name in ("lost", "repeated", "different", "unrecovered", "gaps"):
            setattr(outcome, name, getattr(verdict, name) - getattr(previous, name))
    rig.set_rate(rig.load.rate)
    return verdict


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(outcomes: list[Outcome]) -> str:
    lines = [
        "| fault | stop (s) | start: subscriptions open / ready (s) "
        "| clients receiving again: p50 / max (s) | not back | reconnects | closes | lost "
        "| duplicated | not recovered | gaps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        closes = ", ".join(f"{n} x {code}" for code, n in sorted(o.closes.items())) or "none"
        lines.append(
            f"| {o.fault} | {o.stop_s:.2f} | {_s(o.open_s)} / {o.start_s:.2f} "
            f"| {_s(o.back_p50_s)} / {_s(o.back_max_s)} | {o.not_back} | {o.reconnects:,} "
            f"| {closes} | {o.lost} | {o.repeated + o.different} | {o.unrecovered} | {o.gaps} |"
        )
    return "\n".join(lines)


def medians(outcomes: list[Outcome]) -> str:
    lines = []
    for fault in FAULTS:
        mine = [o for o in outcomes if o.fault == fault]
        if not mine:
            continue
        p50 = [o.back_p50_s for o in mine if o.back_p50_s is not None]
        opened = [o.open_s for o in mine if o.open_s is not None]
        worst = [o.back_max_s for o in mine if o.back_max_s is not None]
        lines.append(
            f"  {fault:17} stop {statistics.median(o.stop_s for o in mine):5.2f} s, "
            f"start {statistics.median(o.start_s for o in mine):5.2f} s"
            f"{f' (subscriptions open {statistics.median(opened):.2f} s)' if opened else ''}, "
            f"clients back p50 {_s(statistics.median(p50) if p50 else None)} s, "
            f"max {_s(statistics.median(worst) if worst else None)} s (median of {len(mine)}); "
            f"lost {sum(o.lost for o in mine)}, "
            f"duplicated {sum(o.repeated + o.different for o in mine)}, "
            f"not recovered {sum(o.unrecovered for o in mine)}"
        )
    return "\n".join(lines)


def chaos(
    load: Load, rounds: int, faults: list[str], settle_s: float, out: Path,
    settings: dict[str, str],
) -> bool:
    print(f"rtgw chaos: {load.describe()}; {rounds} round(s) of {', '.join(faults)}; "
          f"{environment_note()}", flush=True)
    outcomes: list[Outcome] = []
    settings = {"log_level": "info", **settings}  # the log says when subscriptions open
    with embedded_postgres() as pg, Rig(pg, load, out, 7200, **settings) as rig:
        seconds = rig.connect()
        print(f"connected {load.clients:,} clients in {seconds:.1f} s", flush=True)
        rig.begin()
        time.sleep(settle_s)
        verdict = checkpoint(rig, Verdict(), None)
        for round_ in range(rounds):
            for fault in faults:
                ask_all(rig.clients, f"mark {time.time()!r}")
                outcome = Outcome(fault)
                inject(rig, fault, outcome)
                wait_back(rig, outcome)
                time.sleep(settle_s)
                verdict = checkpoint(rig, verdict, outcome)
                outcomes.append(outcome)
                print(f"  [round {round_ + 1}] {fault}: stop {outcome.stop_s:.2f} s, start "
                      f"{outcome.start_s:.2f} s (open {_s(outcome.open_s)}), clients back "
                      f"p50 {_s(outcome.back_p50_s)} s, max {_s(outcome.back_max_s)} s, "
                      f"lost {outcome.lost}, "
                      f"duplicated {outcome.repeated}, not recovered {outcome.unrecovered}",
                      flush=True)
        rig.quiesce()
        final = rig.verify()
    print()
    print(table(outcomes))
    print()
    print("per fault:")
    print(medians(outcomes))
    print("whole run:")
    for line in final.lines()[:3]:
        print(f"  {line}")
    ok = final.clean and all(o.clean for o in outcomes)
    print("PASS: every fault, nothing lost, nothing twice" if ok else "FAIL")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="300 clients, 1 round")
    parser.add_argument("--clients", type=int, default=None, help="default 1,000 (300 short)")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (1 short)")
    parser.add_argument("--rate", type=float, default=200.0, help="changes/s (default 200)")
    parser.add_argument("--topic-every", type=int, default=20,
                        help="every k-th change is an order that every client reads")
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "chaos",
                        help="folder for gateway.log")
    add_setting_option(parser)
    args = parser.parse_args()
    clients = args.clients or (300 if args.short else 1000)
    rounds = args.rounds or (1 if args.short else 3)
    faults = [f for f in args.faults.split(",") if f]
    for fault in faults:
        if fault not in FAULTS:
            raise SystemExit(f"unknown fault {fault!r} (one of {', '.join(FAULTS)})")
    load = Load(clients, args.rate, args.topic_every)
    # Long enough for the round-robin writer to reach every partition, with room to spare.
    partitioned = args.rate - args.rate / args.topic_every
    settle_s = max(3.0, 1.5 * clients / partitioned)
    raise_fd_limit()
    ok = chaos(load, rounds, faults, settle_s, args.out, parse_settings(args.settings))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
