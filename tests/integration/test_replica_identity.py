"""Replica identity: warned about at start and by ``rtgw check``, with the exact fix; a DELETE
whose partition value the identity does not carry is withheld, never sent to the wrong users."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.channels import load_channels
from gateway.check import check_database
from gateway.settings import Settings
from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import TEST_SECRET, connect, drop_slot, start_gateway, token

FIX = "Run: ALTER TABLE public.memos REPLICA IDENTITY FULL;"


@pytest.fixture
def memos(db: psycopg.Connection[Any], tmp_path: Path) -> Iterator[Path]:
    """A table under REPLICA IDENTITY DEFAULT and a channel partitioned on its owner."""
    db.execute("CREATE TABLE memos (id serial PRIMARY KEY, owner text NOT NULL, body text)")
    folder = tmp_path / "channels"
    folder.mkdir()
    (folder / "memos.toml").write_text(
        '[channels.my_memos]\ntable = "public.memos"\n'
        'operations = ["INSERT", "UPDATE", "DELETE"]\nfilterable = ["body"]\n'
        '[channels.my_memos.partition]\ncolumn = "owner"\nclaim = "sub"\n'
        '[channels.memo_inserts]\ntable = "public.memos"\noperations = ["INSERT"]\n'
    )
    try:
        yield folder
    finally:
        db.execute("DROP TABLE memos")


def _check(pg: EmbeddedPostgres, folder: Path) -> list[str]:
    settings = Settings(database_url=pg.dsn, jwt_secret=TEST_SECRET, channels=folder)
    return check_database(settings, load_channels(folder))


def test_check_names_the_channel_the_reasons_and_the_fix(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], memos: Path
) -> None:
    (problem,) = _check(pg, memos)  # memo_inserts needs no old rows: no line for it
    assert problem.startswith("memos.toml: channel 'my_memos' needs old rows")
    assert "DELETEs are withheld" in problem and "'owner'" in problem
    assert "filtered subscriptions cannot match DELETEs" in problem
    assert problem.endswith(FIX)

    db.execute("ALTER TABLE memos REPLICA IDENTITY FULL")
    assert _check(pg, memos) == []


async def test_delete_with_unknown_partition_is_withheld_and_start_warns(
    pg: EmbeddedPostgres,
    db: psycopg.Connection[Any],
    memos: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    publication = f"memos_{secrets.token_hex(3)}"
    with caplog.at_level(logging.WARNING, logger="rtgw.source.postgres"):
        gateway = await start_gateway(pg.dsn, channels=memos, publication=publication)
    try:
        warnings = [r.getMessage() for r in caplog.records if r.name == "rtgw.source.postgres"]
        assert any("'my_memos'" in w and w.endswith(FIX) for w in warnings), warnings
        async with connect(gateway.ws_url) as alice, connect(gateway.ws_url) as bob:
            for client, sub in ((alice, "alice"), (bob, "bob")):
                await client.auth(token(sub=sub, scopes=()))
                assert (await client.subscribe("my_memos"))["type"] == "subscribed"
            db.execute("INSERT INTO memos (owner, body) VALUES ('alice', 'a1')")
            db.execute("DELETE FROM memos WHERE owner = 'alice'")
            db.execute("INSERT INTO memos (owner, body) VALUES ('alice', 'a2')")
            first, second = await alice.events(2)
            # The DELETE carried only the key: it reached nobody, not even its owner.
            assert [e["change"]["op"] for e in (first, second)] == ["INSERT", "INSERT"]
            assert first["offset"] < second["offset"]
            assert await bob.silent_for(0.3)
        node = gateway.server.config.app.state.node
        assert node.router.stats.withheld == 1
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)
        db.execute(f"DROP PUBLICATION {publication}")
