"""Sans-I/O decoder for the pgoutput logical replication protocol, version 1.

``parse_message`` turns the payload of one XLogData message (starting with the message-type
byte) into a small message object; ``Decoder.feed`` turns those into ``Change`` values whose
row values are JSON-ready (converted from Postgres' text output by type, see ``TypeRegistry``).

The replication connection must pin ``TimeZone=UTC, DateStyle=ISO, IntervalStyle=iso_8601,
extra_float_digits=3``: the text converters rely on those output formats.

Wire format: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from gateway.changes import (
    POSTGRES_EPOCH_MICROS,
    Change,
    ChangeId,
    Column,
    HistoryNote,
    Item,
    Op,
    Published,
    Row,
)
from gateway.encoding import loads

__all__ = [
    "TYPE_QUERY",
    "UNCHANGED",
    "Begin",
    "Commit",
    "Converter",
    "DecodeError",
    "Decoder",
    "DeleteMessage",
    "InsertMessage",
    "Message",
    "PgType",
    "Relation",
    "RelationColumn",
    "TruncateMessage",
    "TupleData",
    "TupleValue",
    "TypeMessage",
    "TypeRegistry",
    "Unchanged",
    "UpdateMessage",
    "parse_message",
]

Converter = Callable[[str], Any]


class DecodeError(ValueError):
    """A payload that is not valid pgoutput v1, or a change the decoder cannot place."""


# --------------------------------------------------------------------------------------------
# Types


@dataclass(frozen=True, slots=True)
class PgType:
    """One row of ``pg_type``."""

    oid: int
    name: str  # typname, e.g. "int4", "_text"
    typtype: str  # 'b' base, 'c' composite, 'd' domain, 'e' enum, 'p' pseudo, 'r' range, 'm'
    elem: int  # typelem: the element type of an array type, else 0 (mostly)
    base: int  # typbasetype: the base type of a domain, else 0
    delim: str = ","  # typdelim: the delimiter between elements in an array literal


TYPE_QUERY: Final = (
    "SELECT oid::int8, typname::text, typtype::text, typelem::int8, typbasetype::int8,"
    " typdelim::text FROM pg_catalog.pg_type"
)

# Built-in types have fixed oids (src/include/catalog/pg_type.dat), so a registry knows them
# before it ever sees the result of TYPE_QUERY. (oid, name, array oid, typtype)
_BUILTIN: Final[tuple[tuple[int, str, int, str], ...]] = (
    (16, "bool", 1000, "b"),
    (17, "bytea", 1001, "b"),
    (18, "char", 1002, "b"),
    (19, "name", 1003, "b"),
    (20, "int8", 1016, "b"),
    (21, "int2", 1005, "b"),
    (23, "int4", 1007, "b"),
    (25, "text", 1009, "b"),
    (26, "oid", 1028, "b"),
    (27, "tid", 1010, "b"),
    (28, "xid", 1011, "b"),
    (29, "cid", 1012, "b"),
    (114, "json", 199, "b"),
    (142, "xml", 143, "b"),
    (600, "point", 1017, "b"),
    (601, "lseg", 1018, "b"),
    (602, "path", 1019, "b"),
    (603, "box", 1020, "b"),
    (604, "polygon", 1027, "b"),
    (628, "line", 629, "b"),
    (650, "cidr", 651, "b"),
    (700, "float4", 1021, "b"),
    (701, "float8", 1022, "b"),
    (718, "circle", 719, "b"),
    (774, "macaddr8", 775, "b"),
    (790, "money", 791, "b"),
    (829, "macaddr", 1040, "b"),
    (869, "inet", 1041, "b"),
    (1042, "bpchar", 1014, "b"),
    (1043, "varchar", 1015, "b"),
    (1082, "date", 1182, "b"),
    (1083, "time", 1183, "b"),
    (1114, "timestamp", 1115, "b"),
    (1184, "timestamptz", 1185, "b"),
    (1186, "interval", 1187, "b"),
    (1266, "timetz", 1270, "b"),
    (1560, "bit", 1561, "b"),
    (1562, "varbit", 1563, "b"),
    (1700, "numeric", 1231, "b"),
    (2205, "regclass", 2210, "b"),
    (2206, "regtype", 2211, "b"),
    (2950, "uuid", 2951, "b"),
    (3220, "pg_lsn", 3221, "b"),
    (3614, "tsvector", 3643, "b"),
    (3615, "tsquery", 3645, "b"),
    (3802, "jsonb", 3807, "b"),
    (4072, "jsonpath", 4073, "b"),
    (5069, "xid8", 271, "b"),
    (3904, "int4range", 3905, "r"),
    (3906, "numrange", 3907, "r"),
    (3908, "tsrange", 3909, "r"),
    (3910, "tstzrange", 3911, "r"),
    (3912, "daterange", 3913, "r"),
    (3926, "int8range", 3927, "r"),
    (4451, "int4multirange", 6150, "m"),
    (4532, "nummultirange", 6151, "m"),
    (4533, "tsmultirange", 6152, "m"),
    (4534, "tstzmultirange", 6153, "m"),
    (4535, "datemultirange", 6155, "m"),
    (4536, "int8multirange", 6157, "m"),
)


# Non-array built-ins with a typelem (fixed-length "subscriptable" types, not arrays).
_BUILTIN_ELEM: Final = {19: 18, 600: 701, 601: 600, 603: 600, 628: 701}


def _builtin_types() -> dict[int, PgType]:
    types: dict[int, PgType] = {}
    for oid, name, array_oid, typtype in _BUILTIN:
        delim = ";" if name == "box" else ","
        types[oid] = PgType(oid, name, typtype, _BUILTIN_ELEM.get(oid, 0), 0, delim)
        types[array_oid] = PgType(array_oid, "_" + name, "b", oid, 0, delim)
    return types


_BUILTIN_TYPES: Final = _builtin_types()

_INF: Final = float("inf")


def _bool(text: str) -> bool:
    if text == "t":
        return True
    if text == "f":
        return False
    raise ValueError(f"not a bool: {text!r}")


def _float(text: str) -> float | str:
    """A float, except NaN and +-Infinity, which JSON cannot carry: those stay strings."""
    value = float(text)
    return value if -_INF < value < _INF else text


def _timestamptz(text: str) -> str:
    """``2024-01-02 03:04:05.123456+00`` -> ``2024-01-02T03:04:05.123456+00:00``."""
    if text[-3:] == "+00" and text[10:11] == " ":
        return f"{text[:10]}T{text[11:-3]}+00:00"
    if text[-1] == "y" or text[-3:] == " BC":  # [-]infinity; BC dates have no ISO form here
        return text
    text = text.replace(" ", "T", 1)
    return text + ":00" if text[-3] in "+-" else text


def _timestamp(text: str) -> str:
    """``2024-01-02 03:04:05.123456`` -> ``2024-01-02T03:04:05.123456``."""
    if text[10:11] == " " and text[-1].isdigit():
        return f"{text[:10]}T{text[11:]}"
    if text[-1] == "y" or text[-3:] == " BC":
        return text
    return text.replace(" ", "T", 1)


# Converters by built-in oid; every type not listed here (nor a domain/array of one) stays str.
_FIXED: Final[dict[int, Converter]] = {
    16: _bool,
    20: int,
    21: int,
    23: int,
    26: int,
    700: _float,
    701: _float,
    114: loads,
    3802: loads,
    1114: _timestamp,
    1184: _timestamptz,
}

# Array literals. array_out quotes an element when it is empty, is NULL (as text), or holds a
# quote, backslash, brace, the delimiter or whitespace; unquoted NULL is the SQL NULL.
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
# What array_in/array_out treat as white space (array_isspace), unlike str.isspace: an element
# such as "\xa0" or "\x1f" arrives unquoted and is data.
_ARRAY_SPACE: Final = " \t\n\r\v\f"


def _unescape(text: str) -> str:
    return _ESCAPE.sub(r"\1", text) if "\\" in text else text


def _parse_array(text: str, delim: str, convert: Converter) -> list[Any]:
    # Fast path: one dimension, nothing quoted.
    if text[:1] == "{" and text[1:2] != "{" and '"' not in text and text[-1:] == "}":
        body = text[1:-1]
        if not body:
            return []
        return [None if item == "NULL" else convert(item) for item in body.split(delim)]
    return _parse_array_slow(text, delim, convert)


def _parse_array_slow(text: str, delim: str, convert: Converter) -> list[Any]:
    pos = 0
    end = len(text)
    if text[:1] == "[":  # "[0:1][1:2]=" dimension decoration when a lower bound is not 1
        pos = text.index("=") + 1
    while pos < end and text[pos] in _ARRAY_SPACE:
        pos += 1
    if pos >= end or text[pos] != "{":
        raise ValueError(f"not an array literal: {text!r}")
    stack: list[list[Any]] = []
    result: list[Any] | None = None
    while pos < end:
        char = text[pos]
        if char == "{":
            inner: list[Any] = []
            if stack:
                stack[-1].append(inner)
            stack.append(inner)
            pos += 1
        elif char == "}":
            done = stack.pop()
            pos += 1
            if not stack:
                result = done
                break
        elif char == delim or char in _ARRAY_SPACE:
            pos += 1
        elif not stack:
            raise ValueError(f"malformed array literal: {text!r}")
        elif char == '"':
            match = _QUOTED.match(text, pos)
            if match is None:
                raise ValueError(f"unterminated quote in array literal: {text!r}")
            stack[-1].append(convert(_unescape(match.group(1))))
            pos = match.end()
        else:
            stop = end
            for terminator in (delim, "}", "{"):
                found = text.find(terminator, pos, stop)
                if found != -1:
                    stop = found
            item = text[pos:stop].rstrip(_ARRAY_SPACE)
            stack[-1].append(None if item.upper() == "NULL" else convert(_unescape(item)))
            pos = stop
    if result is None or text[pos:].strip():
        raise ValueError(f"malformed array literal: {text!r}")
    return result


def _array_converter(convert: Converter, delim: str) -> Converter:
    def convert_array(text: str) -> list[Any]:
        return _parse_array(text, delim, convert)

    return convert_array


class TypeRegistry:
    """Postgres types by oid: names for ``Column.type`` and text -> JSON-ready converters.

    Built-in types (fixed oids) are known from the start; load the rest with ``TYPE_QUERY``
    (``registry.update(PgType(*row) for row in rows)``).
    """

    __slots__ = ("_converters", "_types")

    def __init__(self, types: Iterable[PgType] = ()) -> None:
        self._types: dict[int, PgType] = dict(_BUILTIN_TYPES)
        self._converters: dict[int, Converter] = {}
        self.update(types)

    def update(self, types: Iterable[PgType]) -> None:
        for pg_type in types:
            self._types[pg_type.oid] = pg_type
        self._converters.clear()

    def knows(self, oid: int) -> bool:
        return oid in self._types

    def get(self, oid: int) -> PgType | None:
        return self._types.get(oid)

    def name(self, oid: int) -> str:
        pg_type = self._types.get(oid)
        return pg_type.name if pg_type is not None else str(oid)

    def converter(self, oid: int) -> Converter:
        try:
            return self._converters[oid]
        except KeyError:
            convert = self._converters[oid] = self._resolve(oid, 0)
            return convert

    def _resolve(self, oid: int, depth: int) -> Converter:
        fixed = _FIXED.get(oid)
        if fixed is not None:
            return fixed
        pg_type = self._types.get(oid)
        if pg_type is None or depth > 32:
            return str
        if pg_type.typtype == "d" and pg_type.base:
            return self._resolve(pg_type.base, depth + 1)
        if pg_type.elem and pg_type.name.startswith("_") and pg_type.typtype == "b":
            element = self._types.get(pg_type.elem)
            delim = element.delim if element is not None else pg_type.delim
            return _array_converter(self._resolve(pg_type.elem, depth + 1), delim)
        return str

    def missing(self, oids: Iterable[int]) -> list[int]:
        """The oids (and array elements, domain bases they need) this registry lacks."""
        missing: dict[int, None] = {}
        for oid in oids:
            for _ in range(32):
                pg_type = self._types.get(oid)
                if pg_type is None:
                    missing[oid] = None
                    break
                if pg_type.typtype == "d" and pg_type.base:
                    oid = pg_type.base
                elif pg_type.elem and pg_type.name.startswith("_"):
                    oid = pg_type.elem
                else:
                    break
        return list(missing)


# --------------------------------------------------------------------------------------------
# Messages


class Unchanged(Enum):
    """The 'u' marker: an unchanged TOASTed value that the server did not send."""

    TOAST = "u"

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged.TOAST

TupleValue = str | bytes | Unchanged | None  # 't' text, 'b' binary, 'u', 'n' (NULL)


@dataclass(frozen=True, slots=True)
class TupleData:
    values: tuple[TupleValue, ...]
    plain: bool  # True when every value is text or NULL (the fast path)


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_time_us: int  # Unix microseconds
    xid: int


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class InsertMessage:
    relation_oid: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class UpdateMessage:
    relation_oid: int
    old: TupleData | None  # 'K' key columns or 'O' full old row, when the identity sends one
    old_is_key: bool  # True for 'K'
    new: TupleData


@dataclass(frozen=True, slots=True)
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


# --------------------------------------------------------------------------------------------
# Decoder

_MESSAGE_KINDS: Final[dict[str, type[Published] | type[HistoryNote]]] = {
    PUBLISH_PREFIX: Published,
    HISTORY_PREFIX: HistoryNote,
}


class _Plan:
    """What the decoder needs per relation, built once per Relation message."""

    __slots__ = ("columns", "converters", "keys", "names", "relation")

    def __init__(self, relation: Relation, types: TypeRegistry) -> None:
        self.relation = relation
        self.names = tuple(column.name for column in relation.columns)
        self.converters = tuple(types.converter(column.type_oid) for column in relation.columns)
        self.keys = tuple(column.is_key for column in relation.columns)
        self.columns = tuple(
            Column(column.name, types.name(column.type_oid)) for column in relation.columns
        )

    def row(
        self,
        data: TupleData,
        *,
        keys_only: bool = False,
        old: Row | None = None,
        unchanged: list[str] | None = None,
    ) -> Row:
        values = data.values
        if len(values) != len(self.names):
            raise DecodeError(
                f"tuple has {len(values)} columns, relation {self.relation.schema}."
                f"{self.relation.table} has {len(self.names)}"
            )
        if data.plain and not keys_only:
            try:
                return {
                    # plain: every value is str or None
                    name: None if value is None else convert(value)  # type: ignore[arg-type]
                    for name, convert, value in zip(
                        self.names, self.converters, values, strict=True
                    )
                }
            except Exception:
                pass  # the careful path below converts value by value
        return self._row_careful(values, keys_only, old, unchanged)

    def _row_careful(
        self,
        values: tuple[TupleValue, ...],
        keys_only: bool,
        old: Row | None,
        unchanged: list[str] | None,
    ) -> Row:
        row: Row = {}
        for name, convert, is_key, value in zip(
            self.names, self.converters, self.keys, values, strict=True
        ):
            if keys_only and not is_key:
                continue
            if value is None:
                row[name] = None
            elif value is UNCHANGED:
                if old is not None and name in old:
                    row[name] = old[name]
                elif unchanged is not None:
                    unchanged.append(name)
            elif isinstance(value, bytes):
                row[name] = "\\x" + value.hex()
            else:
                try:
                    row[name] = convert(value)
                except Exception:
                    # A value the converter cannot read (unexpected output format): pass the
                    # text through rather than stall the stream on it forever.
                    row[name] = value
        return row


class Decoder:
    """Turns parsed messages into Changes. Holds relations and the current transaction."""

    __slots__ = ("_commit_time_us", "_lsn", "_plans", "_seq", "_transaction", "types")

    def __init__(self, types: TypeRegistry) -> None:
        self.types = types
        self._plans: dict[int, _Plan] = {}
        self._transaction: Begin | None = None
        self._lsn = 0
        self._commit_time_us = 0
        self._seq = 0

    @property
    def in_transaction(self) -> bool:
        return self._transaction is not None

    def relation(self, oid: int) -> Relation | None:
        plan = self._plans.get(oid)
        return plan.relation if plan is not None else None

    def missing_types(self, relation: Relation) -> list[int]:
        """Oids used by ``relation`` that the registry does not know (refresh, then feed)."""
        return self.types.missing(column.type_oid for column in relation.columns)

    def feed(self, message: Message | None) -> list[Item]:
        if isinstance(message, InsertMessage):
            plan = self._plan(message.relation_oid)
            return [self._change(plan, Op.INSERT, plan.row(message.new), None, ())]
        if isinstance(message, UpdateMessage):
            return [self._update(message)]
        if isinstance(message, DeleteMessage):
            plan = self._plan(message.relation_oid)
            old = plan.row(message.old, keys_only=message.old_is_key)
            return [self._change(plan, Op.DELETE, None, old, ())]
        if isinstance(message, Begin):
            self._transaction = message
            self._lsn = message.final_lsn
            self._commit_time_us = message.commit_time_us
            self._seq = 0
            return []
        if isinstance(message, Commit):
            self._transaction = None
            return []
        if isinstance(message, Relation):
            self._plans[message.oid] = _Plan(message, self.types)
            return []
        if isinstance(message, TruncateMessage):
            plans = [self._plan(oid) for oid in message.relation_oids]
            return [self._change(plan, Op.TRUNCATE, None, None, ()) for plan in plans]
        if isinstance(message, LogicalMessage):
            return self._published(message)
        if isinstance(message, TypeMessage) or message is None:
            return []
        raise TypeError(f"not a pgoutput message: {message!r}")

    def _published(self, message: LogicalMessage) -> list[Item]:
        """A transactional message with rtgw's prefixes is a published event or a history note;
        others (other applications' messages, non-transactional ones) are skipped."""
        kind = _MESSAGE_KINDS.get(message.prefix)
        if not message.transactional or kind is None:
            return []
        if self._transaction is None:
            raise DecodeError("transactional message outside a transaction (no Begin)")
        seq = self._seq
        self._seq = seq + 1
        return [kind(ChangeId(self._lsn, seq), self._commit_time_us, message.content)]

    def _plan(self, oid: int) -> _Plan:
        try:
            return self._plans[oid]
        except KeyError:
            raise DecodeError(f"change for relation {oid} before its Relation message") from None

    def _update(self, message: UpdateMessage) -> Change:
        plan = self._plan(message.relation_oid)
        old = None
        if message.old is not None:
            old = plan.row(message.old, keys_only=message.old_is_key)
        if message.new.plain:
            return self._change(plan, Op.UPDATE, plan.row(message.new), old, ())
        unchanged: list[str] = []
        new = plan.row(message.new, old=old, unchanged=unchanged)
        return self._change(plan, Op.UPDATE, new, old, tuple(unchanged))

    def _change(
        self,
        plan: _Plan,
        op: Op,
        new: Row | None,
        old: Row | None,
        unchanged: tuple[str, ...],
    ) -> Change:
        if self._transaction is None:
            raise DecodeError(f"{op} change outside a transaction (no Begin)")
        seq = self._seq
        self._seq = seq + 1
        relation = plan.relation
        return Change(
            ChangeId(self._lsn, seq),
            relation.schema,
            relation.table,
            op,
            self._commit_time_us,
            plan.columns,
            new,
            old,
            unchanged,
        )
