"""Row filters in PostgREST/Supabase syntax: ``col=op.value``, several joined by commas (AND).

Operators: ``eq, neq, lt, lte, gt, gte`` and ``in.(a,b,"c,d")``. A filter's ``key`` is a
canonical string, so equal filters share one topic and one encoding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway.errors import GatewayError

OPERATORS = ("eq", "neq", "lt", "lte", "gt", "gte", "in")
MAX_CONDITIONS = 8
MAX_IN_VALUES = 100
_NUMERIC_TYPES = frozenset({"numeric", "int2", "int4", "int8", "float4", "float8", "oid"})


class FilterError(GatewayError):
    """The filter text is malformed (``bad_filter``). The message says where."""

    def __init__(self, message: str) -> None:
        super().__init__("bad_filter", message)


@dataclass(frozen=True, slots=True)
class Condition:
    column: str
    op: str
    values: tuple[str, ...]
    numbers: tuple[Decimal | None, ...] = field(compare=False, repr=False)

    def text(self) -> str:
        if self.op == "in":
            return f"{self.column}=in.({','.join(_quote(v) for v in self.values)})"
        return f"{self.column}={self.op}.{self.values[0]}"

    def matches(self, value: Any, type_name: str | None) -> bool:
        if value is None:
            return False  # SQL semantics: comparisons with NULL are never true
        if self.op == "in":
            return any(_compare(value, type_name, v, n) == 0 for v, n in self._pairs())
        order = _compare(value, type_name, self.values[0], self.numbers[0])
        if order is None:
            return self.op == "neq"
        match self.op:
            case "eq":
                return order == 0
            case "neq":
                return order != 0
            case "lt":
                return order < 0
            case "lte":
                return order <= 0
            case "gt":
                return order > 0
            case _:
                return order >= 0

    def _pairs(self) -> zip[tuple[str, Decimal | None]]:
        return zip(self.values, self.numbers, strict=True)


@dataclass(frozen=True, slots=True)
class Filter:
    conditions: tuple[Condition, ...]

    @property
    def key(self) -> str:
        return ",".join(c.text() for c in self.conditions)

    @property
    def columns(self) -> frozenset[str]:
        return frozenset(c.column for c in self.conditions)

    def matches(self, row: Mapping[str, Any], types: Mapping[str, str]) -> bool:
        return all(c.matches(row.get(c.column), types.get(c.column)) for c in self.conditions)


def parse_filter(text: str) -> Filter:
    """Parse ``a=eq.1,b=in.(x,y)``. Conditions are sorted so equal filters get equal keys."""
    conditions: list[Condition] = []
    for part in _split_top_level(text.strip()):
        column, sep, rest = part.partition("=")
        column = column.strip()
        op, dot, literal = rest.partition(".")
        if not sep or not dot or not column.isidentifier():
            raise FilterError(f"expected column=op.value, got {part!r}")
        if op not in OPERATORS:
            raise FilterError(f"unknown operator {op!r} (allowed: {', '.join(OPERATORS)})")
        values = tuple(sorted(set(_parse_in_list(literal)))) if op == "in" else (literal,)
        numbers = tuple(_to_number(v) for v in values)
        conditions.append(Condition(column, op, values, numbers))
    if not conditions:
        raise FilterError("the filter is empty")
    if len(conditions) > MAX_CONDITIONS:
        raise FilterError(f"at most {MAX_CONDITIONS} conditions are allowed")
    return Filter(tuple(sorted(set(conditions), key=Condition.text)))


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses and quotes."""
    parts: list[str] = []
    depth, quoted, start = 0, False, 0
    for i, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and char == ",":
            parts.append(text[start:i])
            start = i + 1
    if depth != 0 or quoted:
        raise FilterError("unbalanced parentheses or quotes")
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def _parse_in_list(literal: str) -> tuple[str, ...]:
    if not (literal.startswith("(") and literal.endswith(")")):
        raise FilterError(f"`in` expects a list like in.(a,b), got {literal!r}")
    values = []
    for item in _split_top_level(literal[1:-1]):
        item = item.strip()
        if len(item) >= 2 and item[0] == item[-1] == '"':
            item = item[1:-1]
        values.append(item)
    if not values:
        raise FilterError("`in` needs at least one value")
    if len(values) > MAX_IN_VALUES:
        raise FilterError(f"`in` takes at most {MAX_IN_VALUES} values")
    return tuple(values)


def _quote(value: str) -> str:
    return f'"{value}"' if any(c in value for c in ',()"') else value


def _to_number(literal: str) -> Decimal | None:
    try:
        number = Decimal(literal)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _compare(value: Any, type_name: str | None, literal: str, number: Decimal | None) -> int | None:
    """Order ``value`` against the literal: -1, 0, 1, or None when they are not comparable."""
    if isinstance(value, bool):
        wanted = literal.lower()
        if wanted not in ("true", "false", "t", "f"):
            return None
        return (value > (wanted[0] == "t")) - (value < (wanted[0] == "t"))
    if isinstance(value, int | float) or (type_name in _NUMERIC_TYPES and isinstance(value, str)):
        if number is None:
            return None
        try:
            mine = Decimal(value) if isinstance(value, str) else Decimal(repr(value))
        except InvalidOperation:
            return None
        if not mine.is_finite():
            return None
        return (mine > number) - (mine < number)
    text = value if isinstance(value, str) else str(value)
    return (text > literal) - (text < literal)
