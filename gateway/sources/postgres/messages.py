"""pgoutput v1 messages, sans I/O: ``parse_message`` turns the payload of one XLogData message
(starting with the message-type byte) into one of the dataclasses below.

Wire format: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from gateway.changes import POSTGRES_EPOCH_MICROS
from gateway.errors import RtgwError


class DecodeError(RtgwError, ValueError):
    """A payload that is not valid pgoutput v1, or a change the decoder cannot place."""


class Unchanged(Enum):
    """The 'u' marker: an unchanged TOASTed value that the server did not send."""

    TOAST = "u"

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged.TOAST

TupleValue = str | bytes | Unchanged | None  # 't' text, 'b' binary, 'u', 'n' (NULL)


# The messages that come once per row or transaction are plain (not frozen) dataclasses: a
# frozen one takes several times as long to build. Nothing changes them once parsed.


@dataclass(slots=True)
class TupleData:
    values: tuple[TupleValue, ...]
    plain: bool  # True when every value is text or NULL (the fast path)


@dataclass(slots=True)
class Begin:
    final_lsn: int
    commit_time_us: int  # Unix microseconds
    xid: int


@dataclass(slots=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_time_us: int  # Unix microseconds


@dataclass(frozen=True, slots=True)
class RelationColumn:
    name: str
    type_oid: int
    typmod: int
    is_key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    schema: str
    table: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class TypeMessage:
    """'Y'. Careful: for a domain, Postgres sends the domain's oid with its *base* type's name."""

    oid: int
    schema: str
    name: str


@dataclass(slots=True)
class InsertMessage:
    relation_oid: int
    new: TupleData


@dataclass(slots=True)
class UpdateMessage:
    relation_oid: int
    old: TupleData | None  # 'K' key columns or 'O' full old row, when the identity sends one
    old_is_key: bool  # True for 'K'
    new: TupleData


@dataclass(slots=True)
class DeleteMessage:
    relation_oid: int
    old: TupleData
    old_is_key: bool  # True for 'K'


@dataclass(frozen=True, slots=True)
class TruncateMessage:
    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """``pg_logical_emit_message`` output (needs the ``messages`` option)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = (
    Begin
    | Commit
    | Relation
    | TypeMessage
    | InsertMessage
    | UpdateMessage
    | DeleteMessage
    | TruncateMessage
    | LogicalMessage
)

PUBLISH_PREFIX = "rtgw"  # the logical decoding messages that carry published events
HISTORY_PREFIX = "rtgw.history"  # and those that carry a stopped gateway's history floors

_U32 = struct.Struct(">I").unpack_from
_I32 = struct.Struct(">i").unpack_from
_I16 = struct.Struct(">h").unpack_from
_BEGIN = struct.Struct(">QqI").unpack_from
_COMMIT = struct.Struct(">BQQq").unpack_from
_TYPE_TYPMOD = struct.Struct(">Ii").unpack_from
_TRUNCATE = struct.Struct(">IB").unpack_from
_MESSAGE = struct.Struct(">BQ").unpack_from

_T, _N, _U, _B = b"tnub"
_K, _O, _NEW = b"KON"


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(0, pos)
    return data[pos:end].decode(), end + 1


def _read_tuple(data: bytes, pos: int) -> tuple[TupleData, int]:
    (count,) = _I16(data, pos)
    pos += 2
    values: list[TupleValue] = []
    append = values.append
    plain = True
    for _ in range(count):
        kind = data[pos]
        if kind == _T:
            (length,) = _I32(data, pos + 1)
            start = pos + 5
            pos = start + length
            append(data[start:pos].decode())
        elif kind == _N:
            append(None)
            pos += 1
        elif kind == _U:
            append(UNCHANGED)
            plain = False
            pos += 1
        elif kind == _B:
            (length,) = _I32(data, pos + 1)
            start = pos + 5
            pos = start + length
            append(data[start:pos])
            plain = False
        else:
            raise DecodeError(f"unknown tuple value kind {chr(kind)!r} at offset {pos}")
    if pos > len(data):
        raise DecodeError("tuple data runs past the end of the message")
    return TupleData(tuple(values), plain), pos


def _done(data: bytes, pos: int) -> None:
    if pos != len(data):
        raise DecodeError(f"{len(data) - pos} unexpected trailing bytes")


def _parse_begin(data: bytes) -> Begin:
    final_lsn, timestamp, xid = _BEGIN(data, 1)
    _done(data, 21)
    return Begin(final_lsn, timestamp + POSTGRES_EPOCH_MICROS, xid)


def _parse_commit(data: bytes) -> Commit:
    _flags, commit_lsn, end_lsn, timestamp = _COMMIT(data, 1)
    _done(data, 26)
    return Commit(commit_lsn, end_lsn, timestamp + POSTGRES_EPOCH_MICROS)


def _parse_relation(data: bytes) -> Relation:
    (oid,) = _U32(data, 1)
    schema, pos = _cstring(data, 5)
    table, pos = _cstring(data, pos)
    identity = chr(data[pos])
    (count,) = _I16(data, pos + 1)
    pos += 3
    columns = []
    for _ in range(count):
        flags = data[pos]
        name, pos = _cstring(data, pos + 1)
        type_oid, typmod = _TYPE_TYPMOD(data, pos)
        pos += 8
        columns.append(RelationColumn(name, type_oid, typmod, bool(flags & 1)))
    _done(data, pos)
    return Relation(oid, schema, table, identity, tuple(columns))


def _parse_type(data: bytes) -> TypeMessage:
    (oid,) = _U32(data, 1)
    schema, pos = _cstring(data, 5)
    name, pos = _cstring(data, pos)
    _done(data, pos)
    return TypeMessage(oid, schema, name)


def _parse_insert(data: bytes) -> InsertMessage:
    (oid,) = _U32(data, 1)
    if data[5] != _NEW:
        raise DecodeError(f"expected 'N' in Insert, got {chr(data[5])!r}")
    new, pos = _read_tuple(data, 6)
    _done(data, pos)
    return InsertMessage(oid, new)


def _parse_update(data: bytes) -> UpdateMessage:
    (oid,) = _U32(data, 1)
    kind = data[5]
    old = None
    pos = 6
    if kind == _K or kind == _O:
        old, pos = _read_tuple(data, 6)
        kind = data[pos]
        pos += 1
    if kind != _NEW:
        raise DecodeError(f"expected 'N' in Update, got {chr(kind)!r}")
    new, pos = _read_tuple(data, pos)
    _done(data, pos)
    return UpdateMessage(oid, old, data[5] == _K, new)


def _parse_delete(data: bytes) -> DeleteMessage:
    (oid,) = _U32(data, 1)
    kind = data[5]
    if kind != _K and kind != _O:
        raise DecodeError(f"expected 'K' or 'O' in Delete, got {chr(kind)!r}")
    old, pos = _read_tuple(data, 6)
    _done(data, pos)
    return DeleteMessage(oid, old, kind == _K)


def _parse_truncate(data: bytes) -> TruncateMessage:
    count, options = _TRUNCATE(data, 1)
    end = 6 + 4 * count
    _done(data, end)
    oids = struct.unpack_from(f">{count}I", data, 6)
    return TruncateMessage(oids, bool(options & 1), bool(options & 2))


def _parse_message(data: bytes) -> LogicalMessage:
    flags, lsn = _MESSAGE(data, 1)
    prefix, pos = _cstring(data, 10)
    (size,) = _U32(data, pos)
    content = data[pos + 4 : pos + 4 + size]
    _done(data, pos + 4 + size)
    return LogicalMessage(bool(flags & 1), lsn, prefix, content)


def _parse_ignored(data: bytes) -> None:
    return None  # Origin 'O'


_PARSERS: Final[dict[int, Callable[[bytes], Message | None]]] = {
    ord("B"): _parse_begin,
    ord("C"): _parse_commit,
    ord("O"): _parse_ignored,
    ord("R"): _parse_relation,
    ord("Y"): _parse_type,
    ord("I"): _parse_insert,
    ord("U"): _parse_update,
    ord("D"): _parse_delete,
    ord("T"): _parse_truncate,
    ord("M"): _parse_message,
}


INSERT: Final = b"I"  # an Insert payload starts with it


def relation_oid(data: bytes) -> int:
    """The relation oid of an Insert, Update or Delete payload; 0 (no relation's) when the
    payload is too short to hold one."""
    return _U32(data, 1)[0] if len(data) >= 5 else 0


def insert_text_row(
    data: bytes, names: Sequence[str], converters: Sequence[Callable[[str], Any]]
) -> dict[str, Any] | None:
    """The new row of an Insert payload read straight into ``{name: convert(text)}`` (the
    converter ``str`` is skipped), when the tuple has one value per name and every value is text
    or NULL and converts; None otherwise, and for a malformed payload: ``parse_message`` reads
    those and says what is wrong."""
    try:
        if data[5] != _NEW or _I16(data, 6)[0] != len(names):
            return None
        row: dict[str, Any] = {}
        pos = 8
        for name, convert in zip(names, converters, strict=True):
            kind = data[pos]
            if kind == _T:
                (length,) = _I32(data, pos + 1)
                start = pos + 5
                pos = start + length
                text = data[start:pos].decode()
                row[name] = text if convert is str else convert(text)
            elif kind == _N:
                row[name] = None
                pos += 1
            else:
                return None
        return row if pos == len(data) else None
    except Exception:  # a malformed payload, or a value its converter cannot read
        return None


def parse_message(payload: bytes | bytearray | memoryview) -> Message | None:
    """Parse one pgoutput v1 message. None for messages rtgw ignores ('O')."""
    data = payload if type(payload) is bytes else bytes(payload)
    if not data:
        raise DecodeError("empty pgoutput message")
    parser = _PARSERS.get(data[0])
    if parser is None:
        raise DecodeError(f"unknown pgoutput message type {chr(data[0])!r}")
    try:
        return parser(data)
    except DecodeError:
        raise
    except (struct.error, IndexError, ValueError) as exc:  # ValueError: bad UTF-8, no NUL
        raise DecodeError(f"malformed pgoutput {chr(data[0])!r} message: {exc}") from exc
