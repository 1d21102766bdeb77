"""The table and the ratios against the baselines measured in the same invocation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from statistics import median
from typing import Any

from bench.harness import Run

TARGETS = (
    "targets: CPU/delivery <= 1.2x broadcast, <= 0.5x tutorial and <= 1.0x node; saturation"
    " >= 0.9x broadcast;"
    " p99 < 50 ms at <= half saturation; < 20 KB per idle connection"
)


def _med(runs: Sequence[Run], value: Callable[[Run], float | None]) -> float | None:
    values = [v for v in (value(run) for run in runs) if v is not None]
    return median(values) if values else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summarize(runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """Medians per server over the repeats."""
    by_server: dict[str, list[Run]] = {}
    for run in runs:
        by_server.setdefault(run.server, []).append(run)
    summary: dict[str, dict[str, Any]] = {}
    for server, group in by_server.items():
        summary[server] = {
            "cpu_us": _med(group, lambda r: r.cpu_us or None),
            "saturation": _med(group, lambda r: r.saturation),
            "limited_by": Counter(r.limited_by for r in group).most_common(1)[0][0],
            "per_core": _med(group, lambda r: r.per_core or None),
            "clean_rate": _med(group, clean_rate),
            "feed_per_core": _med(group, lambda r: r.feed_per_core or None),
            "sat_server_cpu": _med(group, lambda r: r.sat_server_cpu),
            "sat_client_cpu": _med(group, lambda r: r.sat_client_cpu),
            "sat_source_cpu": _med(group, lambda r: r.sat_source_cpu or None),
            "p50_ms": _med(group, lambda r: r.p50_ms),
            "p99_ms": _med(group, lambda r: r.p99_ms),
            "setup_per_s": _med(group, lambda r: r.setup_per_s),
            "kb_per_conn": _med(group, lambda r: r.kb_per_conn),
            "fixed_delivered": _med(group, lambda r: r.fixed_delivered),
            "fixed_rate": _med(group, lambda r: r.fixed_rate),
            "repeats": float(len(group)),
            "n": float(group[0].n),
            "failed": float(max(r.failed for r in group)),
            "closed": float(max(r.closed for r in group)),
        }
    return summary


def table(title: str, summary: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"### {title}",
        "",
        "| server | CPU/delivery (µs) | saturation (msgs/s; limited by) "
        "| per core: server / CPU 1's side (msgs/s) "
        "| cores at saturation (server / clients [/ Postgres+writer]) | fixed rate (msgs/s) "
        "| p50 (ms) | p99 (ms) | setup (conn/s) | KB/idle conn |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for server, row in summary.items():
        sat = _fmt(row["saturation"], ",.0f")
        sat += f" ({row['limited_by']})"
        cores = f"{_fmt(row['sat_server_cpu'], '.2f')} / {_fmt(row['sat_client_cpu'], '.2f')}"
        if row["sat_source_cpu"] is not None:
            cores += f" / {_fmt(row['sat_source_cpu'], '.2f')}"
        lines.append(
            f"| {server} | {_fmt(row['cpu_us'], '.1f')} | {sat} | {_fmt(row['per_core'], ',.0f')}"
            f" / {_fmt(row['feed_per_core'], ',.0f')} "
            f"| {cores} "
            f"| {_fmt(row['fixed_delivered'], ',.0f')} | {_fmt(row['p50_ms'], '.1f')} "
            f"| {_fmt(row['p99_ms'], '.1f')} | {_fmt(row['setup_per_s'], ',.0f')} "
            f"| {_fmt(row['kb_per_conn'], '.1f')} |"
        )
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


PARTITIONED_TARGET = (
    "target: >= 20,000 changes/s from Postgres with p99 < 50 ms (the fixed rate: --rate 20000)"
)
P99_BOUND_MS = 50.0


def clean_rate(run: Run) -> float | None:
    """The most a ramp step delivered in full (90 % of its offer) with p99 under the bound."""
    rates = [step.delivered for step in run.steps if step.delivered >= 0.9 * step.offered
             and step.p99_ms is not None and step.p99_ms < P99_BOUND_MS]
    return max(rates) if rates else None


def capacity(row: dict[str, Any], name: str = "rtgw") -> str:
    """Each side's deliveries per core of CPU it used at its best ramp step (server on CPU 0;
    load clients, Postgres and writer on CPU 1): less dependent on the neighbours than
    saturation, but fixed costs (pings, writer ticks) weigh more at a low rate."""
    server, feed = row["per_core"], row["feed_per_core"]
    return (
        f"- {name}, deliveries per core of CPU used at the best step: server "
        f"{_fmt(server, ',.0f')}/s, CPU 1's side (load clients, Postgres, writer) "
        f"{_fmt(feed, ',.0f')}/s"
    )


def ratios(summary: dict[str, dict[str, Any]], workload: str = "topic") -> str:
    ours = summary.get("rtgw")
    if ours is None:
        return ""
    if workload == "partitioned":
        rate, p99 = ours["fixed_delivered"], ours["p99_ms"]
        ok = rate is not None and p99 is not None and rate >= 0.95 * 20_000 and p99 < 50
        verdict = "PASS" if ok else "MISS"
        return (
            f"{PARTITIONED_TARGET}\n- rtgw: {_fmt(rate, ',.0f')} changes/s delivered, "
            f"p99 {_fmt(p99, '.1f')} ms [{verdict}]\n- the ramp's best step delivered in full "
            f"with p99 < 50 ms: {_fmt(ours['clean_rate'], ',.0f')} changes/s; at saturation "
            f"limited by: {ours['limited_by']}\n{capacity(ours)}"
        )
    lines = [TARGETS]
    broadcast, tutorial = summary.get("broadcast"), summary.get("tutorial")

    def check(label: str, value: float | None, ok: bool | None) -> None:
        verdict = "n/a" if ok is None else ("PASS" if ok else "MISS")
        lines.append(f"- {label}: {_fmt(value, '.2f')} [{verdict}]")

    if broadcast is not None:
        r = _ratio(ours["cpu_us"], broadcast["cpu_us"])
        check("rtgw CPU/delivery vs broadcast (<= 1.2x)", r, None if r is None else r <= 1.2)
        r = _ratio(ours["saturation"], broadcast["saturation"])
        check("rtgw saturation vs broadcast (>= 0.9x)", r, None if r is None else r >= 0.9)
    if tutorial is not None:
        r = _ratio(ours["cpu_us"], tutorial["cpu_us"])
        check("rtgw CPU/delivery vs tutorial (<= 0.5x)", r, None if r is None else r <= 0.5)
        r = _ratio(ours["saturation"], tutorial["saturation"])
        check("rtgw saturation vs tutorial", r, None)
    node = summary.get("node")
    if node is not None:
        r = _ratio(ours["cpu_us"], node["cpu_us"])
        check("rtgw CPU/delivery vs node (<= 1.0x)", r, None if r is None else r <= 1.0)
    if broadcast is not None:
        r = _ratio(ours["per_core"], broadcast["per_core"])
        check("rtgw msgs/s per server core at saturation vs broadcast", r, None)
    p99 = ours["p99_ms"]
    share = _ratio(ours["fixed_delivered"], ours["saturation"])
    check(
        f"rtgw p99 ms at the fixed rate ({_fmt(share, '.2f')} of its saturation; < 50)",
        p99,
        None if p99 is None else p99 < 50,
    )
    kb = ours["kb_per_conn"]
    check("rtgw KB per idle connection (< 20)", kb, None if kb is None else kb < 20)
    for server, row in summary.items():
        burst = None if row["cpu_us"] is None else row["cpu_us"] * row["n"] / 1000
        lines.append(
            f"- {server}: one event's N frames take {_fmt(burst, '.1f')} ms of server CPU "
            f"(N x CPU/delivery: its own floor under the last client's latency); "
            f"p99 {_fmt(row['p99_ms'], '.1f')} ms"
        )
        lines.append(capacity(row, server))
    return "\n".join(lines)
