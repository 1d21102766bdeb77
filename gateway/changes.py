"""Change: one normalized row change, as every source produces it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

Row = dict[str, Any]

POSTGRES_EPOCH_MICROS = 946_684_800_000_000  # 2000-01-01 in Unix microseconds
PLACE_BITS = 20  # a change's place in its transaction, below the commit LSN in a position


class Op(StrEnum):
    INSERT = "INSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    TRUNCATE = "TRUNCATE"


@dataclass(slots=True, order=True, unsafe_hash=True)
class ChangeId:
    """Unique, ordered id: the commit LSN of the transaction and the change's place in it.
    Never changed once made, and hashed by its fields; not ``frozen``, as one is made per change
    and a frozen one took about three times as long to build."""

    lsn: int
    seq: int

    def __str__(self) -> str:
        return "%016X:%06d" % (self.lsn, self.seq)  # noqa: UP031 - faster than an f-string

    @property
    def position(self) -> int:
        """One increasing integer for the stream: ``lsn * 2**20 + seq``. Consecutive commit
        records are at least 32 bytes apart, so positions stay increasing and unique for
        transactions of up to 32 * 2**20 changes."""
        return (self.lsn << PLACE_BITS) + self.seq

    @classmethod
    def parse(cls, text: str) -> ChangeId:
        lsn, _, seq = text.partition(":")
        return cls(int(lsn, 16), int(seq))


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # the Postgres type name, e.g. "int8", "_text", "timestamptz"


@dataclass(slots=True)
class Change:
    """One committed row change. ``new`` for INSERT/UPDATE, ``old`` for UPDATE/DELETE when the
    replica identity provides it. ``unchanged`` lists TOASTed columns absent from ``new``.
    Never changed once made (not ``frozen``: one is made per row, and a frozen dataclass takes
    about five times as long to build)."""

    id: ChangeId
    schema: str
    table: str
    op: Op
    commit_time_us: int  # Unix microseconds of the commit
    columns: tuple[Column, ...]
    new: Row | None = None
    old: Row | None = None
    unchanged: tuple[str, ...] = field(default=())

    @property
    def commit_time(self) -> str:
        """Commit timestamp as ISO 8601 UTC with millisecond precision (truncated)."""
        micros = self.commit_time_us
        return _utc_second(micros // 1_000_000) + _MILLIS[micros // 1000 % 1000]

    @property
    def row(self) -> Row | None:
        """The row that decides routing: ``new`` when present, otherwise ``old``."""
        return self.new if self.new is not None else self.old


_MILLIS = tuple(f".{millis:03d}Z" for millis in range(1000))  # formatting one cost 300 ns


@lru_cache(maxsize=64)
def _utc_second(seconds: int) -> str:
    """``2026-11-30T05:00:00`` for Unix ``seconds``; cached, as changes commit many a second."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


@dataclass(frozen=True, slots=True)
class Published:
    """An application event published through the gateway (``POST /v1/publish``). The source
    carries it like a change (Postgres: a transactional logical decoding message), so it is
    ordered with the changes, numbered the same way and replayed after a restart."""

    id: ChangeId
    commit_time_us: int
    content: bytes  # JSON {"channel", "base", "message"}, see gateway.publish


@dataclass(frozen=True, slots=True)
class HistoryNote:
    """What a stopping gateway wrote into the stream about its history (how far each
    partition's events had been dropped), so the next process can resume quiet partitions.
    See ``gateway.history.History.snapshot``."""

    id: ChangeId
    commit_time_us: int
    content: bytes


Item = Change | Published | HistoryNote  # what a source hands on


@dataclass(frozen=True, slots=True)
class RoleChange:
    """A change to the roles table (``[roles]``), as it travels with the stream: ``role``
    granted to or revoked from ``user``; ``user`` None: every role of every user was revoked
    (a TRUNCATE). Plain strings, so every bus can carry it."""

    user: str | None
    role: str | None
    granted: bool

    def applied_to(self, roles: frozenset[str]) -> frozenset[str]:
        """A user's roles after this change (the caller checks it is about that user)."""
        if self.user is None:
            return frozenset()
        assert self.role is not None
        return roles | {self.role} if self.granted else roles - {self.role}
