"""Looked-up rows from Postgres for enrichment (gateway/enrich.py): one query per call, on one
connection of its own, with values typed exactly as the stream types them (each column read as
text under the stream's session settings and converted by the same ``TypeRegistry``), so an
enriched object looks like a row of the same table arriving in the stream.

A failing query raises ``psycopg.Error``: the batch is not handed on, the source reconnects
and the slot delivers it again (nothing is skipped)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import psycopg
from psycopg import sql

from gateway.changes import Row
from gateway.sources.postgres.stream import SESSION_OPTIONS
from gateway.sources.postgres.types import TYPE_QUERY, PgType, TypeRegistry

COLUMN_TYPES_QUERY = (
    "SELECT a.attname::text, a.atttypid::int8, format_type(a.atttypid, a.atttypmod) "
    "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped"
)
Key = tuple[Any, ...]
Connection = psycopg.AsyncConnection[tuple[Any, ...]]


class ReadConnection:
    """One autocommit connection of its own for short queries, under the stream's session
    settings: opened on first use and again after it was lost (``opened`` runs each time)."""

    def __init__(
        self, dsn: str, opened: Callable[[Connection], Awaitable[None]] | None = None
    ) -> None:
        self._dsn, self._opened = dsn, opened
        self._conn: Connection | None = None

    async def get(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, options=SESSION_OPTIONS, connect_timeout=5
            )
            if self._opened is not None:
                await self._opened(self._conn)
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


class PostgresLookups:
    """A ``LookupStore`` on ``dsn``."""

    def __init__(self, dsn: str) -> None:
        self._conn = ReadConnection(dsn, self._opened)
        self._lock = asyncio.Lock()
        self._types = TypeRegistry()
        self._columns: dict[tuple[str, str], dict[str, tuple[int, str]]] = {}

    async def fetch(
        self, schema: str, table: str, key_columns: tuple[str, ...], columns: tuple[str, ...],
        keys: Collection[Key],
    ) -> dict[Key, Row]:
        async with self._lock:
            conn = await self._conn.get()
            types = await self._column_types(conn, schema, table)
            wanted = (*key_columns, *(c for c in columns if c not in key_columns))
            missing = [c for c in wanted if c not in types]
            if missing:
                raise psycopg.ProgrammingError(
                    f"{schema}.{table} has no column {', '.join(missing)} (an enrich lookup)"
                )
            query = sql.SQL("SELECT {} FROM {} WHERE ({}) IN (SELECT * FROM unnest({}))").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in wanted),
                sql.Identifier(schema, table),
                sql.SQL(", ").join(sql.Identifier(c) for c in key_columns),
                sql.SQL(", ").join(
                    sql.SQL("%s::{}[]").format(sql.SQL(types[c][1])) for c in key_columns
                ),
            )
            ordered = list(keys)
            params = [[_text(key[i]) for key in ordered] for i in range(len(key_columns))]
            cur = await conn.execute(query, params)
            rows = await cur.fetchall()
        convert = [self._types.converter(types[c][0]) for c in wanted]
        found: dict[Key, Row] = {}
        for row in rows:
            values = [
                None if text is None else to(text) for to, text in zip(convert, row, strict=True)
            ]
            found[tuple(values[: len(key_columns)])] = dict(zip(wanted, values, strict=True))
        return found

    async def close(self) -> None:
        await self._conn.close()

    async def _opened(self, conn: Connection) -> None:
        """A new connection: the types may have changed while none was open."""
        cur = await conn.execute(TYPE_QUERY)
        self._types.update(PgType(*row) for row in await cur.fetchall())
        self._columns.clear()

    async def _column_types(
        self, conn: Connection, schema: str, table: str
    ) -> dict[str, tuple[int, str]]:
        known = self._columns.get((schema, table))
        if known is None:
            cur = await conn.execute(COLUMN_TYPES_QUERY, (schema, table))
            known = {str(name): (int(oid), str(sql_type)) for name, oid, sql_type
                     in await cur.fetchall()}
            self._columns[(schema, table)] = known
        return known


def _text(value: Any) -> str | None:
    """A key value as Postgres text input (the query casts it back to the column's type)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class ReadOnlyPool:
    """What custom enrichers get as ``db``: ``async with db.connection() as conn`` lends a
    connection whose transactions are read-only (at most ``size`` open, reused)."""

    def __init__(self, dsn: str, size: int = 4) -> None:
        self._dsn = dsn
        self._idle: list[psycopg.AsyncConnection[tuple[Any, ...]]] = []
        self._slots = asyncio.Semaphore(size)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[tuple[Any, ...]]]:
        async with self._slots:
            conn = self._idle.pop() if self._idle else await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, connect_timeout=5,
                options=f"{SESSION_OPTIONS} -c default_transaction_read_only=on",
            )
            try:
                yield conn
            except BaseException:
                await conn.close()  # its state is unknown: not lent again
                raise
            if not conn.closed:
                self._idle.append(conn)

    async def close(self) -> None:
        for conn in self._idle:
            await conn.close()
        self._idle.clear()
