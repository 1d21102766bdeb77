"""The docs document every error code, close code and setting the code has; the README stays short.

The tables live in docs/errors.md and docs/configuration.md; every relative link in README.md and
docs/*.md must point at a file (and heading) that exists.
"""

from __future__ import annotations

import re
from pathlib import Path

from gateway.errors import SPECS, CloseCode
from gateway.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README_MAX_LINES = 250


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


def test_the_readme_is_short() -> None:
    lines = _read(REPO / "README.md").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_the_readme_links_every_docs_page() -> None:
    linked = {link.partition("#")[0] for link in _links(_read(REPO / "README.md"))}
    pages = {f"docs/{page.name}" for page in DOCS.glob("*.md")}
    assert pages - linked == set()


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for match in re.finditer(r"^#{1,6} (.+)$", _without_code_blocks(text), re.MULTILINE):
        slug = _slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def _links(text: str) -> list[str]:
    prose = re.sub(r"`[^`\n]*`", "", _without_code_blocks(text))
    return re.findall(r"\]\(([^)\s]+)\)", prose)


def test_every_relative_link_points_at_an_existing_file() -> None:
    pages = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        for link in _links(_read(page)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # https:, mailto:, ...
                continue
            target, _, anchor = link.partition("#")
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.relative_to(REPO)}: {link}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(_read(path)):
                broken.append(f"{page.relative_to(REPO)}: {link} (no such heading)")
    assert broken == []
