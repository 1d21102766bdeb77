"""How far the slot is behind: bytes of WAL between the server's current position and the slot's
confirmed one, sampled periodically on one long-lived connection of its own."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import psycopg

log = logging.getLogger("rtgw.source.postgres")

LAG_QUERY = (
    "SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots "
    "WHERE slot_name = %s"
)


@dataclass(slots=True)
class LagSampler:
    """Samples the slot's lag every ``interval_s`` while ``run`` runs (every 0.5 s while it is
    unknown); ``lag_bytes`` is None when unknown: not sampled yet, no such slot, the database
    is down, or ``run`` ended."""

    dsn: str
    slot: str
    interval_s: float = 5.0
    lag_bytes: float | None = None
    _conn: psycopg.AsyncConnection[tuple[object, ...]] | None = field(default=None, repr=False)

    async def run(self) -> None:
        """Sample until cancelled; closes its connection when it ends."""
        try:
            while True:
                await self._sample()
                await asyncio.sleep(self.interval_s if self.lag_bytes is not None else 0.5)
        finally:
            self.lag_bytes = None
            if self._conn is not None:
                await self._conn.close()
                self._conn = None

    async def _sample(self) -> None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, connect_timeout=5
                )
            cur = await self._conn.execute(LAG_QUERY, (self.slot,))
            row = await cur.fetchone()
            self.lag_bytes = None if row is None or row[0] is None else float(str(row[0]))
        except (psycopg.Error, OSError) as exc:
            log.debug("replication lag sample failed: %s", exc)
            self.lag_bytes = None
            if self._conn is not None:
                await self._conn.close()
                self._conn = None
