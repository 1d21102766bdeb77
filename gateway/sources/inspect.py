"""Replica identity inspection: which channels cannot get the old rows they need.

Under ``REPLICA IDENTITY DEFAULT`` an UPDATE carries no old row and a DELETE carries only the
primary key. A channel that partitions or filters on other columns then cannot route its
DELETEs (they are withheld, never sent to the wrong users) or tell a subscriber that an UPDATE
moved a row out of their partition or filter. Used at start (a warning) and by ``rtgw check``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable

import psycopg

from gateway.changes import Op
from gateway.channels import Channel

IDENTITY_QUERY = (
    "SELECT c.relreplident::text, ARRAY(SELECT a.attname::text FROM pg_index i "
    "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
    "WHERE i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary) "
    "OR (c.relreplident = 'i' AND i.indisreplident))) "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = %s AND c.relname = %s"
)
log = logging.getLogger("rtgw.source.inspect")
_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")


def identity_problem(channel: Channel, identity: str, key: Iterable[str]) -> str | None:
    """One actionable line when ``channel`` needs more than the table's replica identity
    (``identity`` is ``pg_class.relreplident``; ``key`` its identity columns), else None."""
    if identity == "f":
        return None
    key = set(key)
    reasons = []
    ops = channel.operations
    if Op.DELETE in ops and channel.partition is not None:
        if channel.partition.column not in key:
            reasons.append(
                f"its DELETEs are withheld: they do not carry the partition column "
                f"{channel.partition.column!r}"
            )
    if Op.DELETE in ops and (channel.filterable is None or channel.filterable - key):
        reasons.append("filtered subscriptions cannot match DELETEs: they carry only the key")
    if Op.UPDATE in ops and (channel.partition is not None or channel.filterable != frozenset()):
        reasons.append("UPDATEs carry no old row, so a row leaving a partition or filter "
                       "is not seen")
    if not reasons:
        return None
    table = f"{_ident(channel.schema)}.{_ident(channel.table)}"
    return (
        f"{channel.source}: channel {channel.name!r} needs old rows that {table} does not "
        f"provide ({'; '.join(reasons)}). Run: ALTER TABLE {table} REPLICA IDENTITY FULL;"
    )


def identity_problems_sync(
    conn: psycopg.Connection[tuple[object, ...]], channels: Iterable[Channel]
) -> list[str]:
    problems = []
    for channel in channels:
        row = conn.execute(IDENTITY_QUERY, (channel.schema, channel.table)).fetchone()
        if row is not None and (line := identity_problem(channel, str(row[0]), _key(row))):
            problems.append(line)
    return problems


async def identity_problems(
    conn: psycopg.AsyncConnection[tuple[object, ...]], channels: Iterable[Channel]
) -> list[str]:
    problems = []
    for channel in channels:
        cur = await conn.execute(IDENTITY_QUERY, (channel.schema, channel.table))
        row = await cur.fetchone()
        if row is not None and (line := identity_problem(channel, str(row[0]), _key(row))):
            problems.append(line)
    return problems


async def warn_about_identity(dsn: str, channels: Iterable[Channel], wait_s: float = 5.0) -> None:
    """Log each channel whose table's replica identity falls short. Never raises: an
    unreachable database is the source's business (it retries and reports ``last_error``)."""
    try:
        async with asyncio.timeout(wait_s):
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                problems = await identity_problems(conn, channels)
    except (psycopg.Error, OSError, TimeoutError) as exc:
        log.warning("could not inspect replica identity: %s", str(exc).strip() or repr(exc))
        return
    for line in problems:
        log.warning("replica identity: %s", line)


def _key(row: tuple[object, ...]) -> list[str]:
    columns = row[1]
    return [str(c) for c in columns] if isinstance(columns, list) else []


def _ident(name: str) -> str:
    return name if _PLAIN.fullmatch(name) else '"' + name.replace('"', '""') + '"'
