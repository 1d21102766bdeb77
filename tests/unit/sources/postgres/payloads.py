"""Hand-built pgoutput v1 payloads and the types and relations the tests use."""

from __future__ import annotations

import struct
from typing import Any

from gateway.changes import POSTGRES_EPOCH_MICROS
from gateway.sources.postgres.messages import UNCHANGED
from gateway.sources.postgres.types import PgType

# 2024-01-02T03:04:05.123456Z
UNIX_US = 1_704_164_645_123_456


PG_US = UNIX_US - POSTGRES_EPOCH_MICROS


MOOD, MOOD_ARRAY, POSINT, POSINT_ARRAY, EVEN_POSINT, INTS, CITEXT = (
    16490,
    16489,
    16496,
    16495,
    16500,
    16510,
    16385,
)


USER_TYPES = [
    PgType(MOOD, "mood", "e", 0, 0),
    PgType(MOOD_ARRAY, "_mood", "b", MOOD, 0),
    PgType(POSINT, "posint", "d", 0, 23),
    PgType(POSINT_ARRAY, "_posint", "b", POSINT, 0),
    PgType(EVEN_POSINT, "even_posint", "d", 0, POSINT),  # a domain over a domain
    PgType(INTS, "ints", "d", 0, 1007),  # a domain over int4[]
    PgType(CITEXT, "citext", "b", 0, 0),
]


# --- payload builders ------------------------------------------------------------------------


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def begin(final_lsn: int, pg_time_us: int = PG_US, xid: int = 730) -> bytes:
    return b"B" + struct.pack(">QqI", final_lsn, pg_time_us, xid)


def commit(commit_lsn: int, end_lsn: int, pg_time_us: int = PG_US) -> bytes:
    return b"C" + struct.pack(">BQQq", 0, commit_lsn, end_lsn, pg_time_us)


def relation(
    oid: int,
    table: str,
    columns: list[tuple[str, int, bool]],
    *,
    schema: str = "public",
    identity: bytes = b"d",
) -> bytes:
    body = b"".join(
        bytes([1 if key else 0]) + cstr(name) + struct.pack(">Ii", type_oid, -1)
        for name, type_oid, key in columns
    )
    return (
        b"R"
        + struct.pack(">I", oid)
        + cstr(schema)
        + cstr(table)
        + identity
        + struct.pack(">h", len(columns))
        + body
    )


def tup(*values: Any) -> bytes:
    out = [struct.pack(">h", len(values))]
    for value in values:
        if value is None:
            out.append(b"n")
        elif value is UNCHANGED:
            out.append(b"u")
        elif isinstance(value, bytes):
            out.append(b"b" + struct.pack(">i", len(value)) + value)
        else:
            raw = str(value).encode()
            out.append(b"t" + struct.pack(">i", len(raw)) + raw)
    return b"".join(out)


def insert(oid: int, *values: Any) -> bytes:
    return b"I" + struct.pack(">I", oid) + b"N" + tup(*values)


def update(
    oid: int, new: tuple[Any, ...], old: tuple[Any, ...] | None = None, kind: bytes = b"O"
) -> bytes:
    head = b"U" + struct.pack(">I", oid)
    if old is not None:
        head += kind + tup(*old)
    return head + b"N" + tup(*new)


def delete(oid: int, old: tuple[Any, ...], kind: bytes = b"K") -> bytes:
    return b"D" + struct.pack(">I", oid) + kind + tup(*old)


def truncate(oids: list[int], options: int = 0) -> bytes:
    return b"T" + struct.pack(">IB", len(oids), options) + struct.pack(f">{len(oids)}I", *oids)


def logical_message(prefix: str, content: bytes, transactional: bool = True) -> bytes:
    flags = b"\x01" if transactional else b"\x00"
    return (b"M" + flags + struct.pack(">Q", 0x99) + cstr(prefix)
            + struct.pack(">i", len(content)) + content)


# --- relations -------------------------------------------------------------------------------

ACCOUNTS = 16498  # id int8 key, email text, bio text (TOASTable), score float8
ACCOUNT_COLUMNS = [
    ("id", 20, True),
    ("email", 25, False),
    ("bio", 25, False),
    ("score", 701, False),
]
ORDERS = 16510
LSN = 0x15CE7D8
