"""The publication, the slot and the tables' replica identity: all their SQL lives here.

The source runs it on an async connection (creating the publication and slot when missing, and
warning about what falls short); ``rtgw check`` runs the same reads on a sync connection and
reports the same problems. So each read is a query constant plus a function that interprets its
rows, and the problems are worded once.

Replica identity: under ``REPLICA IDENTITY DEFAULT`` an UPDATE carries no old row and a DELETE
carries only the primary key. A channel that partitions or filters on other columns then cannot
route its DELETEs (they are withheld, never sent to the wrong users) or tell a subscriber that an
UPDATE moved a row out of their partition or filter.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from gateway.changes import Op
from gateway.channels import Channel, RolesConfig
from gateway.errors import ConfigError
from gateway.sources.postgres import policies
from gateway.sources.postgres.stream import SLOT_IN_USE, ReplicationError

log = logging.getLogger("rtgw.source.postgres")
_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")
AsyncConn = psycopg.AsyncConnection[tuple[object, ...]]
SyncConn = psycopg.Connection[tuple[object, ...]]
Table = tuple[str, str]  # (schema, name)

# -- publication ---------------------------------------------------------------------------------

PUBLICATION_QUERY = (
    "SELECT p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate, ARRAY(SELECT ARRAY["
    "t.schemaname::text, t.tablename::text] FROM pg_publication_tables t "
    "WHERE t.pubname = p.pubname) FROM pg_publication p WHERE p.pubname = %s"
)
_OPERATIONS = ("insert", "update", "delete", "truncate")


@dataclass(frozen=True, slots=True)
class Publication:
    name: str
    unpublished: tuple[str, ...]  # operations it does not publish ("update", ...)
    tables: frozenset[Table]

    @classmethod
    def from_row(cls, name: str, row: Sequence[object] | None) -> Publication | None:
        """Read a ``PUBLICATION_QUERY`` row (None: no such publication)."""
        if row is None:
            return None
        unpublished = tuple(op for op, on in zip(_OPERATIONS, row[:4], strict=True) if not on)
        pairs = row[4] if isinstance(row[4], list) else []
        return cls(name, unpublished, frozenset((str(s), str(t)) for s, t in pairs))

    def problems(self, tables: Iterable[Table]) -> list[str]:
        """One actionable line per operation it does not publish and per table of ``tables``
        it does not include."""
        name = self.name
        problems = []
        if self.unpublished:
            problems.append(
                f"publication {name} does not publish {', '.join(self.unpublished)}: ALTER "
                f"PUBLICATION {name} SET (publish = 'insert, update, delete, truncate');"
            )
        for schema, table in tables:
            if (schema, table) not in self.tables:
                problems.append(
                    f"publication {name} does not include {schema}.{table}, so its changes "
                    f"never arrive: ALTER PUBLICATION {name} ADD TABLE {schema}.{table};"
                )
        return problems


async def ensure_publication(conn: AsyncConn, name: str, tables: Sequence[Table]) -> None:
    """Create the publication for ``tables`` when it is missing; log what an existing one
    lacks (it is the user's: never altered)."""
    cur = await conn.execute(PUBLICATION_QUERY, (name,))
    found = Publication.from_row(name, await cur.fetchone())
    if found is not None:
        for line in found.problems(tables):
            log.warning("%s", line)
        return
    listed = sql.SQL(", ").join(sql.Identifier(s, t) for s, t in tables)
    # Postgres 18 can publish stored generated columns; without this they are absent.
    options = sql.SQL(
        " WITH (publish_generated_columns = stored)"
        if conn.info.server_version >= 180000 else ""
    )
    try:
        await conn.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {}{}").format(
                sql.Identifier(name), listed, options
            )
        )
    except psycopg.errors.DuplicateObject:
        return  # another gateway starting at the same moment created it
    log.info("created publication %s for %d tables", name, len(tables))


# -- slot ----------------------------------------------------------------------------------------

SLOT_QUERY = (
    "SELECT plugin, slot_type, active, active_pid, wal_status, "
    "confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s"
)


@dataclass(frozen=True, slots=True)
class Slot:
    name: str
    plugin: str | None
    slot_type: str
    active: bool
    active_pid: int | None
    wal_status: str | None
    confirmed_flush: int  # 0 when nothing was confirmed yet

    @classmethod
    def from_row(cls, name: str, row: Sequence[object] | None) -> Slot | None:
        """Read a ``SLOT_QUERY`` row (None: no such slot)."""
        if row is None:
            return None
        plugin, slot_type, active, pid, wal_status, confirmed = row
        return cls(
            name,
            None if plugin is None else str(plugin),
            str(slot_type),
            bool(active),
            None if pid is None else int(str(pid)),
            None if wal_status is None else str(wal_status),
            0 if confirmed is None else int(str(confirmed)),
        )

    @property
    def lost(self) -> bool:
        """Invalidated: the server removed WAL the slot needed."""
        return self.wal_status == "lost"

    def kind_problem(self) -> str | None:
        """Why the slot cannot serve pgoutput at all, or None."""
        if self.slot_type == "logical" and self.plugin == "pgoutput":
            return None
        return (
            f"slot {self.name} is a {self.slot_type} slot with plugin {self.plugin}, not "
            f"pgoutput: drop it (SELECT pg_drop_replication_slot('{self.name}');) or set "
            "RTGW_SLOT to another name"
        )

    def problems(self) -> list[str]:
        """One actionable line per reason the gateway cannot stream from it now."""
        problems = [] if (kind := self.kind_problem()) is None else [kind]
        if self.active:
            problems.append(
                f"slot {self.name} is in use by another process (pid {self.active_pid}): stop "
                "the other consumer or set RTGW_SLOT to another name"
            )
        if self.lost:
            problems.append(
                f"slot {self.name} was invalidated (its WAL was removed): drop it "
                f"(SELECT pg_drop_replication_slot('{self.name}');) and let rtgw serve recreate it"
            )
        return problems


async def read_slot(conn: AsyncConn, name: str) -> Slot | None:
    cur = await conn.execute(SLOT_QUERY, (name,))
    return Slot.from_row(name, await cur.fetchone())


async def ensure_slot(conn: AsyncConn, name: str, *, invalid: bool, streamed: bool) -> str | None:
    """Make sure the persistent pgoutput slot exists: create it when missing, drop and recreate
    it when ``invalid`` (the stream said so) or lost. Returns why changes were lost (a gap
    reason) when it was recreated, or had vanished after a session ``streamed`` from it.
    Raises ``ReplicationError`` for a slot that is not a pgoutput slot."""
    slot = await read_slot(conn, name)
    gap = None
    if slot is not None and (invalid or slot.lost):
        await _drop_slot(conn, name)
        slot = None
        gap = ("slot_invalidated: the replication slot lost WAL it needed "
               "(max_slot_wal_keep_size) and was recreated")
    elif slot is None and streamed:
        gap = ("slot_missing: the replication slot was dropped outside the gateway "
               "and was recreated")
    if slot is None:
        try:
            await conn.execute(
                "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,)
            )
            log.info("created replication slot %s", name)
        except psycopg.errors.DuplicateObject:
            pass  # another gateway starting at the same moment created it
    elif (problem := slot.kind_problem()) is not None:
        raise ReplicationError(problem)
    return gap


def temporary_slot_command(name: str) -> str:
    """The replication command that creates the live-only slot ``name``: run it on the
    replication connection, whose life it shares."""
    return f'CREATE_REPLICATION_SLOT "{name}" TEMPORARY LOGICAL pgoutput'


async def _drop_slot(conn: AsyncConn, name: str) -> None:
    """Drop an invalidated slot; its walsender may take a moment to let go of it."""
    for _ in range(100):
        try:
            await conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
        except psycopg.errors.ObjectInUse:
            await asyncio.sleep(0.05)
            continue
        except psycopg.errors.UndefinedObject:
            pass
        log.warning("dropped invalidated replication slot %s", name)
        return
    raise ReplicationError(f"could not drop invalidated slot {name}", SLOT_IN_USE)


# -- tables and replica identity -----------------------------------------------------------------

TABLES_QUERY = (
    "SELECT n.nspname::text, c.relname::text, c.relreplident::text, "
    "ARRAY(SELECT a.attname::text FROM pg_index i JOIN pg_attribute a "
    "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = c.oid "
    "AND ((c.relreplident = 'd' AND i.indisprimary) "
    "OR (c.relreplident = 'i' AND i.indisreplident))), "
    "ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid "
    "AND a.attnum > 0 AND NOT a.attisdropped) "
    "FROM unnest(%s::text[], %s::text[]) AS wanted(schema, name) "
    "JOIN pg_namespace n ON n.nspname = wanted.schema "
    "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = wanted.name"
)


@dataclass(frozen=True, slots=True)
class TableInfo:
    identity: str  # pg_class.relreplident: 'd' default, 'f' full, 'i' index, 'n' nothing
    key: frozenset[str]  # the columns the identity sends for old rows (when not 'f')
    columns: frozenset[str]


def tables_params(channels: Iterable[Channel]) -> tuple[list[str], list[str]]:
    """The parameters of ``TABLES_QUERY`` for the channels' tables and looked-up tables."""
    tables = sorted(
        {(channel.schema, channel.table) for channel in channels}
        | {(lookup.schema, lookup.table) for channel in channels for lookup in channel.lookups}
    )
    return [schema for schema, _ in tables], [table for _, table in tables]


def read_tables(rows: Iterable[Sequence[object]]) -> dict[Table, TableInfo]:
    """``TABLES_QUERY`` rows by table; a table that does not exist has none."""
    return {
        (str(schema), str(table)): TableInfo(str(identity), _names(key), _names(columns))
        for schema, table, identity, key, columns in rows
    }


def table_problems(channel: Channel, tables: dict[Table, TableInfo]) -> list[str]:
    """One line when the channel's table does not exist, else one per column it names that
    the table lacks."""
    where = f"{channel.source}: channel {channel.name!r}"
    name = f"{channel.schema}.{channel.table}"
    info = tables.get((channel.schema, channel.table))
    if info is None:
        return [f"{where}: table {name} does not exist"]
    wanted = set(channel.columns or ()) | set(channel.filterable or ())
    if channel.partition is not None:
        wanted.add(channel.partition.column)
    wanted.update(mine for lookup in channel.lookups for mine, _ in lookup.key)
    problems = [f"{where}: column {column!r} is not in {name}"
                for column in sorted(wanted - info.columns)]
    for lookup in channel.lookups:
        looked_up = f"{lookup.schema}.{lookup.table}"
        found = tables.get((lookup.schema, lookup.table))
        if found is None:
            problems.append(f"{where}: lookup {lookup.name!r}: table {looked_up} does not exist")
            continue
        needed = {theirs for _, theirs in lookup.key} | set(lookup.columns)
        problems.extend(f"{where}: lookup {lookup.name!r}: column {column!r} is not in "
                        f"{looked_up}" for column in sorted(needed - found.columns))
    return problems


def identity_problems(channels: Iterable[Channel], tables: dict[Table, TableInfo]) -> list[str]:
    """One line per channel whose table's replica identity falls short (see
    ``identity_problem``); channels whose table does not exist are left out."""
    problems = []
    for channel in channels:
        info = tables.get((channel.schema, channel.table))
        if info is not None and (line := identity_problem(channel, info.identity, info.key)):
            problems.append(line)
    return problems


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


def roles_problems(roles: RolesConfig, tables: dict[Table, TableInfo]) -> list[str]:
    """The ``[roles]`` table: that it exists with its two columns, and that its DELETEs carry
    both (a revocation the gateway cannot attribute would go unseen)."""
    where = f"{roles.source}: [roles]"
    table = f"{_ident(roles.schema)}.{_ident(roles.table)}"
    info = tables.get((roles.schema, roles.table))
    if info is None:
        return [f"{where}: table {table} does not exist"]
    wanted = (roles.user_column, roles.role_column)
    problems = [f"{where}: column {column!r} is not in {table}"
                for column in wanted if column not in info.columns]
    if not problems and info.identity != "f" and not set(wanted) <= info.key:
        problems.append(
            f"{where}: a DELETE from {table} would not say whose role it revoked (its replica "
            f"identity lacks {', '.join(c for c in wanted if c not in info.key)}). Make "
            f"({', '.join(wanted)}) the primary key, or run: ALTER TABLE {table} REPLICA "
            "IDENTITY FULL;"
        )
    return problems


def refuse_unusable_roles(dsn: str, roles: RolesConfig, publication: str) -> None:
    """At start: ``ConfigError`` when the ``[roles]`` table cannot serve (``roles_problems``),
    or when an existing ``publication`` lacks it (or DELETEs, TRUNCATEs...): revocations would
    never arrive, and cached roles would never end. A database that cannot be reached now is
    the source's business: skipped, and logged."""
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        log.warning("the roles table was not checked (the database is not reachable): %s",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
        return
    table = (roles.schema, roles.table)
    with conn:
        rows = conn.execute(TABLES_QUERY, ([roles.schema], [roles.table])).fetchall()
        row = conn.execute(PUBLICATION_QUERY, (publication,)).fetchone()
    problems = roles_problems(roles, read_tables(rows))
    found = Publication.from_row(publication, row)
    if not problems and found is not None:
        problems = found.problems([table])
    if problems:
        raise ConfigError("; ".join(problems))


async def warn_about_identity(conn: AsyncConn, channels: Sequence[Channel]) -> None:
    """Log each channel whose table's replica identity falls short."""
    if not channels:
        return
    cur = await conn.execute(TABLES_QUERY, tables_params(channels))
    for line in identity_problems(channels, read_tables(await cur.fetchall())):
        log.warning("replica identity: %s", line)


def _names(value: object) -> frozenset[str]:
    return frozenset(str(v) for v in value) if isinstance(value, list) else frozenset()


def _ident(name: str) -> str:
    return name if _PLAIN.fullmatch(name) else '"' + name.replace('"', '""') + '"'


# -- row-level security --------------------------------------------------------------------------

POLICIES_QUERY = (
    "SELECT n.nspname::text, c.relname::text, c.relrowsecurity, p.polname::text, "
    "p.polpermissive, ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END "
    "FROM unnest(p.polroles) r), p.polcmd::text, pg_get_expr(p.polqual, p.polrelid) "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "LEFT JOIN pg_policy p ON p.polrelid = c.oid "
    "WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
)
_COMMANDS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}


def read_policies(
    rows: Iterable[Sequence[object]],
) -> tuple[frozenset[Table], list[policies.Policy]]:
    """``POLICIES_QUERY`` rows: the tables with row security on, and their policies."""
    secured: set[Table] = set()
    found = []
    for schema, table, enabled, name, permissive, roles, command, qual in rows:
        key = (str(schema), str(table))
        if enabled:
            secured.add(key)
        if name is not None:
            found.append(policies.Policy(
                key, str(name), bool(permissive), frozenset(str(r) for r in _list(roles)),
                _COMMANDS.get(str(command), str(command)), None if qual is None else str(qual),
            ))
    return frozenset(secured), found


def rls_problems(conn: SyncConn, channels: Sequence[Channel]) -> list[str]:
    """``policies.rls_problems`` for the channels' tables and looked-up tables, read now."""
    rows = conn.execute(POLICIES_QUERY, tables_params(channels)).fetchall()
    secured, found = read_policies(rows)
    return policies.rls_problems(channels, secured, found)


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def refuse_unproved_rls(dsn: str, channels: Sequence[Channel]) -> None:
    """At start: ``ConfigError`` (one line per channel, with the fix) when a channel shows rows
    that row-level security may not let its subscribers read. A database that cannot be
    reached now is the source's business: skipped, and logged."""
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        log.warning("row-level security not checked (the database is not reachable): %s",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
        return
    with conn:
        problems = rls_problems(conn, channels)
    if problems:
        raise ConfigError("; ".join(problems))
