"""gateway.filters: parsing PostgREST-style row filters and matching rows against them."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.filters import (
    MAX_CONDITIONS,
    MAX_IN_VALUES,
    OPERATORS,
    Filter,
    FilterError,
    parse_filter,
)


def matches(text: str, value: Any, type_name: str | None = None, column: str = "c") -> bool:
    """Does a one-column row ``{column: value}`` match the filter ``text``?"""
    types = {} if type_name is None else {column: type_name}
    return parse_filter(text).matches({column: value}, types)


# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize("op", [op for op in OPERATORS if op != "in"])
def test_every_comparison_operator_parses(op: str) -> None:
    parsed = parse_filter(f"total={op}.10")
    assert len(parsed.conditions) == 1
    condition = parsed.conditions[0]
    assert (condition.column, condition.op, condition.values) == ("total", op, ("10",))
    assert parsed.key == f"total={op}.10"
    assert parsed.columns == frozenset({"total"})


def test_in_operator_parses_a_list() -> None:
    parsed = parse_filter("status=in.(paid,shipped)")
    condition = parsed.conditions[0]
    assert condition.op == "in"
    assert condition.values == ("paid", "shipped")
    assert parsed.key == "status=in.(paid,shipped)"


def test_in_operator_quoted_values_may_hold_commas() -> None:
    parsed = parse_filter('status=in.(a,b,"c,d")')
    assert parsed.conditions[0].values == ("a", "b", "c,d")
    # The key quotes the value again, so it stays unambiguous.
    assert parsed.key == 'status=in.(a,b,"c,d")'


def test_in_operator_quoted_values_may_hold_parentheses() -> None:
    parsed = parse_filter('c=in.("(x)",y)')
    assert parsed.conditions[0].values == ("(x)", "y")
    assert parsed.key == 'c=in.("(x)",y)'


def test_in_operator_strips_spaces_around_items() -> None:
    assert parse_filter("c=in.( a , b )").conditions[0].values == ("a", "b")


def test_single_value_in_list() -> None:
    assert parse_filter("c=in.(x)").conditions[0].values == ("x",)


def test_several_conditions_joined_by_commas() -> None:
    parsed = parse_filter("status=eq.paid,total=gt.10,id=in.(1,2)")
    assert [(c.column, c.op) for c in parsed.conditions] == [
        ("id", "in"),
        ("status", "eq"),
        ("total", "gt"),
    ]
    assert parsed.columns == frozenset({"status", "total", "id"})
    assert parsed.key == "id=in.(1,2),status=eq.paid,total=gt.10"


def test_spaces_before_columns_are_ignored() -> None:
    assert parse_filter("  a=eq.1,  b=eq.2").key == "a=eq.1,b=eq.2"


def test_key_is_independent_of_condition_order() -> None:
    one = parse_filter("b=eq.2,a=eq.1")
    other = parse_filter("a=eq.1,b=eq.2")
    assert one.key == other.key == "a=eq.1,b=eq.2"
    assert one == other
    assert hash(one) == hash(other)


def test_equal_filters_have_equal_keys() -> None:
    assert parse_filter("status=eq.paid").key == parse_filter("status=eq.paid").key
    assert parse_filter("status=eq.paid").key != parse_filter("status=eq.open").key
    assert parse_filter("status=eq.paid").key != parse_filter("status=neq.paid").key


def test_duplicate_conditions_collapse() -> None:
    parsed = parse_filter("a=eq.1,a=eq.1")
    assert len(parsed.conditions) == 1
    assert parsed == parse_filter("a=eq.1")


def test_key_reparses_to_the_same_filter() -> None:
    parsed = parse_filter('z=lt.5,a=in.(x,"y,z"),m=neq.q')
    assert parse_filter(parsed.key) == parsed
    assert parse_filter(parsed.key).key == parsed.key


def test_limits_are_inclusive() -> None:
    text = ",".join(f"c{i}=eq.{i}" for i in range(MAX_CONDITIONS))
    assert len(parse_filter(text).conditions) == MAX_CONDITIONS
    values = ",".join(str(i) for i in range(MAX_IN_VALUES))
    assert len(parse_filter(f"c=in.({values})").conditions[0].values) == MAX_IN_VALUES


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a=like.x", "unknown operator 'like'"),
        ("a=EQ.1", "unknown operator 'EQ'"),
        ("a=.1", "unknown operator ''"),
        ("aeq.1", "expected column=op.value"),
        ("a", "expected column=op.value"),
        ("a=eq1", "expected column=op.value"),
        ("a=eq", "expected column=op.value"),
        ("a=eq.1,b", "expected column=op.value"),
        ("", "the filter is empty"),
        ("   ", "the filter is empty"),
        (",", "the filter is empty"),
        (" , , ", "the filter is empty"),
        ("a=in.(1,2", "unbalanced"),
        ("a=in.1,2)", "unbalanced"),
        ("a=in.((1)", "unbalanced"),
        ('a=eq."x', "unbalanced"),
        ("a=in.1", "`in` expects a list"),
        ("a=in.(1", "unbalanced"),
        ("a=in.()", "at least one value"),
        ("a=in.(,)", "at least one value"),
        ("1a=eq.1", "expected column=op.value"),
        ("a-b=eq.1", "expected column=op.value"),
        ("a b=eq.1", "expected column=op.value"),
        ("a.b=eq.1", "expected column=op.value"),
        ("=eq.1", "expected column=op.value"),
    ],
)
def test_malformed_filters_are_refused(text: str, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(text)
    assert message in str(caught.value)


def test_too_many_conditions() -> None:
    text = ",".join(f"c{i}=eq.{i}" for i in range(MAX_CONDITIONS + 1))
    with pytest.raises(FilterError, match=f"at most {MAX_CONDITIONS} conditions"):
        parse_filter(text)


def test_too_many_in_values() -> None:
    values = ",".join(str(i) for i in range(MAX_IN_VALUES + 1))
    with pytest.raises(FilterError, match=f"at most {MAX_IN_VALUES} values"):
        parse_filter(f"c=in.({values})")


def test_filter_error_is_a_bad_filter_refusal() -> None:
    with pytest.raises(GatewayError) as caught:
        parse_filter("nope")
    assert caught.value.code == "bad_filter"


# --- matching: NULL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["c=eq.1", "c=neq.1", "c=lt.1", "c=lte.1", "c=gt.1", "c=gte.1", "c=in.(1,2)"]
)
def test_null_never_matches(text: str) -> None:
    assert matches(text, None) is False
    assert matches(text, None, "int4") is False
    # A column missing from the row counts as NULL.
    assert parse_filter(text).matches({}, {}) is False


def test_neq_null_literal_text_does_not_match_null() -> None:
    assert matches("c=neq.null", None) is False
    assert matches("c=eq.null", None) is False


# --- matching: numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("c=eq.10", 10, True),
        ("c=eq.10", 11, False),
        ("c=neq.10", 11, True),
        ("c=neq.10", 10, False),
        ("c=gt.9", 10, True),  # numerically, not "10" < "9"
        ("c=gt.10", 10, False),
        ("c=gte.10", 10, True),
        ("c=gte.11", 10, False),
        ("c=lt.10", 9, True),
        ("c=lt.9", 9, False),
        ("c=lte.9", 9, True),
        ("c=lte.8", 9, False),
        ("c=eq.10.0", 10, True),
        ("c=eq.-3", -3, True),
        ("c=lt.0", -3, True),
        ("c=gt.9", 9.5, True),
        ("c=lt.10", 9.5, True),
        ("c=eq.1.50", 1.5, True),
        ("c=eq.0.1", 0.1, True),  # the float's repr, not its binary expansion
        ("c=gt.1e2", 101, True),
        ("c=lt.1e2", 99.9, True),
        ("c=in.(1,2,3)", 2, True),
        ("c=in.(1,2,3)", 4, False),
        ("c=in.(2)", 2.0, True),
    ],
)
def test_numbers_compare_numerically(text: str, value: float, expected: bool) -> None:
    assert matches(text, value) is expected
    assert matches(text, value, "float8") is expected


@pytest.mark.parametrize(
    ("text", "value", "type_name", "expected"),
    [
        ("c=gt.9", "10.50", "numeric", True),
        ("c=eq.10.5", "10.50", "numeric", True),
        ("c=lt.9", "10.50", "numeric", False),
        ("c=gt.9", "10", "int8", True),
        ("c=in.(10.5,11)", "10.50", "numeric", True),
        # The same strings in a text column compare lexicographically.
        ("c=gt.9", "10.50", "text", False),
        ("c=gt.9", "10.50", None, False),
        ("c=eq.10.5", "10.50", "text", False),
    ],
)
def test_numeric_strings_compare_by_column_type(
    text: str, value: str, type_name: str | None, expected: bool
) -> None:
    assert matches(text, value, type_name) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("c=eq.abc", False),
        ("c=neq.abc", True),
        ("c=gt.abc", False),
        ("c=gte.abc", False),
        ("c=lt.abc", False),
        ("c=lte.abc", False),
        ("c=in.(abc,def)", False),
        ("c=eq.Infinity", False),
        ("c=neq.NaN", True),
    ],
)
def test_non_numeric_literal_against_a_number(text: str, expected: bool) -> None:
    assert matches(text, 10) is expected
    assert matches(text, 10.5) is expected
    assert matches(text, "10", "numeric") is expected


def test_non_numeric_value_in_a_numeric_column() -> None:
    assert matches("c=eq.1", "not-a-number", "numeric") is False
    assert matches("c=neq.1", "not-a-number", "numeric") is True


# --- matching: strings and booleans --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("c=eq.paid", "paid", True),
        ("c=eq.paid", "Paid", False),
        ("c=neq.paid", "open", True),
        ("c=neq.paid", "paid", False),
        ("c=gt.a", "b", True),
        ("c=lt.banana", "apple", True),
        ("c=gt.banana", "apple", False),
        ("c=lt.9", "10", True),  # lexicographic: "1" < "9"
        ("c=lte.abc", "abc", True),
        ("c=gte.abc", "abd", True),
        ("c=lt.a", "A", True),  # "A" (0x41) < "a" (0x61)
        ("c=in.(open,paid)", "paid", True),
        ("c=in.(open,paid)", "shipped", False),
        ('c=in.(a,"c,d")', "c,d", True),
        ('c=in.(a,"c,d")', "c", False),
    ],
)
def test_strings_compare_lexicographically(text: str, value: str, expected: bool) -> None:
    assert matches(text, value, "text") is expected


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("c=eq.true", True, True),
        ("c=eq.true", False, False),
        ("c=eq.false", False, True),
        ("c=eq.false", True, False),
        ("c=neq.true", False, True),
        ("c=neq.true", True, False),
        ("c=eq.TRUE", True, True),
        ("c=eq.t", True, True),
        ("c=eq.f", False, True),
        ("c=lt.true", False, True),
        ("c=gt.false", True, True),
        ("c=in.(true)", True, True),
        ("c=in.(false)", True, False),
        ("c=eq.yes", True, False),  # not a boolean literal: never equal
        ("c=neq.yes", True, True),
        ("c=eq.1", True, False),  # booleans are not compared as numbers
    ],
)
def test_booleans(text: str, value: bool, expected: bool) -> None:
    assert matches(text, value, "bool") is expected


def test_all_conditions_must_match() -> None:
    row_filter = parse_filter("status=eq.paid,total=gt.10")
    types = {"status": "text", "total": "numeric"}
    assert row_filter.matches({"status": "paid", "total": "12.00"}, types) is True
    assert row_filter.matches({"status": "paid", "total": "9.99"}, types) is False
    assert row_filter.matches({"status": "open", "total": "12.00"}, types) is False
    assert row_filter.matches({"status": "paid", "total": None}, types) is False


def test_filter_is_a_frozen_value() -> None:
    parsed = parse_filter("a=eq.1")
    assert isinstance(parsed, Filter)
    with pytest.raises(AttributeError):
        parsed.conditions = ()  # type: ignore[misc]
