"""Shapes of the change stream, through a real gateway and a real WebSocket client: TOAST values
an UPDATE did not touch, several tables in one transaction, a column added between changes,
and TRUNCATE."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import Client, Gateway, connect, drop_slot, start_gateway, token

TABLES = {
    "toast_full": "FULL",
    "toast_default": "DEFAULT",
    "shape_a": "FULL",
    "shape_b": "FULL",
}
# Random hex does not compress; with STORAGE EXTERNAL it is stored out of line regardless.
BIG = secrets.token_hex(8_000)


@pytest.fixture
async def shaped(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], tmp_path: Path
) -> AsyncIterator[Gateway]:
    for table, identity in TABLES.items():
        db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text, note text)")
        db.execute(f"ALTER TABLE {table} ALTER COLUMN body SET STORAGE EXTERNAL")
        db.execute(f"ALTER TABLE {table} REPLICA IDENTITY {identity}")
    folder = tmp_path / "channels"
    folder.mkdir()
    (folder / "shape.toml").write_text("".join(
        f'[channels.{table}]\ntable = "public.{table}"\n'
        'operations = ["INSERT", "UPDATE", "DELETE", "TRUNCATE"]\n'
        for table in TABLES
    ))
    publication = f"shape_{secrets.token_hex(3)}"
    gateway = await start_gateway(pg.dsn, channels=folder, publication=publication)
    try:
        yield gateway
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)
        db.execute(f"DROP PUBLICATION {publication}")
        for table in TABLES:
            db.execute(f"DROP TABLE {table}")


@contextlib.asynccontextmanager
async def _subscribed(gateway: Gateway, *channels: str) -> AsyncIterator[Client]:
    async with connect(gateway.ws_url) as client:
        await client.auth(token(scopes=()))
        for channel in channels:
            assert (await client.subscribe(channel))["type"] == "subscribed"
        yield client


def _out_of_line(db: psycopg.Connection[Any], table: str) -> bool:
    row = db.execute(
        "SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = %s", (table,)
    ).fetchone()
    assert row is not None
    counted = db.execute(f"SELECT count(*) FROM {row[0]}").fetchone()
    return counted is not None and counted[0] > 0


@pytest.mark.parametrize("table", ["toast_full", "toast_default"])
async def test_unchanged_toast_is_merged_or_listed_never_silently_missing(
    shaped: Gateway, db: psycopg.Connection[Any], table: str
) -> None:
    async with _subscribed(shaped, table) as client:
        db.execute(f"INSERT INTO {table} VALUES (1, %s, 'first')", (BIG,))
        assert _out_of_line(db, table)
        db.execute(f"UPDATE {table} SET note = 'second' WHERE id = 1")
        insert, update = await client.events(2)
        assert insert["change"]["new"]["body"] == BIG
        change = update["change"]
        assert change["op"] == "UPDATE" and change["new"]["note"] == "second"
        if table == "toast_full":  # merged from the old row, which FULL carries
            assert change["new"]["body"] == BIG
            assert change["old"]["body"] == BIG
            assert "unchanged" not in change
        else:  # not sent, and said so
            assert "body" not in change["new"]
            assert change["unchanged"] == ["body"]


async def test_several_tables_in_one_transaction_arrive_in_statement_order(
    shaped: Gateway, db: psycopg.Connection[Any]
) -> None:
    async with _subscribed(shaped, "shape_a", "shape_b") as client:
        with db.transaction():
            db.execute("INSERT INTO shape_a (id, note) VALUES (1, 'a1')")
            db.execute("INSERT INTO shape_b (id, note) VALUES (1, 'b1')")
            db.execute("UPDATE shape_a SET note = 'a2' WHERE id = 1")
            db.execute("DELETE FROM shape_b WHERE id = 1")
        events = await client.events(4)
        changes = [e["change"] for e in events]
        assert [(c["table"], c["op"]) for c in changes] == [
            ("shape_a", "INSERT"), ("shape_b", "INSERT"), ("shape_a", "UPDATE"),
            ("shape_b", "DELETE"),
        ]
        lsns = {c["id"].split(":")[0] for c in changes}
        assert len(lsns) == 1  # one commit
        assert [c["id"].split(":")[1] for c in changes] == ["000000", "000001", "000002",
                                                            "000003"]
        assert changes[3]["old"] == {"id": 1, "body": None, "note": "b1"}


async def test_added_column_reaches_clients_after_the_new_relation_message(
    shaped: Gateway, db: psycopg.Connection[Any]
) -> None:
    async with _subscribed(shaped, "shape_a") as client:
        db.execute("INSERT INTO shape_a (id, note) VALUES (1, 'before')")
        db.execute("ALTER TABLE shape_a ADD COLUMN tags text[] DEFAULT '{x}'")
        db.execute("INSERT INTO shape_a (id, note, tags) VALUES (2, 'after', '{a,NULL}')")
        db.execute("UPDATE shape_a SET note = 'touched' WHERE id = 1")
        before, after, touched = await client.events(3)
        assert before["change"]["new"] == {"id": 1, "body": None, "note": "before"}
        assert after["change"]["new"] == {"id": 2, "body": None, "note": "after",
                                          "tags": ["a", None]}
        assert touched["change"]["new"]["tags"] == ["x"]  # the default, filled in by ALTER


async def test_truncate_is_its_own_event_for_the_channels_subscribers(
    shaped: Gateway, db: psycopg.Connection[Any]
) -> None:
    async with _subscribed(shaped, "shape_a", "shape_b") as client:
        db.execute("INSERT INTO shape_a (id, note) VALUES (1, 'x')")
        db.execute("TRUNCATE shape_a")
        db.execute("INSERT INTO shape_b (id, note) VALUES (1, 'y')")
        insert, truncate, other = await client.events(3)
        assert truncate["topic"] == "shape_a" and truncate["offset"] > insert["offset"]
        change = truncate["change"]
        assert change["op"] == "TRUNCATE" and change["table"] == "shape_a"
        assert change["new"] is None and change["old"] is None
        assert other["change"]["table"] == "shape_b"
