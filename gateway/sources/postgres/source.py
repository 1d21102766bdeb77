"""The Postgres source: a logical slot read with pgoutput, from asyncio with psycopg 3.

See ``sources/base.py`` for the delivery contract; here a transaction is confirmed
(``flush_lsn`` = its end LSN) only after the sink returned for the batch that contained its
commit, and never beyond the oldest commit the keeper still holds: the slot keeps the node's
history durable, so a restarted gateway replays it.

Batches: several small transactions go out together (up to ``MAX_BATCH`` changes); a
transaction of more than ``transaction_part`` changes goes out in parts of that many (with
what came before it), the last part ending at its commit. The
default keeps parts small (a client sees the first rows of a large transaction soon); enrichment
raises it (``RTGW_ENRICH_BATCH_MAX``) so that a transaction is looked up whole, at the cost of
holding that many changes in memory (about 0.5 KB each for the demo's orders).

Positions are the commit LSN and the change's place in its transaction; the position space is
the database system and timeline (``stream_id``), so they mean the same after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from gateway.bus.base import BusUnavailable
from gateway.changes import PLACE_BITS, Item
from gateway.channels import Channel
from gateway.encoding import dumps
from gateway.sources.base import (
    Backoff,
    ChangeSink,
    GapSink,
    Keeper,
    Supervised,
    Supervisor,
    first_line,
)
from gateway.sources.postgres import provisioning
from gateway.sources.postgres.decoder import Decoder
from gateway.sources.postgres.emitter import Emitter
from gateway.sources.postgres.lag import LagSampler
from gateway.sources.postgres.messages import (
    HISTORY_PREFIX,
    PUBLISH_PREFIX,
    Commit,
    Relation,
    parse_message,
)
from gateway.sources.postgres.stream import SESSION_OPTIONS, ReplicationError, Stream
from gateway.sources.postgres.types import TYPE_QUERY, PgType, TypeRegistry

__all__ = ["PostgresSource", "PostgresSourceConfig", "ReplicationError"]

log = logging.getLogger("rtgw.source.postgres")

MAX_BATCH = 512
_EMIT = "SELECT pg_logical_emit_message(true, %s, %s::bytea)"


def _describe(exc: BaseException) -> str:
    """``code: first line of the message``, for ``last_error`` and /readyz."""
    text = first_line(exc)
    if isinstance(exc, BusUnavailable):
        return f"{exc.code}: {text}"
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
    # The channels whose needs are checked against their tables' replica identity at start.
    channels: tuple[Channel, ...] = ()
    status_interval_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    lag_interval_s: float = 5.0  # how often the slot's lag is sampled
    # "persistent": a slot that keeps WAL while the gateway is down (nothing is lost);
    # "temporary": live-only, the slot lives with the connection (no WAL kept, changes lost).
    slot_mode: Literal["persistent", "temporary"] = "persistent"
    # The changes of one transaction handed on at once (more: in parts of this many).
    transaction_part: int = MAX_BATCH
    # Several gateways share the slot (the Redis bus): while another holds it, try again this
    # often (the slot admits one reader, which elects the owner), and quietly.
    standby_retry_s: float | None = None


class PostgresSource(Supervised):
    """A logical slot read with pgoutput. Creates the publication (for the channel tables) and
    the slot when they are missing; works with existing ones. An invalidated slot (WAL removed
    under ``max_slot_wal_keep_size``) is dropped and recreated, and the gap reported. The first
    session warns (logs) about each channel its table's replica identity cannot serve."""

    def __init__(self, config: PostgresSourceConfig) -> None:
        self.config = config
        self._supervisor = Supervisor(
            Backoff(config.backoff_initial_s, config.backoff_max_s),
            self._failed,
            log,
            "replication stopped",
            (psycopg.Error, ReplicationError, BusUnavailable, OSError),
            expected=self._standing_by,
        )
        self._types = TypeRegistry()
        self._lag = LagSampler(config.dsn, config.slot, config.lag_interval_s)
        self.confirmed_lsn = 0  # the last LSN confirmed to the server
        self._on_gap: GapSink | None = None
        self._keeper: Keeper | None = None
        self._emitter = Emitter(config.dsn, PUBLISH_PREFIX)
        self._slot_invalid = False
        self._unbacked_until = 0  # the slot was confirmed this far past the history kept
        self._identity_checked = False

    @property
    def lag_bytes(self) -> float | None:
        return self._lag.lag_bytes

    async def run(
        self, sink: ChangeSink, on_gap: GapSink | None = None, keeper: Keeper | None = None
    ) -> None:
        """Stream (see ``Source.run``), and sample the slot's lag meanwhile."""
        self._on_gap, self._keeper = on_gap, keeper
        lag = asyncio.create_task(self._lag.run(), name="rtgw-lag")
        try:
            await self._supervisor.run(lambda: self._session(sink))
        finally:
            lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag
            await self._emitter.close()

    async def emit(self, *contents: bytes) -> None:
        """Write transactional logical decoding messages with rtgw's prefix, in one transaction
        (grouped with other calls': ``Emitter``): they reach the stream in commit order with
        the changes, and stay in the slot like them. Any gateway on the database may write
        them (the node checks that changes flow to it): the one that owns the slot reads them
        back."""
        await self._emitter.emit(contents)

    async def note(self, history: dict[str, Any]) -> None:
        """Write the history note as a transactional message with the history prefix: the
        next process replays it with the history the slot keeps. Best effort (logged)."""
        if self.config.slot_mode == "temporary" or not self._supervisor.sessions:
            return  # nothing will be replayed
        needed = None if self._keeper is None else self._keeper.oldest_needed()
        if needed is not None and needed < self._unbacked_until:
            log.info("no history note: the slot was confirmed past the history kept")
            return
        content = dumps({"confirmed": self.confirmed_lsn, "history": history})
        try:
            async with await psycopg.AsyncConnection.connect(
                self.config.dsn, autocommit=True, connect_timeout=5
            ) as conn:
                await conn.execute(_EMIT, (HISTORY_PREFIX, content))
        except psycopg.Error as exc:
            log.warning("could not leave the history note: %s", _describe(exc))

    def _standing_by(self, exc: Exception) -> bool:
        """Another gateway holds the slot and this one stands by for it."""
        return (
            self.config.standby_retry_s is not None
            and isinstance(exc, ReplicationError) and exc.code == "slot_in_use"
        )

    def _failed(self, exc: Exception) -> str:
        if isinstance(exc, ReplicationError) and exc.code == "slot_invalidated":
            self._slot_invalid = True
            # Recreate the slot now: every moment loses changes.
            self._supervisor.backoff.retry_at_once()
        elif self.config.standby_retry_s is not None and (
            self._standing_by(exc) or isinstance(exc, BusUnavailable)
        ):  # try again soon: a standby takes over within the bound
            self._supervisor.backoff.retry_in(self.config.standby_retry_s)
        return _describe(exc)

    def _gap(self, reason: str) -> None:
        log.warning("changes to %d tables may have been lost: %s", len(self.config.tables), reason)
        if self._on_gap is not None:
            self._on_gap(self.config.tables, reason)

    async def _load_types(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        cur = await conn.execute(TYPE_QUERY)
        self._types.update(PgType(*row) for row in await cur.fetchall())  # type: ignore[arg-type]

    async def _session(self, sink: ChangeSink) -> None:
        cfg = self.config
        meta = await psycopg.AsyncConnection.connect(cfg.dsn, autocommit=True)
        try:
            await provisioning.ensure_publication(meta, cfg.publication, cfg.tables)
            gap = None
            if cfg.slot_mode == "persistent":  # a temporary one is made by the stream itself
                gap = await provisioning.ensure_slot(
                    meta, cfg.slot, invalid=self._slot_invalid,
                    streamed=self._supervisor.sessions > 0,
                )
                self._slot_invalid = False
            if not self._identity_checked:
                await provisioning.warn_about_identity(meta, cfg.channels)
                self._identity_checked = True
            await self._load_types(meta)
            slot = await provisioning.read_slot(meta, cfg.slot)
            resume_at = 0 if slot is None else slot.confirmed_flush
            repl = await psycopg.AsyncConnection.connect(
                cfg.dsn, autocommit=True, replication="database", options=SESSION_OPTIONS
            )
            try:
                stream = Stream(repl.pgconn, cfg.status_interval_s)
                try:
                    system_id, timeline, tip = await stream.identify_system()
                    if cfg.slot_mode == "temporary":
                        await stream.command(provisioning.temporary_slot_command(cfg.slot))
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

    def _confirm(self, stream: Stream, lsn: int) -> None:
        """Confirm ``lsn``, but not beyond the oldest commit the keeper still holds."""
        needed = None if self._keeper is None else self._keeper.oldest_needed()
        stream.confirm(lsn if needed is None else min(lsn, needed))

    def _confirm_all(self, stream: Stream, lsn: int) -> None:
        """The server waits for everything it sent to be confirmed (a fast shutdown waits for
        nothing else): confirm ``lsn`` even past the history the slot keeps for a restart of
        the gateway. While this process runs nothing is lost (its history is in memory); the
        slot no longer backs what is older than ``lsn``, so no history note is left for a
        next process that would claim it."""
        stream.pinged = False
        needed = None if self._keeper is None else self._keeper.oldest_needed()
        if needed is not None and needed < lsn:
            self._unbacked_until = max(self._unbacked_until, lsn)
            log.info("the server asked for everything sent to be confirmed (a shutdown?): "
                     "confirmed past the history kept; a gateway restart cannot replay it")
        stream.confirm(lsn)

    async def _pump(
        self,
        stream: Stream,
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
        part = 0  # changes of the current transaction in ``batch``
        ack: int | None = None
        handed_on = 0  # the end of the last transaction read
        while True:
            payload = stream.next_payload()
            if payload is None:  # nothing buffered: hand on what we have, then wait
                # Only between transactions (a large one goes out in parts, see the module):
                # rows handed on before their COMMIT is read could not be confirmed by a stop
                # that comes next, and would be replayed after a clean restart.
                if not decoder.in_transaction:
                    if batch:
                        await sink(batch)
                        batch = []
                    if stream.pinged:
                        self._confirm_all(stream, max(ack or 0, stream.idle_position))
                        ack = None
                    elif ack is not None:
                        self._confirm(stream, ack)
                        ack = None
                    elif stream.idle_position:
                        self._confirm(stream, stream.idle_position)
                    if backlog_until is not None and max(
                        handed_on, stream.idle_position
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
            items = decoder.feed(message)
            batch.extend(items)
            if isinstance(message, Commit):
                ack = handed_on = message.end_lsn
                part = 0
                if len(batch) >= MAX_BATCH:
                    await sink(batch)
                    batch = []
                    self._confirm(stream, ack)
                    ack = None
            else:
                part += len(items)
                if part >= self.config.transaction_part:  # of this transaction, not the batch
                    await sink(batch)
                    batch = []
                    part = 0
