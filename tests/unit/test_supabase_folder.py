"""supabase/ is a Supabase CLI project: config.toml in the CLI's layout next to migrations/."""

from __future__ import annotations

import tomllib
from pathlib import Path

SUPABASE = Path(__file__).resolve().parents[2] / "supabase"


def test_config_toml_has_the_cli_layout_and_realtime_on() -> None:
    config = tomllib.loads((SUPABASE / "config.toml").read_text(encoding="utf-8"))
    assert config["project_id"] == "rtgw"
    assert isinstance(config["api"]["port"], int) and isinstance(config["db"]["port"], int)
    assert config["db"]["major_version"] >= 15  # the migrations need Postgres 15+
    assert config["db"]["pooler"]["enabled"] is False  # replication needs a direct connection
    assert config["db"]["migrations"]["enabled"] is True
    assert config["realtime"]["enabled"] is True  # RTGW_SOURCE=supabase reads it
    assert config["auth"]["jwt_expiry"] > 0
    assert sorted(p.name for p in (SUPABASE / "migrations").glob("*.sql"))
