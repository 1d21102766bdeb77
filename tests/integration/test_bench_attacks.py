"""The attacks benchmark runs end to end in its short mode, and every attack gets the answers
docs/reliability.md promises (each attack's ``require`` and ``allow`` in ``bench.attacks``,
the one place they are written) while the control client loses nothing.

No latency assertions: on a shared machine those belong to the benchmark's table, not to tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.attacks import SPECS
from tests.conftest import REPO

EXPECTED = {spec.name: spec for spec in SPECS}

@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("attacks") / "rows.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.attacks", "--short", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=230, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "| attack | the gateway's answer |" in result.stdout, result.stdout
    found: list[dict[str, Any]] = json.loads(Path(out).read_text())
    return {row["name"]: row for row in found}


@pytest.mark.timeout(240)
def test_every_attack_ran(rows: dict[str, dict[str, Any]]) -> None:
    assert set(rows) == set(EXPECTED)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_gateway_answers_as_documented_and_the_control_client_loses_nothing(
    rows: dict[str, dict[str, Any]], name: str
) -> None:
    row, spec = rows[name], EXPECTED[name]
    answers = set(row["answers"])
    assert spec.require <= answers, row["answers"]
    assert answers <= spec.require | spec.allow, row["answers"]
    control = row["control"]
    assert control["committed"] > 0
    assert control["lost"] == 0 and control["duplicates"] == 0, control
    assert control["unrecovered"] == 0 and control["gaps"] == 0, control
    assert row["errors_logged"] == [], row["errors_logged"]
    assert row["ok"], row["problems"]
