"""The attacks benchmark runs end to end in its short mode, and every attack gets the answer the
docs promise (docs/reliability.md) while the control client loses nothing.

No latency assertions: on a shared machine those belong to the benchmark's table, not to tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

# Per attack: the answers that must come, and those that may come too.
TOKEN_REFUSALS = {
    "wrong signature: token_signature, close 4001",
    "alg none: token_algorithm, close 4001",
    "HS256 signed with the RSA public key: token_signature, close 4001",
    "RS256 by another key under the JWKS kid: token_signature, close 4001",
    "expired: token_expired, close 4003",
    "no exp: token_claims, close 4001",
    "wrong aud: token_audience, close 4001",
}
EXPECTED: dict[str, tuple[set[str], set[str]]] = {
    "head-1mb": ({"431 request_head_too_large"}, set()),
    "head-9kb-line": ({"431 request_head_too_large"}, set()),
    "head-200-lines": ({"431 request_head_too_large"}, set()),
    "header-stream": ({"431 request_head_too_large"}, set()),
    "slowloris": ({"408 request_head_timeout", "429 too_many_connections"}, set()),
    "ping-flood": ({"pong", "no answer (over the ping rate)"}, set()),
    "ping-flood-unanswered": ({"dropped (connection reset)"}, set()),
    "text-flood": ({"pong", "rate_limited"}, {"slow_consumer", "close 4008"}),
    "frame-not-json": ({"bad_frame x30, then pong"}, set()),
    "frame-not-utf8": ({"close 1007"}, set()),
    "frame-oversized": ({"close 1009"}, set()),
    "forged-tokens": (TOKEN_REFUSALS, set()),
    "idle-sockets": ({"ready"}, set()),
    "postgres-restart": ({"fast stop done"}, set()),
    "gateway-sigkill": ({"killed", "control client closed 1006"}, set()),
    "gateway-sigterm": (
        {"exited on the signal", "control client got shutting_down", "control client closed 1012"},
        set(),
    ),
}


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
    row = rows[name]
    required, allowed = EXPECTED[name]
    answers = set(row["answers"])
    assert required <= answers, row["answers"]
    assert answers <= required | allowed, row["answers"]
    control = row["control"]
    assert control["committed"] > 0
    assert control["lost"] == 0 and control["duplicates"] == 0, control
    assert control["unrecovered"] == 0 and control["gaps"] == 0, control
    assert row["errors_logged"] == [], row["errors_logged"]
    assert row["ok"], row["problems"]
