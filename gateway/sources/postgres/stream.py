"""The COPY BOTH half of the streaming replication protocol, over a non-blocking libpq
connection driven from asyncio (psycopg 3 has no replication API): ``conn.pgconn`` with
``loop.add_reader`` on its socket. It hands out pgoutput payloads, answers keepalives and sends
standby status updates for what its owner confirms.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time

import psycopg
from psycopg import pq

from gateway.changes import POSTGRES_EPOCH_MICROS
from gateway.errors import RtgwError

log = logging.getLogger("rtgw.source.postgres")

# Text output follows the session's settings; pin them so values decode the same everywhere.
SESSION_OPTIONS = (
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 -c extra_float_digits=3"
)
_KEEPALIVE = struct.Struct("!QQB")
_STATUS = struct.Struct("!cQQQQB")
FINISH_TIMEOUT_S = 2.0  # how long a stop waits for the server to end the COPY

SLOT_IN_USE = "55006"  # "replication slot ... is active for PID n"
NOT_IN_PREREQUISITE_STATE = "55000"  # "... has been invalidated due to "wal_removed""


def parse_lsn(text: str) -> int:
    """``16/B374D848`` -> an integer."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    """An integer -> ``16/B374D848``."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


class ReplicationError(RtgwError):
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


def _raise_on_error(result: pq.abc.PGresult) -> None:
    if result.status == pq.ExecStatus.FATAL_ERROR:
        message = (result.error_message or b"").decode(errors="replace").strip()
        sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
        raise ReplicationError(message, sqlstate.decode() if sqlstate else None)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Stream:
    """The COPY BOTH half of the replication protocol over a non-blocking libpq connection."""

    def __init__(self, pgconn: pq.abc.PGconn, status_interval_s: float) -> None:
        self._pgconn = pgconn
        self._status_interval = status_interval_s
        self._loop = asyncio.get_running_loop()
        self._fd = pgconn.socket
        self._flushed = 0  # the last position confirmed
        self.idle_position = 0  # a keepalive position that is safe to confirm when idle
        # The server asked for a reply: it waits until everything sent is confirmed (a
        # shutdown does, and so does a sender that heard nothing for half its timeout).
        self.pinged = False
        self._last_status = 0.0
        self._status_due = False
        self._readable: asyncio.Future[None] | None = None  # the wait for the socket, if any
        self._watching = False  # a reader is on the socket (see ``_wait_readable``)

    async def start(self, slot: str, publication: str) -> None:
        """Start streaming pgoutput v1 (with logical decoding messages) from the slot's
        confirmed position."""
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
                    self.pinged = True

    def confirm(self, lsn: int) -> None:
        """Confirm everything up to ``lsn`` (sent with the next status update; soon, when the
        last one is more than a second old). Never goes back."""
        if lsn > self._flushed:
            self._flushed = lsn
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
            self._watching = False
        return self._flushed

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
        flushed = self._flushed
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
        """Wait until the socket is readable, or ``wait_s``. Once per transaction at a low rate:
        one future that the reader or a timer resolves (an ``Event`` under ``asyncio.timeout``
        cost about 5 µs more per wait)."""
        # The reader stays on the socket after a wait, so that the next wait adds nothing (an
        # ``epoll_ctl`` each way per transaction, at a low rate). It goes when it fires with
        # nobody waiting: left on, it would fire on every turn of the loop while unread data
        # waits and the sink is busy (awaiting the bus, a lookup, a task queue), so the loop
        # would spin instead of sleeping. ``close`` removes it. (On asyncio's own loop, which
        # queues the reader's call, readiness reported before a wait began may end that wait
        # early; the pump then finds nothing buffered and waits again. uvloop, which ``rtgw
        # serve`` runs, calls the reader as the socket is polled.)
        # Not wait_for: on 3.11 wait_for can swallow a cancellation that arrives just as the
        # socket becomes readable, and the source would never stop; a cancelled task raises
        # here whether or not the future was resolved.
        loop = self._loop
        readable = self._readable = loop.create_future()
        if not self._watching:
            loop.add_reader(self._fd, self._on_readable)
            self._watching = True
        timer = loop.call_later(wait_s, _resolve, readable)
        try:
            await readable
        finally:
            timer.cancel()
            self._readable = None

    def _on_readable(self) -> None:
        readable = self._readable
        if readable is None:  # nobody waits: stop watching until the next wait
            self._loop.remove_reader(self._fd)
            self._watching = False
        elif not readable.done():
            readable.set_result(None)
