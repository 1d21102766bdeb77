"""The benchmarks run end to end in their short modes (fan-out: all three servers; restart;
the in-process hot path; the keepalive; the replication socket's wait; one topic's fan-out in
process; an idle gateway; publishing over HTTP).

No timing assertions: performance lives in ``bench/``, not in tests. This only proves that the
benchmark still runs against the current gateway and prints its table.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def run_bench(module: str, *args: str, **env: str) -> str:
    """Run ``python -m bench.<module> args`` (``env``: more environment); its stdout, once it
    exited cleanly."""
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


@pytest.mark.timeout(240)
def test_bench_fanout_short_runs_all_servers() -> None:
    out = run_bench("fanout", "--short")
    assert "| server | CPU/delivery (µs) |" in out
    for server in ("tutorial", "broadcast", "rtgw"):
        assert f"| {server} |" in out, out
    assert "rtgw CPU/delivery vs broadcast" in out


@pytest.mark.timeout(240)
def test_bench_restart_short_replays_a_history() -> None:
    out = run_bench("restart", "--short")
    assert "10,000 changes of history" in out and "ratio" in out, out


@pytest.mark.timeout(240)
def test_bench_cdc_short_streams_and_polls() -> None:
    out = run_bench("cdc", "--short", "--rows", "20000", "--clients", "300", "--rate", "300")
    streamed = [line for line in out.splitlines() if line.strip().startswith("streaming  p50")]
    # 300 clients share one address (more than the default per-address limit lets in), and
    # each of the 900 commits reached its client.
    assert len(streamed) == 1 and streamed[0].endswith("received 900"), out


@pytest.mark.timeout(240)
def test_bench_enrich_short_compares_with_and_without_the_lookup(redis_url: str) -> None:
    out = run_bench("enrich", "--short", "--rows", "5000", "--customers", "100",
                    RTGW_REDIS_URL=redis_url)
    assert "without lookups" in out, out
    # The transaction is looked up whole: one query for its 100 customers; a second node
    # finds them all in the shared cache.
    lines = {line.split("  ")[1].strip(): line for line in out.splitlines()[1:]}
    assert "queries/transaction 1 " in lines["in-process, cold"], out
    assert "queries/transaction 0 " in lines["in-process, warm"], out
    assert "queries/transaction 0 " in lines["Redis, second node"], out
    assert "hit ratio 1.000" in lines["Redis, second node"], out


@pytest.mark.timeout(240)
def test_bench_roles_short_measures_revocations_against_events() -> None:
    out = run_bench("roles", "--short")
    assert "| revocation |" in out and "revocation vs order event (median)" in out, out


@pytest.mark.timeout(240)
def test_bench_scaleout_short_compares_the_buses_and_times_a_takeover() -> None:
    out = run_bench("scaleout", "--short")
    for name in ("1 process, memory bus", "1 process, redis bus", "2 processes, redis bus"):
        assert f"| {name} |" in out, out
    assert "every committed row received once, in order: yes" in out, out


@pytest.mark.timeout(240)
@pytest.mark.parametrize("per_transaction", ["1", "10"])
def test_bench_hotpath_delivers_every_change_in_process(per_transaction: str) -> None:
    common = ("--users", "50", "--changes", "200", "--warmup", "300", "--history-total", "100",
              "--per-transaction", per_transaction)
    assert "µs of CPU per change" in run_bench("hotpath", *common)  # asserts every delivery
    stages = run_bench("hotpath", "--stages", *common)
    assert "parse and decode (pgoutput bytes to changes)" in stages and "in all" in stages, stages
    pauses = run_bench("hotpath", "--gc-pauses", "--gc-thresholds", "700,1,1000", *common)
    assert "generation 0: " in pauses and "(thresholds (700, 1, 1000))" in pauses, pauses


@pytest.mark.timeout(240)
def test_bench_streamwait_times_the_replication_sockets_wait() -> None:
    assert "µs of CPU per wait" in run_bench("streamwait", "--waits", "100")


@pytest.mark.timeout(240)
def test_bench_keepalive_turns_every_connections_keepalive_chain() -> None:
    out = run_bench("keepalive", "--clients", "20", "--rounds", "5")
    assert "µs of server CPU per ping and pong" in out, out


@pytest.mark.timeout(240)
def test_bench_idle_measures_a_ready_gateway_without_redis() -> None:
    out = run_bench("idle", "--rounds", "1")
    assert "rtgw serve, ready, no client:" in out
    for optional in ("redis", "rq", "jwt", "cryptography"):  # HS256 only, no Redis: none
        assert f"not loaded: {optional}\n" in out, out


@pytest.mark.timeout(240)
def test_bench_perdelivery_fans_every_event_out_in_order(redis_url: str) -> None:
    # each event on its own; batches whose writes the hub holds; a backlog before live events;
    # batches through the Redis bus
    for more in (["--batch", "1"], ["--batch", "8"], ["--backlog", "30"],
                 ["--batch", "8", "--redis", redis_url]):
        out = run_bench("perdelivery", "--n", "50", "--events", "20", "--warmup", "5", *more)
        assert "20 events to 50 subscribers:" in out and "µs of CPU per delivery" in out, out


@pytest.mark.timeout(240)
def test_bench_publish_short_publishes_single_and_batched() -> None:
    out = run_bench("publish", "--short", "--seconds", "1")
    for form in ("single", "batch:1", "batch:10", "batch:100"):
        assert f"| {form} |" in out, out
    assert "every one arrived once" in out, out
