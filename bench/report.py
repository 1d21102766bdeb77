"""The table and the ratios against the baselines measured in the same invocation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import median

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


def summarize(runs: Sequence[Run]) -> dict[str, dict[str, float | None]]:
    """Medians per server over the repeats."""
    by_server: dict[str, list[Run]] = {}
    for run in runs:
        by_server.setdefault(run.server, []).append(run)
    summary: dict[str, dict[str, float | None]] = {}
    for server, group in by_server.items():
        summary[server] = {
            "cpu_us": _med(group, lambda r: r.cpu_us or None),
            "saturation": _med(group, lambda r: r.saturation),
            "client_bound": float(sum(r.client_bound for r in group) > len(group) / 2),
            "per_core": _med(group, lambda r: r.per_core or None),
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
            "failed": float(max(r.failed for r in group)),
            "closed": float(max(r.closed for r in group)),
        }
    return summary


def table(title: str, summary: dict[str, dict[str, float | None]]) -> str:
    lines = [
        f"### {title}",
        "",
        "| server | CPU/delivery (µs) | saturation (msgs/s) | per server core (msgs/s) "
        "| cores at saturation (server / client [/ Postgres+writer]) | fixed rate (msgs/s) "
        "| p50 (ms) | p99 (ms) | setup (conn/s) | KB/idle conn |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for server, row in summary.items():
        sat = _fmt(row["saturation"], ",.0f")
        if row["client_bound"]:
            sat += " (client-bound)"
        cores = f"{_fmt(row['sat_server_cpu'], '.2f')} / {_fmt(row['sat_client_cpu'], '.2f')}"
        if row["sat_source_cpu"] is not None:
            cores += f" / {_fmt(row['sat_source_cpu'], '.2f')}"
        lines.append(
            f"| {server} | {_fmt(row['cpu_us'], '.1f')} | {sat} | {_fmt(row['per_core'], ',.0f')} "
            f"| {cores} "
            f"| {_fmt(row['fixed_delivered'], ',.0f')} | {_fmt(row['p50_ms'], '.1f')} "
            f"| {_fmt(row['p99_ms'], '.1f')} | {_fmt(row['setup_per_s'], ',.0f')} "
            f"| {_fmt(row['kb_per_conn'], '.1f')} |"
        )
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


PARTITIONED_TARGET = "target: >= 5,000 changes/s from Postgres with p99 < 50 ms"


def ratios(summary: dict[str, dict[str, float | None]], workload: str = "topic") -> str:
    ours = summary.get("rtgw")
    if ours is None:
        return ""
    if workload == "partitioned":
        rate, p99 = ours["fixed_delivered"], ours["p99_ms"]
        ok = rate is not None and p99 is not None and rate >= 0.95 * 5_000 and p99 < 50
        verdict = "PASS" if ok else "MISS"
        return (
            f"{PARTITIONED_TARGET}\n- rtgw: {_fmt(rate, ',.0f')} changes/s delivered, "
            f"p99 {_fmt(p99, '.1f')} ms [{verdict}]"
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
    return "\n".join(lines)
