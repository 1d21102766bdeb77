"""Postgres types for decoding pgoutput: ``PgType`` rows, and ``TypeRegistry``, which names each
type (for ``Column.type``) and converts its text output into a JSON-ready value.

The replication connection must pin ``TimeZone=UTC, DateStyle=ISO, IntervalStyle=iso_8601,
extra_float_digits=3``: the text converters rely on those output formats.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from gateway.encoding import loads

Converter = Callable[[str], Any]


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
    """``2024-01-02 03:04:05.123456+00`` -> ``2024-01-02T03:04:05.123456+00:00``; a BC
    timestamp keeps its suffix (``...+00:00 BC``), as ``to_jsonb`` writes it."""
    if text[-3:] == "+00" and text[10:11] == " ":
        return f"{text[:10]}T{text[11:-3]}+00:00"
    if text[-1] == "y":  # [-]infinity
        return text
    if text[-3:] == " BC":
        return _timestamptz(text[:-3]) + " BC"
    text = text.replace(" ", "T", 1)
    return text + ":00" if text[-3] in "+-" else text


def _timestamp(text: str) -> str:
    """``2024-01-02 03:04:05.123456`` -> ``2024-01-02T03:04:05.123456`` (BC: with its suffix)."""
    if text[10:11] == " " and text[-1].isdigit():
        return f"{text[:10]}T{text[11:]}"
    if text[-1] == "y":
        return text
    if text[-3:] == " BC":
        return _timestamp(text[:-3]) + " BC"
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
