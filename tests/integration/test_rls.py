"""Row-level security the gateway cannot bypass by mistake, on a Supabase-like database (the
machine's PostgreSQL, with stand-ins for Supabase's roles and ``auth`` schema, and the
migrations): the demo channels pass; a channel that shows more than the policies allow
refuses to start, with one line naming the channel, the policy and the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from gateway.app import create_app
from gateway.channels import load_channels
from gateway.errors import ConfigError
from gateway.settings import Settings
from gateway.sources.postgres import provisioning
from tests.conftest import REPO, TEST_SECRET
from tests.integration.test_migrations import (
    HOST,
    PORT,
    SUPABASE_AUTH_SCHEMA_STAND_IN,
    SUPABASE_ROLES_STAND_IN,
    USER,
    apply_migrations,
    database,  # noqa: F401 - a fixture
    psql,
    server,  # noqa: F401 - a fixture
)

EVERYONES_NOTES = """
[channels.all_notes]
table = "public.notifications"
scopes = []
"""


@pytest.fixture
def supabase_like(database: str) -> str:  # noqa: F811 - the fixture above
    psql(database, script=SUPABASE_ROLES_STAND_IN + SUPABASE_AUTH_SCHEMA_STAND_IN)
    apply_migrations(database)
    return f"postgresql://{USER}@{HOST}:{PORT}/{database}"


def settings(dsn: str, channels: Path) -> Settings:
    return Settings(database_url=dsn, jwt_secret=TEST_SECRET, channels=channels)


def folder(tmp_path: Path, text: str) -> Path:
    (tmp_path / "notes.toml").write_text(text, encoding="utf-8")
    return tmp_path


def test_the_demo_channels_pass_the_supabase_policies(supabase_like: str) -> None:
    with psycopg.connect(supabase_like, autocommit=True) as conn:
        channels = list(load_channels(REPO / "channels"))
        assert provisioning.rls_problems(conn, channels) == []
        secured, policies = provisioning.read_policies(conn.execute(
            provisioning.POLICIES_QUERY, provisioning.tables_params(channels)
        ).fetchall())
    assert secured == {("public", "customers"), ("public", "notifications"),
                       ("public", "orders")}
    assert {p.name for p in policies} == {
        "own notifications", "orders readable with orders:read",
        "customers readable with orders:read",
    }
    create_app(settings(supabase_like, REPO / "channels"))  # starts


def test_a_channel_showing_every_users_rows_refuses_to_start(
    supabase_like: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as refused:
        create_app(settings(supabase_like, folder(tmp_path, EVERYONES_NOTES)))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("notes.toml: channel 'all_notes': row-level security on "
                              "public.notifications: policy 'own notifications' ")
    assert "partition must be column 'user_id' by claim 'sub'" in message
    assert 'add rls = "trust" to the channel' in message


def test_rls_trust_is_taken_at_its_word(supabase_like: str, tmp_path: Path) -> None:
    trusted = folder(tmp_path, EVERYONES_NOTES + 'rls = "trust"\n')
    create_app(settings(supabase_like, trusted))


def test_rtgw_serve_says_why_in_one_line_and_exits(supabase_like: str, tmp_path: Path) -> None:
    env = {**os.environ, "RTGW_DATABASE_URL": supabase_like, "RTGW_JWT_SECRET": TEST_SECRET,
           "RTGW_CHANNELS": str(folder(tmp_path, EVERYONES_NOTES)), "RTGW_PORT": "1"}
    done = subprocess.run([str(Path(sys.executable).with_name("rtgw")), "serve"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("rtgw: configuration error: notes.toml: channel 'all_notes': ")
