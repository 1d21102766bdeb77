"""Postgres logical replication (pgoutput) streamed from asyncio with psycopg 3.

psycopg 3 has no replication API, so the COPY BOTH stream is driven through libpq
(``conn.pgconn``) with ``loop.add_reader`` on its socket. See ``sources/base.py`` for the
delivery contract; here a transaction is confirmed (``flush_lsn`` = its end LSN) only after the
sink returned for the batch that contained its commit, and never beyond the oldest commit the
keeper still holds: the slot keeps the node's history durable, so a restarted gateway replays it.

Positions are the commit LSN and the change's place in its transaction; the position space is
the database system and timeline (``stream_id``), so they mean the same after a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import pq, sql

from gateway.changes import PLACE_BITS, POSTGRES_EPOCH_MICROS, Item
from gateway.encoding import dumps
from gateway.errors import GatewayError
from gateway.sources.base import Backoff, ChangeSink, GapSink, Keeper, Supervisor, first_line
from gateway.sources.lsn import format_lsn, parse_lsn
from gateway.sources.pgoutput import (
    HISTORY_PREFIX,
    PUBLISH_PREFIX,
    TYPE_QUERY,
    Commit,
    Decoder,
    PgType,
    Relation,
    TypeRegistry,
    parse_message,
)

log = logging.getLogger("rtgw.source.postgres")

# Text output follows the session's settings; pin them so values decode the same everywhere.
SESSION_OPTIONS = (
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 -c extra_float_digits=3"
)
_KEEPALIVE = struct.Struct("!QQB")
_STATUS = struct.Struct("!cQQQQB")
MAX_BATCH = 512
FINISH_TIMEOUT_S = 2.0  # how long a stop waits for the server to end the COPY


SLOT_IN_USE = "55006"  # "replication slot ... is active for PID n"
NOT_IN_PREREQUISITE_STATE = "55000"  # "... has been invalidated due to "wal_removed""


class ReplicationError(Exception):
    """The server ended or refused the replication stream. ``code`` is stable:
    ``slot_in_use``, ``slot_invalidated`` or ``replication_failed``."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate

    @property
    def code(self) -> str:
        if self.sqlstate == SLOT_IN_USE:
            return "slot_in_use"
        if self.sqlstate == NOT_IN_PREREQUISITE_STATE and "invalidated" in str(self):
            return "slot_invalidated"
        return "replication_failed"


def _describe(exc: BaseException) -> str:
    """``code: first line of the message``, for ``last_error`` and /readyz."""
    text = first_line(exc)
    if isinstance(exc, ReplicationError):
        if exc.code == "slot_in_use":
            text += " (another process holds the slot; retrying with backoff)"
        return f"{exc.code}: {text}"
    if isinstance(exc, psycopg.OperationalError | OSError):
        return f"database_unavailable: {text}"
    return f"replication_failed: {text}"


@dataclass(frozen=True, slots=True)
class PostgresSourceConfig:
    dsn: str
    slot: str = "rtgw"
    publication: str = "rtgw"
    tables: tuple[tuple[str, str], ...] = ()
    status_interval_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # "persistent": a slot that keeps WAL while the gateway is down (nothing is lost);
    # "temporary": live-only, the slot lives with the connection (no WAL kept, changes lost).
    slot_mode: Literal["persistent", "temporary"] = "persistent"


class PostgresSource:
    """A logical slot read with pgoutput. Creates the publication (for the channel tables) and
    the slot when they are missing; works with existing ones. An invalidated slot (WAL removed
    under ``max_slot_wal_keep_size``) is dropped and recreated, and the gap reported."""

    def __init__(self, config: PostgresSourceConfig) -> None:
        self.config = config
        self._supervisor = Supervisor(
            Backoff(config.backoff_initial_s, config.backoff_max_s),
            self._failed,
            log,
            "replication stopped",
            (psycopg.Error, ReplicationError, OSError),
        )
        self._types = TypeRegistry()
        self.confirmed_lsn = 0  # the last LSN confirmed to the server
        self._on_gap: GapSink | None = None
        self._keeper: Keeper | None = None
        self._emitter: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._emit_lock = asyncio.Lock()
        self._slot_invalid = False

    @property
    def streaming(self) -> bool:
        return self._supervisor.streaming

    @property
    def last_error(self) -> str | None:
        return self._supervisor.last_error

    async def lag_bytes(self) -> int | None:
        """Bytes of WAL between the server's current position and the slot's confirmed one
        (None when the slot does not exist). Opens a short connection of its own."""
        async with await psycopg.AsyncConnection.connect(self.config.dsn, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT (pg_current_wal_insert_lsn() - confirmed_flush_lsn)::bigint "
                "FROM pg_replication_slots WHERE slot_name = %s",
                (self.config.slot,),
            )
            row = await cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def run(
        self, sink: ChangeSink, on_gap: GapSink | None = None, keeper: Keeper | None = None
    ) -> None:
        self._on_gap, self._keeper = on_gap, keeper
        try:
            await self._supervisor.run(lambda: self._session(sink))
        finally:
            if self._emitter is not None:
                await self._emitter.close()

    async def emit(self, content: bytes) -> None:
        """Write a transactional logical decoding message with rtgw's prefix: it reaches the
        stream in commit order with the changes, and stays in the slot like them."""
        if not self.streaming:
            raise GatewayError("not_ready", "the replication stream is not running")
        async with self._emit_lock:
            try:
                if self._emitter is None or self._emitter.closed:
                    self._emitter = await psycopg.AsyncConnection.connect(
                        self.config.dsn, autocommit=True
                    )
                await self._emitter.execute(
                    "SELECT pg_logical_emit_message(true, %s, %s::bytea)",
                    (PUBLISH_PREFIX, content),
                )
            except psycopg.Error as exc:
                log.warning("publish failed: %s", _describe(exc))
                raise GatewayError("not_ready", "the database did not take the event") from None

    async def note(self, history: dict[str, Any]) -> None:
        """Write the history note as a transactional message with the history prefix: the
        next process replays it with the history the slot keeps. Best effort (logged)."""
        if self.config.slot_mode == "temporary" or not self._supervisor.sessions:
            return  # nothing will be replayed
        content = dumps({"confirmed": self.confirmed_lsn, "history": history})
        try:
            async with await psycopg.AsyncConnection.connect(
                self.config.dsn, autocommit=True, connect_timeout=5
            ) as conn:
                await conn.execute(
                    "SELECT pg_logical_emit_message(true, %s, %s::bytea)",
                    (HISTORY_PREFIX, content),
                )
        except psycopg.Error as exc:
            log.warning("could not leave the history note: %s", _describe(exc))

    def _failed(self, exc: Exception) -> str:
        if isinstance(exc, ReplicationError) and exc.code == "slot_invalidated":
            self._slot_invalid = True
            # Recreate the slot now: every moment loses changes.
            self._supervisor.backoff.retry_at_once()
        return _describe(exc)

    def _gap(self, reason: str) -> None:
        log.warning("changes to %d tables may have been lost: %s", len(self.config.tables), reason)
        if self._on_gap is not None:
            self._on_gap(self.config.tables, reason)

    async def prepare(self) -> None:
        """Create the publication and the slot when they are missing."""
        async with await psycopg.AsyncConnection.connect(self.config.dsn, autocommit=True) as conn:
            gap = await self._prepare(conn)
        if gap is not None:
            self._gap(gap)

    async def _prepare(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> str | None:
        """Create what is missing. Returns why changes were lost, if the slot was recreated."""
        cfg = self.config
        cur = await conn.execute(
            "SELECT 1 FROM pg_publication WHERE pubname = %s", (cfg.publication,)
        )
        if await cur.fetchone() is None:
            tables = sql.SQL(", ").join(sql.Identifier(s, t) for s, t in cfg.tables)
            # Postgres 18 can publish stored generated columns; without this they are absent.
            options = sql.SQL(
                " WITH (publish_generated_columns = stored)"
                if conn.info.server_version >= 180000 else ""
            )
            await conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {}{}").format(
                    sql.Identifier(cfg.publication), tables, options
                )
            )
            log.info("created publication %s for %d tables", cfg.publication, len(cfg.tables))
        else:
            cur = await conn.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                (cfg.publication,),
            )
            published = {(str(s), str(t)) for s, t in await cur.fetchall()}
            for schema, table in cfg.tables:
                if (schema, table) not in published:
                    log.warning(
                        "publication %s does not include %s.%s; its changes will not arrive. "
                        "Run: ALTER PUBLICATION %s ADD TABLE %s.%s;",
                        cfg.publication, schema, table, cfg.publication, schema, table,
                    )
        if cfg.slot_mode == "temporary":
            return None  # created by the replication connection itself, see _session
        cur = await conn.execute(
            "SELECT plugin, wal_status FROM pg_replication_slots WHERE slot_name = %s", (cfg.slot,)
        )
        row = await cur.fetchone()
        gap = None
        if row is not None and (self._slot_invalid or row[1] == "lost"):
            await self._drop_slot(conn)
            row = None
            gap = ("slot_invalidated: the replication slot lost WAL it needed "
                   "(max_slot_wal_keep_size) and was recreated")
        elif row is None and self._supervisor.sessions:
            gap = ("slot_missing: the replication slot was dropped outside the gateway "
                   "and was recreated")
        if row is None:
            await conn.execute(
                "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (cfg.slot,)
            )
            log.info("created replication slot %s", cfg.slot)
        elif row[0] != "pgoutput":
            raise ReplicationError(f"slot {cfg.slot} uses plugin {row[0]}, not pgoutput")
        self._slot_invalid = False
        return gap

    async def _drop_slot(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        """Drop an invalidated slot; its walsender may take a moment to let go of it."""
        for _ in range(100):
            try:
                await conn.execute("SELECT pg_drop_replication_slot(%s)", (self.config.slot,))
            except psycopg.errors.ObjectInUse:
                await asyncio.sleep(0.05)
                continue
            except psycopg.errors.UndefinedObject:
                pass
            log.warning("dropped invalidated replication slot %s", self.config.slot)
            return
        raise ReplicationError(f"could not drop invalidated slot {self.config.slot}", SLOT_IN_USE)

    async def _load_types(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        cur = await conn.execute(TYPE_QUERY)
        self._types.update(PgType(*row) for row in await cur.fetchall())  # type: ignore[arg-type]

    async def _confirmed_flush(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> int:
        cur = await conn.execute(
            "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (self.config.slot,),
        )
        row = await cur.fetchone()
        return 0 if row is None or row[0] is None else int(str(row[0]))

    async def _session(self, sink: ChangeSink) -> None:
        cfg = self.config
        meta = await psycopg.AsyncConnection.connect(cfg.dsn, autocommit=True)
        try:
            gap = await self._prepare(meta)
            await self._load_types(meta)
            resume_at = await self._confirmed_flush(meta)
            repl = await psycopg.AsyncConnection.connect(
                cfg.dsn, autocommit=True, replication="database", options=SESSION_OPTIONS
            )
            try:
                stream = _Stream(repl.pgconn, cfg.status_interval_s)
                try:
                    system_id, timeline, tip = await stream.identify_system()
                    if cfg.slot_mode == "temporary":
                        await stream.command(
                            f'CREATE_REPLICATION_SLOT "{cfg.slot}" TEMPORARY LOGICAL pgoutput'
                        )
                        resume_at = tip
                    await stream.start(cfg.slot, cfg.publication)
                    if self._keeper is not None:
                        digest = hashlib.sha256(f"{system_id}/{timeline}".encode()).hexdigest()
                        self._keeper.started(digest[:8], (resume_at << PLACE_BITS) - 1)
                    self._supervisor.up()
                    log.info("streaming from %s slot %s", cfg.slot_mode, cfg.slot)
                    if cfg.slot_mode == "temporary" and self._supervisor.sessions > 1:
                        gap = ("live_only_reconnect: changes made while the gateway was "
                               "disconnected were not kept (RTGW_SLOT_MODE=temporary)")
                    if gap is not None:  # after ``started``: the gap ends where the slot starts
                        self._gap(gap)
                    await self._pump(stream, meta, sink, tip if resume_at < tip else None)
                finally:
                    self.confirmed_lsn = await stream.close()
            finally:
                await repl.close()
        finally:
            await meta.close()

    def _confirm(self, stream: _Stream, lsn: int) -> None:
        """Confirm ``lsn``, but not beyond the oldest commit the keeper still holds."""
        needed = None if self._keeper is None else self._keeper.oldest_needed()
        stream.confirm(lsn if needed is None else min(lsn, needed))

    async def _pump(
        self,
        stream: _Stream,
        meta: psycopg.AsyncConnection[tuple[object, ...]],
        sink: ChangeSink,
        backlog_until: int | None,
    ) -> None:
        """Decode and hand on until the stream ends. ``backlog_until``: the server's WAL position
        when the session began, if the slot was behind it (the keeper hears ``caught_up`` once
        the stream passed it), or None when there was nothing to catch up on."""
        if backlog_until is None and self._keeper is not None:
            self._keeper.caught_up()
        decoder = Decoder(self._types)
        batch: list[Item] = []
        ack: int | None = None
        while True:
            payload = stream.next_payload()
            if payload is None:  # nothing buffered: hand on what we have, then wait
                # Only between transactions (a large one still goes out every MAX_BATCH):
                # rows handed on before their COMMIT is read could not be confirmed by a stop
                # that comes next, and would be replayed after a clean restart.
                if not decoder.in_transaction:
                    if batch:
                        await sink(batch)
                        batch = []
                    if ack is not None:
                        self._confirm(stream, ack)
                        ack = None
                    elif stream.idle_position:
                        self._confirm(stream, stream.idle_position)
                    if backlog_until is not None and max(
                        stream.handed_on, stream.idle_position
                    ) >= backlog_until:
                        backlog_until = None
                        if self._keeper is not None:
                            self._keeper.caught_up()
                await stream.wait()
                continue
            message = parse_message(payload)
            if message is None:
                continue
            if isinstance(message, Relation) and decoder.missing_types(message):
                await self._load_types(meta)
            batch.extend(decoder.feed(message))
            if isinstance(message, Commit):
                ack = stream.handed_on = message.end_lsn
                if len(batch) >= MAX_BATCH:
                    await sink(batch)
                    batch = []
                    self._confirm(stream, ack)
                    ack = None
            elif len(batch) >= MAX_BATCH:
                await sink(batch)
                batch = []


def _raise_on_error(result: pq.abc.PGresult) -> None:
    if result.status == pq.ExecStatus.FATAL_ERROR:
        message = (result.error_message or b"").decode(errors="replace").strip()
        sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
        raise ReplicationError(message, sqlstate.decode() if sqlstate else None)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Stream:
    """The COPY BOTH half of the replication protocol over a non-blocking libpq connection."""

    def __init__(self, pgconn: pq.abc.PGconn, status_interval_s: float) -> None:
        self._pgconn = pgconn
        self._status_interval = status_interval_s
        self._readable = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._fd = pgconn.socket
        self._loop.add_reader(self._fd, self._readable.set)
        self.flushed = 0
        self.idle_position = 0  # a keepalive position that is safe to confirm when idle
        self.handed_on = 0  # the end of the last transaction read
        self._last_status = 0.0
        self._status_due = False

    async def start(self, slot: str, publication: str) -> None:
        command = (
            f'START_REPLICATION SLOT "{slot}" LOGICAL 0/0 '
            f"(proto_version '1', publication_names '{publication}', messages 'true')"
        )
        await self._send(command)
        if not await self._results(until_copy=True):
            raise ReplicationError("the server ended START_REPLICATION without a stream")

    async def identify_system(self) -> tuple[str, int, int]:
        """The database system id, the timeline and the current WAL flush position."""
        await self._send("IDENTIFY_SYSTEM")
        rows: list[pq.abc.PGresult] = []
        await self._results(until_copy=False, keep=rows)
        if not rows:
            raise ReplicationError("IDENTIFY_SYSTEM returned no row")
        system_id, timeline, position = (rows[0].get_value(0, i) or b"" for i in range(3))
        return system_id.decode(), int(timeline), parse_lsn(position.decode())

    async def command(self, command: str) -> None:
        """Run one replication command (simple query protocol) and wait for it to finish."""
        await self._send(command)
        await self._results(until_copy=False)

    async def _results(
        self, until_copy: bool, keep: list[pq.abc.PGresult] | None = None
    ) -> bool:
        """Read the command's results, raising on an error (results with rows go to ``keep``).
        True when the COPY BOTH stream began (and ``until_copy``), False when they ended."""
        while True:
            self._pgconn.consume_input()
            while not self._pgconn.is_busy():
                result = self._pgconn.get_result()
                if result is None:
                    return False
                if until_copy and result.status == pq.ExecStatus.COPY_BOTH:
                    return True
                _raise_on_error(result)
                if keep is not None and result.ntuples:
                    keep.append(result)
            await self._wait_readable(self._status_interval)

    async def _send(self, command: str) -> None:
        self._pgconn.send_query(command.encode())
        await self._flush()

    def next_payload(self) -> bytes | None:
        """The next pgoutput payload already buffered, or None. Handles keepalives itself."""
        pgconn = self._pgconn
        while True:
            size, data = pgconn.get_copy_data(1)
            if size == 0:
                return None
            if size < 0:
                result = pgconn.get_result()
                detail = result.error_message if result is not None else pgconn.error_message
                raise ReplicationError((detail or b"stream ended").decode(errors="replace").strip())
            kind = data[0]
            if kind == 0x77:  # 'w' XLogData: start, end and send time (8 bytes each), payload
                return bytes(data[25:])
            if kind == 0x6B:  # 'k' keepalive
                wal_end, _ts, reply = _KEEPALIVE.unpack_from(data, 1)
                self.idle_position = wal_end
                if reply:
                    self._status_due = True

    def confirm(self, lsn: int) -> None:
        if lsn > self.flushed:
            self.flushed = lsn
            self._status_due = self._status_due or time.monotonic() - self._last_status > 1.0

    async def wait(self) -> None:
        """Send a status update when due, then wait for data (or the next status interval)."""
        if self._status_due or time.monotonic() - self._last_status >= self._status_interval:
            self._send_status()
            await self._flush()
        await self._wait_readable(self._status_interval)
        self._pgconn.consume_input()

    async def close(self) -> int:
        """Best-effort final status (so a clean stop replays nothing), then end the COPY and
        detach; returns the last LSN confirmed to the server. Ending the COPY matters: closing a
        socket that still holds unread stream data makes the kernel reset the connection, and
        the server drops the status with it."""
        try:
            self._send_status()
            self._pgconn.put_copy_end()
            async with asyncio.timeout(FINISH_TIMEOUT_S):
                await self._flush()
                await self._discard_until_copy_ends()
        except (psycopg.Error, ReplicationError, OSError, TimeoutError):
            pass
        finally:
            self._loop.remove_reader(self._fd)
        return self.flushed

    async def _discard_until_copy_ends(self) -> None:
        pgconn = self._pgconn
        while True:
            pgconn.consume_input()
            size, _ = pgconn.get_copy_data(1)
            if size < 0:  # the server ended the COPY too
                while pgconn.get_result() is not None:
                    pass
                return
            if size == 0:
                await self._wait_readable(FINISH_TIMEOUT_S)

    def _send_status(self) -> None:
        flushed = self.flushed
        now = int(time.time() * 1_000_000) - POSTGRES_EPOCH_MICROS
        message = _STATUS.pack(b"r", flushed, flushed, flushed, now, 0)
        if self._pgconn.put_copy_data(message) != 1:
            raise ReplicationError("could not queue the standby status update")
        self._last_status = time.monotonic()
        self._status_due = False
        log.debug("confirmed %s", format_lsn(flushed))

    async def _flush(self) -> None:
        while self._pgconn.flush() == 1:
            writable: asyncio.Future[None] = self._loop.create_future()
            self._loop.add_writer(self._fd, _resolve, writable)
            try:
                async with asyncio.timeout(self._status_interval):
                    await writable
            finally:
                self._loop.remove_writer(self._fd)

    async def _wait_readable(self, wait_s: float) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # arrives just as the socket becomes readable, and the source would never stop.
        try:
            async with asyncio.timeout(wait_s):
                await self._readable.wait()
        except TimeoutError:
            return
        self._readable.clear()
