"""The soak and chaos benchmarks end to end in their short modes (300 clients each): ``rtgw
serve`` under a steady stream, every client checking its sequences against the rows committed.

Unlike the other benchmarks' short runs these do assert, because what they measure first is not
speed: nothing lost, nothing delivered twice, across a Postgres restart, a gateway crash and a
drain too. No timing is asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import FAULTS
from bench.soakclient import Track, sequence_hash
from tests.integration.test_bench_short import run_bench


def test_a_soak_client_counts_what_arrives_twice_or_out_of_order() -> None:
    track = Track()
    assert track.take(10, "e", 10, 1) and track.take(12, "e", 12, 2)
    assert not track.take(12, "e", 12, 2)  # the same event again
    assert not track.take(11, "e", 11, 3)  # an event from before the last one
    assert (track.count, track.repeats) == (2, 2)
    assert track.digest == sequence_hash([1, 2]) != sequence_hash([2, 1])
    assert track.since() == {"offset": 12, "epoch": "e"}


@pytest.mark.timeout(240)
def test_bench_soak_short_loses_nothing_and_plots_rss(tmp_path: Path) -> None:
    out = run_bench("soak", "--short", "--out", str(tmp_path))
    assert "lost 0, duplicated 0, different 0" in out, out
    assert "resumes not recovered 0, gaps 0" in out, out
    assert "PASS" in out, out
    assert (tmp_path / "soak-rss.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    samples = (tmp_path / "soak-rss.csv").read_text().splitlines()
    assert samples[0] == "seconds,rss_mb,events" and len(samples) > 30, samples


@pytest.mark.timeout(240)
def test_bench_chaos_short_loses_nothing_across_every_fault(tmp_path: Path) -> None:
    out = run_bench("chaos", "--short", "--out", str(tmp_path))
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| fault")}
    assert set(rows) == set(FAULTS), out
    for fault, row in rows.items():
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        not_back, lost, duplicated, unrecovered, gaps = (cells[i] for i in (4, 7, 8, 9, 10))
        assert (not_back, lost, duplicated, unrecovered, gaps) == ("0",) * 5, (fault, out)
    assert "1012" in rows["gateway-sigterm"], out  # the drain's close code
    assert "PASS" in out, out
