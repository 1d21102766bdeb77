"""docs/errors.md and docs/configuration.md document every error code, close code and setting."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.errors import SPECS, CloseCode
from gateway.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _error_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    text = _read(DOCS / "errors.md")
    for match in re.finditer(r"^\| `([a-z_]+)` \| (\d{3}) \| ([^|]+) \|", text, re.MULTILINE):
        assert match.group(1) not in rows, f"{match.group(1)} is listed twice"
        rows[match.group(1)] = (match.group(2), match.group(3).strip())
    return rows


def test_every_error_code_is_in_the_errors_page_with_its_status_and_close_code() -> None:
    rows = _error_rows()
    assert set(rows) == set(SPECS)
    for code, spec in SPECS.items():
        status, close = rows[code]
        assert int(status) == spec.http_status, code
        if spec.close_code is None:
            assert close.startswith("—"), code
        else:
            assert close.startswith(str(int(spec.close_code))), code


def test_every_rtgw_close_code_is_in_the_close_code_table() -> None:
    text = _read(DOCS / "errors.md")
    listed = [int(m.group(1)) for m in re.finditer(r"^\| (\d{4}) \|", text, re.MULTILINE)]
    assert sorted(listed) == sorted(int(code) for code in CloseCode)


def test_every_setting_is_in_the_configuration_table() -> None:
    text = _read(DOCS / "configuration.md")
    rows = "\n".join(line for line in text.splitlines() if line.startswith("| `RTGW_"))
    for name in Settings.model_fields:
        assert f"`RTGW_{name.upper()}`" in rows, name
