"""Postgres types: text output in, JSON-ready values out, by type (``TypeRegistry``)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.sources.postgres.types import TYPE_QUERY, PgType, TypeRegistry
from tests.unit.sources.postgres.payloads import (
    CITEXT,
    EVEN_POSINT,
    INTS,
    MOOD,
    MOOD_ARRAY,
    POSINT,
    POSINT_ARRAY,
    USER_TYPES,
)


def convert(type_oid: int, text: str) -> Any:
    return TypeRegistry(USER_TYPES).converter(type_oid)(text)


@pytest.mark.parametrize(
    ("type_oid", "text", "expected"),
    [
        (16, "t", True),
        (16, "f", False),
        (21, "-32768", -32768),
        (23, "2147483647", 2147483647),
        (20, "-9223372036854775808", -9223372036854775808),
        (26, "4294967295", 4294967295),
        (701, "1.5", 1.5),
        (701, "-0.1", -0.1),
        (701, "1e+300", 1e300),
        (701, "NaN", "NaN"),
        (701, "Infinity", "Infinity"),
        (701, "-Infinity", "-Infinity"),
        (700, "1.1", 1.1),
        (700, "NaN", "NaN"),
        (700, "-Infinity", "-Infinity"),
        (
            1700,
            "123456789012345678901234567890.123456789",
            "123456789012345678901234567890.123456789",
        ),
        (1700, "0.10", "0.10"),
        (1700, "NaN", "NaN"),
        (1700, "Infinity", "Infinity"),
        (114, '{"a": [1, 2.5, null], "b": "x\\"y"}', {"a": [1, 2.5, None], "b": 'x"y'}),
        (3802, '{"b": {"c": true}}', {"b": {"c": True}}),
        (3802, "[]", []),
        (3802, '"str"', "str"),
        (3802, "12", 12),
        (25, "hello, world", "hello, world"),
        (1043, "", ""),
        (1042, "ab  ", "ab  "),
        (19, "pg_class", "pg_class"),
        (2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        (869, "10.0.0.1/8", "10.0.0.1/8"),
        (17, "\\x0102ff", "\\x0102ff"),
        (1082, "2024-01-02", "2024-01-02"),
        (1082, "infinity", "infinity"),
        (1083, "03:04:05.5", "03:04:05.5"),
        (1266, "03:04:05+02", "03:04:05+02"),
        (1186, "P1Y2M3DT4H5M6.5S", "P1Y2M3DT4H5M6.5S"),
        (1186, "-P1D", "-P1D"),
        (3904, "[1,5)", "[1,5)"),
        (MOOD, "sad", "sad"),
        (CITEXT, "MiXed", "MiXed"),
        (POSINT, "5", 5),
        (EVEN_POSINT, "6", 6),
        (99999, "whatever it is", "whatever it is"),
    ],
)
def test_scalar_conversion(type_oid: int, text: str, expected: Any) -> None:
    value = convert(type_oid, text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02 03:04:05.123456+00", "2024-01-02T03:04:05.123456+00:00"),
        ("2024-01-02 03:04:05+00", "2024-01-02T03:04:05+00:00"),
        ("2024-01-02 03:04:05.5+05:30", "2024-01-02T03:04:05.5+05:30"),
        ("2024-01-02 03:04:05-08", "2024-01-02T03:04:05-08:00"),
        ("12345-01-02 03:04:05+00", "12345-01-02T03:04:05+00:00"),
        ("infinity", "infinity"),
        ("-infinity", "-infinity"),
        ("0044-03-15 12:00:00+00 BC", "0044-03-15T12:00:00+00:00 BC"),
        ("0044-03-15 12:00:00+05:30 BC", "0044-03-15T12:00:00+05:30 BC"),
    ],
)
def test_timestamptz_conversion(text: str, expected: str) -> None:
    assert convert(1184, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02 03:04:05.123456", "2024-01-02T03:04:05.123456"),
        ("2024-01-02 03:04:05", "2024-01-02T03:04:05"),
        ("12345-01-02 03:04:05", "12345-01-02T03:04:05"),
        ("infinity", "infinity"),
        ("-infinity", "-infinity"),
        ("0044-03-15 12:00:00 BC", "0044-03-15T12:00:00 BC"),
    ],
)
def test_timestamp_conversion(text: str, expected: str) -> None:
    assert convert(1114, text) == expected


@pytest.mark.parametrize(
    ("type_oid", "text", "expected"),
    [
        (1007, "{}", []),
        (1007, "{1,NULL,3}", [1, None, 3]),
        (1007, "{{1,2},{3,NULL}}", [[1, 2], [3, None]]),
        (1007, "[0:1][1:2]={{1,2},{3,NULL}}", [[1, 2], [3, None]]),
        (1007, "[5:6]={7,8}", [7, 8]),
        (1007, "{{{1},{2}},{{NULL},{4}}}", [[[1], [2]], [[None], [4]]]),
        (1016, "{-9223372036854775808}", [-9223372036854775808]),
        (1000, "{t,f,NULL}", [True, False, None]),
        (1022, "{1.5,NaN,Infinity,-Infinity,NULL}", [1.5, "NaN", "Infinity", "-Infinity", None]),
        (1231, "{1.10,NaN,NULL}", ["1.10", "NaN", None]),
        (
            1009,
            '{"a,b","q\\"uote","back\\\\slash","NULL",""," sp",NULL,plain}',
            ["a,b", 'q"uote', "back\\slash", "NULL", "", " sp", None, "plain"],
        ),
        (1009, '{{"x,1",NULL},{"{braces}","y\\\\"}}', [["x,1", None], ["{braces}", "y\\"]]),
        (1009, '{"multi\nline"}', ["multi\nline"]),
        (1015, '{"é ü",日本}', ["é ü", "日本"]),
        (1020, "{(1,1),(0,0);(2,2),(1,1)}", ["(1,1),(0,0)", "(2,2),(1,1)"]),
        (1020, "{(1,1),(0,0)}", ["(1,1),(0,0)"]),
        (
            1185,
            '{"2024-01-02 03:04:05+00",infinity,NULL}',
            ["2024-01-02T03:04:05+00:00", "infinity", None],
        ),
        (1115, '{"2024-01-02 03:04:05"}', ["2024-01-02T03:04:05"]),
        (
            3807,
            '{"{\\"a\\": 1}","[1, \\"x,y\\"]",NULL}',
            [{"a": 1}, [1, "x,y"], None],
        ),
        (199, '{"{\\"k\\": null}"}', [{"k": None}]),
        (1001, '{"\\\\x0102",NULL}', ["\\x0102", None]),
        (1187, "{P1D,PT1H}", ["P1D", "PT1H"]),
        (2951, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
        (MOOD_ARRAY, "{happy,sad,NULL}", ["happy", "sad", None]),
        (POSINT_ARRAY, "{1,2,NULL}", [1, 2, None]),
        (INTS, "{{1},{2}}", [[1], [2]]),
        # Not white space to array_out, so unquoted: data, not padding (found by hypothesis).
        (1009, "{{\xa0},{a\x1f}}", [["\xa0"], ["a\x1f"]]),
    ],
)
def test_array_conversion(type_oid: int, text: str, expected: Any) -> None:
    assert convert(type_oid, text) == expected


@pytest.mark.parametrize("text", ["{1,2", "1,2", '{"open}', "{1}}", "[1:2]{1,2}", "{{1},{2}"])
def test_malformed_arrays_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        convert(1007, text)


# --- TypeRegistry ----------------------------------------------------------------------------


def test_registry_names_and_knowledge() -> None:
    registry = TypeRegistry()
    assert registry.knows(23) and registry.name(23) == "int4"
    assert registry.name(1009) == "_text"
    assert registry.name(3802) == "jsonb"
    assert registry.name(1020) == "_box"
    assert not registry.knows(MOOD)
    assert registry.name(MOOD) == str(MOOD)
    registry.update(USER_TYPES)
    assert registry.knows(MOOD) and registry.name(MOOD) == "mood"
    assert registry.get(POSINT) == PgType(POSINT, "posint", "d", 0, 23, ",")


def test_registry_caches_converters_and_update_invalidates() -> None:
    registry = TypeRegistry()
    assert registry.converter(1007) is registry.converter(1007)
    assert registry.converter(POSINT)("5") == "5"  # unknown: text
    registry.update([PgType(POSINT, "posint", "d", 0, 23)])
    assert registry.converter(POSINT)("5") == 5


def test_registry_uses_the_element_types_delimiter() -> None:
    registry = TypeRegistry(
        [PgType(60000, "semi", "b", 0, 0, ";"), PgType(60001, "_semi", "b", 60000, 0)]
    )
    assert registry.converter(60001)("{a,b;c}") == ["a,b", "c"]


def test_registry_from_type_query_rows() -> None:
    assert "pg_catalog.pg_type" in TYPE_QUERY
    for column in (
        "oid::int8",
        "typname",
        "typtype",
        "typelem::int8",
        "typbasetype::int8",
        "typdelim",
    ):
        assert column in TYPE_QUERY
    rows = [(16490, "mood", "e", 0, 0, ","), (16489, "_mood", "b", 16490, 0, ",")]
    registry = TypeRegistry(PgType(*row) for row in rows)
    assert registry.converter(16489)("{happy}") == ["happy"]
