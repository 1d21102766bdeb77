"""The README documents every error code, close code and setting the code has."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.errors import SPECS, CloseCode
from gateway.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _error_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for match in re.finditer(r"^\| `([a-z_]+)` \| (\d{3}) \| ([^|]+) \|", README, re.MULTILINE):
        rows[match.group(1)] = (match.group(2), match.group(3).strip())
    return rows


def test_every_error_code_is_in_the_readme_with_its_status_and_close_code() -> None:
    rows = _error_rows()
    assert set(rows) == set(SPECS)
    for code, spec in SPECS.items():
        status, close = rows[code]
        assert int(status) == spec.http_status, code
        if spec.close_code is None:
            assert close.startswith("—"), code
        else:
            assert close.startswith(str(int(spec.close_code))), code


def test_every_rtgw_close_code_is_documented() -> None:
    for code in CloseCode:
        assert str(int(code)) in README, code


def test_every_setting_is_in_the_configuration_table() -> None:
    for name in Settings.model_fields:
        assert f"`RTGW_{name.upper()}`" in README, name
