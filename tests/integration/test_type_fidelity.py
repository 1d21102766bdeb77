"""Property: every value the source delivers equals what Postgres itself renders for the row
(``to_jsonb(row)``), except the documented differences (docs/types.md):
``numeric`` arrives as a string (``to_jsonb`` gives a JSON number)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import queue
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Json, Jsonb

from gateway.changes import Change
from gateway.sources.embedded import EmbeddedPostgres
from gateway.sources.postgres import PostgresSource, PostgresSourceConfig
from gateway.sources.postgres.stream import SESSION_OPTIONS
from tests.conftest import drop_slot

# column -> SQL type; the value of each is sent with an explicit cast to that type.
COLUMNS = {
    "i2": "int2", "i4": "int4", "i8": "int8", "num": "numeric", "f4": "float4",
    "f8": "float8", "b": "bool", "t": "text", "vc": "varchar(12)", "ch": "char(4)",
    "u": "uuid", "j": "json", "jb": "jsonb", "tstz": "timestamptz", "ts": "timestamp",
    "d": "date", "tm": "time", "tmtz": "timetz", "iv": "interval", "by": "bytea",
    "ai": "int4[]", "at2": "text[]", "af": "float8[]", "an": "numeric[]", "mood": "fid_mood",
    "pos": "fid_posint",
}
NUMERIC = {"num", "an"}
FLOAT = {"f4", "f8", "af"}  # to_jsonb writes 1e16 as 10000000000000000: compare as floats

NO_NUL = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
TEXT = st.text(NO_NUL, max_size=30) | st.sampled_from(['NULL', '', ' a ', '{x}', 'a,b', '"\\'])
JSON_LEAF = (
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(NO_NUL, max_size=10)
    | st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: round(f, 6))
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(NO_NUL, max_size=5),
                                                                inner, max_size=3),
    max_leaves=8,
)
INFINITIES = st.sampled_from(["infinity", "-infinity"])
OFFSETS = st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)),
                           dt.timezone(dt.timedelta(hours=-8))])


def _grid(element: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """A 2-D array: rows of equal length."""
    return st.integers(1, 3).flatmap(
        lambda width: st.lists(st.lists(element, min_size=width, max_size=width),
                               min_size=1, max_size=3)
    )


VALUES: dict[str, st.SearchStrategy[Any]] = {
    "i2": st.integers(-(2**15), 2**15 - 1),
    "i4": st.integers(-(2**31), 2**31 - 1),
    "i8": st.integers(-(2**63), 2**63 - 1),
    "num": st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
        lambda d: abs(d.adjusted()) < 100
    ) | st.sampled_from([Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"),
                         Decimal("1.50"), Decimal("-0.000")]),
    "f4": st.floats(width=32),
    "f8": st.floats(),
    "b": st.booleans(),
    "t": TEXT,
    "vc": st.text(NO_NUL, max_size=12),
    "ch": st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=4),
    "u": st.uuids(),
    "j": JSON.map(Json),
    "jb": JSON.map(Jsonb),
    "tstz": st.datetimes(timezones=OFFSETS) | INFINITIES,
    "ts": st.datetimes() | INFINITIES,
    "d": st.dates() | INFINITIES,
    "tm": st.times(),
    "tmtz": st.times(timezones=OFFSETS),
    "iv": st.timedeltas(dt.timedelta(days=-10**5), dt.timedelta(days=10**5))
    | st.sampled_from(["1 year 2 mons", "-1 year -2 mons 3 days 04:05:06.5", "1 mon -1 day"]),
    "by": st.binary(max_size=20),
    "ai": st.lists(st.none() | st.integers(-(2**31), 2**31 - 1), max_size=4),
    "at2": _grid(st.none() | TEXT),
    "af": st.lists(st.none() | st.floats(), max_size=3),
    "an": _grid(st.none() | st.decimals(allow_nan=False, allow_infinity=False, places=3)),
    "mood": st.sampled_from(["sad", "ok", "happy"]),
    "pos": st.integers(1, 2**31 - 1),
}
ROWS = st.fixed_dictionaries({name: st.none() | strategy for name, strategy in VALUES.items()})


class Stream:
    """A PostgresSource streaming on its own thread and loop, shared by every example."""

    def __init__(self, source: PostgresSource) -> None:
        self.source = source
        self.changes: queue.Queue[Change] = queue.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        async def sink(batch: Sequence[Change]) -> None:
            for change in batch:
                self.changes.put(change)

        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        with contextlib.suppress(asyncio.CancelledError):
            await self.source.run(sink)

    def __enter__(self) -> Stream:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.source.streaming:
            assert time.monotonic() < deadline, self.source.last_error
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._loop is not None and self._task is not None
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(20)

    def next_for(self, row_id: int) -> Change:
        while True:
            change = self.changes.get(timeout=10)
            if change.new is not None and change.new["id"] == row_id:
                return change


@pytest.fixture(scope="module")
def fidelity(pg: EmbeddedPostgres) -> Iterator[tuple[Stream, psycopg.Connection[Any]]]:
    slot = f"fid_{secrets.token_hex(4)}"
    # The source's output settings, so to_jsonb renders like it; synchronous commit, so the
    # walsender (which sends only flushed WAL) does not wait for the WAL writer's next round.
    conn = psycopg.connect(pg.dsn, autocommit=True,
                           options=f"{SESSION_OPTIONS} -c synchronous_commit=on")
    conn.execute("CREATE TYPE fid_mood AS ENUM ('sad', 'ok', 'happy')")
    conn.execute("CREATE DOMAIN fid_posint AS int4 CHECK (VALUE > 0)")
    columns = ", ".join(f"{name} {sql_type}" for name, sql_type in COLUMNS.items())
    conn.execute(f"CREATE TABLE fidelity (id int PRIMARY KEY, {columns}, "
                 "gen int8 GENERATED ALWAYS AS (i4::int8 * 2) STORED)")
    # PG 18 publishes stored generated columns only when the publication asks for them.
    conn.execute("CREATE PUBLICATION fid_pub FOR TABLE fidelity "
                 "WITH (publish_generated_columns = stored)")
    source = PostgresSource(PostgresSourceConfig(
        dsn=pg.dsn, slot=slot, publication="fid_pub", tables=(("public", "fidelity"),)
    ))
    try:
        with Stream(source) as stream:
            yield stream, conn
    finally:
        drop_slot(pg.dsn, slot)
        conn.execute("DROP PUBLICATION fid_pub")
        conn.execute("DROP TABLE fidelity")
        conn.execute("DROP DOMAIN fid_posint")
        conn.execute("DROP TYPE fid_mood")
        conn.close()


def _normal(value: Any, column: str) -> Any:
    """Both sides in one shape: numeric values as Decimal, float values as float."""
    if isinstance(value, list):
        return [_normal(item, column) for item in value]
    if isinstance(value, dict):
        return {key: _normal(item, column) for key, item in value.items()}
    if column in NUMERIC and isinstance(value, str | int | Decimal) and value != "NaN":
        return Decimal(value)
    if isinstance(value, Decimal) or (column in FLOAT and type(value) is int):
        return float(value)
    return value


_ids = iter(range(1, 10**9))


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(row=ROWS)
def test_every_value_equals_what_postgres_renders(
    fidelity: tuple[Stream, psycopg.Connection[Any]], row: dict[str, Any]
) -> None:
    stream, conn = fidelity
    row_id = next(_ids)
    names = ", ".join(COLUMNS)
    casts = ", ".join(f"%s::{sql_type}" for sql_type in COLUMNS.values())
    conn.execute(f"INSERT INTO fidelity (id, {names}) VALUES (%s, {casts})",
                 (row_id, *(row[name] for name in COLUMNS)))
    found = conn.execute("SELECT to_jsonb(f)::text FROM fidelity f WHERE id = %s",
                         (row_id,)).fetchone()
    assert found is not None
    expected = json.loads(found[0], parse_float=Decimal)
    change = stream.next_for(row_id)
    assert change.new is not None
    assert set(change.new) == set(expected)
    for column, theirs in expected.items():
        ours = change.new[column]
        if column in NUMERIC and theirs is not None:
            assert _shape_of_numeric(ours), (column, ours)
        assert _normal(ours, column) == _normal(theirs, column), (column, ours, theirs)


def _shape_of_numeric(value: Any) -> bool:
    """The documented difference: numeric values (and elements) are strings, never floats."""
    if isinstance(value, list):
        return all(item is None or _shape_of_numeric(item) for item in value)
    return isinstance(value, str)


