"""Published events written into the WAL in groups (group commit).

One write runs at a time; events handed in meanwhile wait and go out together in the next
write: one statement, one transaction, their messages in the order they were handed in. So a
burst of publishes costs a few commits instead of one each, and the events of one call share
a transaction (all are written, or none). At most ``max_waiting_bytes`` of events wait, and a
write that the database does not answer within ``write_timeout_s`` is given up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import psycopg

from gateway.errors import GatewayError
from gateway.sources.base import first_line

log = logging.getLogger("rtgw.source.postgres")

MAX_WAITING_BYTES = 16 * 1024 * 1024
WRITE_TIMEOUT_S = 5.0  # a connect and a statement, together
CLOSE_TIMEOUT_S = 1.0  # for a connection given up on
# An aggregate over the array's rows: the messages are written in the array's order, and one
# row comes back. The array goes in binary (%b): a third of the client CPU of its text form.
_EMIT_ALL = (
    "SELECT count(pg_logical_emit_message(true, %s, content)) FROM unnest(%b::bytea[]) AS content"
)


def _retrieved(written: asyncio.Future[None]) -> None:
    """Mark a group's failure as seen: every request that waited for it may have gone."""
    if not written.cancelled():
        written.exception()


class Emitter:
    """Writes transactional logical decoding messages with ``prefix`` on a connection of its
    own (opened on first use, reopened after a failure)."""

    def __init__(
        self, dsn: str, prefix: str, max_waiting_bytes: int = MAX_WAITING_BYTES,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self._dsn, self._prefix = dsn, prefix
        self.max_waiting_bytes = max_waiting_bytes
        self.write_timeout_s = write_timeout_s
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._waiting: list[bytes] = []
        self._waiting_bytes = 0
        self._written: asyncio.Future[None] | None = None  # the waiting group's outcome
        self._writer: asyncio.Task[None] | None = None
        self.writes = 0  # statements run (each one transaction)

    async def emit(self, contents: Sequence[bytes]) -> None:
        """Write ``contents`` in one transaction, in order, and return once it committed.
        ``not_ready`` when the database did not take them, or too many bytes already wait."""
        if not contents:
            return
        size = sum(len(content) for content in contents)
        if self._waiting_bytes + size > self.max_waiting_bytes:
            raise GatewayError(
                "not_ready",
                f"more than {self.max_waiting_bytes} bytes of published events wait to be "
                "written to the database",
            )
        written = self._written
        if written is None:
            written = self._written = asyncio.get_running_loop().create_future()
            written.add_done_callback(_retrieved)
        self._waiting.extend(contents)
        self._waiting_bytes += size
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_groups(), name="rtgw-emit")
        await asyncio.shield(written)  # a request that goes away leaves its group's write be

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _write_groups(self) -> None:
        written: asyncio.Future[None] | None = None
        try:
            while self._waiting:
                contents, written = self._waiting, self._written
                self._waiting, self._waiting_bytes, self._written = [], 0, None
                assert written is not None
                try:
                    await self._write(contents)
                except Exception as exc:  # not_ready; anything else is a bug: internal_error
                    written.set_exception(exc)
                else:
                    written.set_result(None)
        finally:
            self._writer = None
            stopped = GatewayError("not_ready", "the gateway is stopping")
            for group in (written, self._written):
                if group is not None and not group.done():
                    group.set_exception(stopped)
            self._waiting, self._waiting_bytes, self._written = [], 0, None

    async def _write(self, contents: list[bytes]) -> None:
        try:
            async with asyncio.timeout(self.write_timeout_s):
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(
                        self._dsn, autocommit=True
                    )
                await self._conn.execute(_EMIT_ALL, (self._prefix, contents))
            self.writes += 1
        except psycopg.Error as exc:
            log.warning("publish failed: %s", first_line(exc))
            raise GatewayError("not_ready", "the database did not take the event") from None
        except TimeoutError:
            log.warning("publish: the database did not answer within %g s", self.write_timeout_s)
            await self._give_up_connection()
            raise GatewayError(
                "not_ready",
                f"the database did not answer within {self.write_timeout_s:g} s; the event may "
                "still be published",
            ) from None

    async def _give_up_connection(self) -> None:
        """Close a connection whose state is unknown (the next write opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await conn.close()
