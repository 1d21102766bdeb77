"""Which channels the table's replica identity cannot serve, and the fix each line names."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.changes import Op
from gateway.channels import Channel, Partition
from gateway.sources.inspect import identity_problem

ALL = frozenset(Op)


def channel(**overrides: Any) -> Channel:
    values: dict[str, Any] = {
        "name": "c", "schema": "public", "table": "t", "operations": ALL,
        "scopes": frozenset(), "columns": None, "filterable": frozenset(), "partition": None,
        "source": "c.toml",
    }
    values.update(overrides)
    return Channel(**values)


def test_full_identity_serves_every_channel() -> None:
    wide = channel(filterable=None, partition=Partition("owner", "sub"))
    assert identity_problem(wide, "f", []) is None


def test_a_channel_without_partition_or_filters_needs_no_old_rows() -> None:
    assert identity_problem(channel(), "d", ["id"]) is None
    assert identity_problem(channel(operations=frozenset({Op.INSERT}), filterable=None),
                            "n", []) is None


def test_partition_outside_the_key_withholds_deletes() -> None:
    line = identity_problem(channel(partition=Partition("owner", "sub")), "d", ["id"])
    assert line is not None
    assert line.startswith("c.toml: channel 'c' needs old rows that public.t does not provide")
    assert "DELETEs are withheld" in line and "'owner'" in line
    assert line.endswith("Run: ALTER TABLE public.t REPLICA IDENTITY FULL;")


def test_partition_in_the_key_still_lacks_old_rows_for_updates() -> None:
    partitioned = channel(partition=Partition("owner", "sub"))
    line = identity_problem(partitioned, "i", ["owner", "id"])
    assert line is not None and "withheld" not in line and "UPDATEs carry no old row" in line
    inserts_deletes = channel(partition=Partition("owner", "sub"),
                              operations=frozenset({Op.INSERT, Op.DELETE}))
    assert identity_problem(inserts_deletes, "i", ["owner", "id"]) is None


@pytest.mark.parametrize("filterable", [None, frozenset({"status"})])
def test_filterable_columns_outside_the_key_cannot_match_deletes(
    filterable: frozenset[str] | None,
) -> None:
    line = identity_problem(channel(filterable=filterable, operations=frozenset({Op.DELETE})),
                            "d", ["id"])
    assert line is not None and "filtered subscriptions cannot match DELETEs" in line


def test_names_that_need_quoting_are_quoted() -> None:
    odd = channel(schema="Sales", table='my"table', partition=Partition("owner", "sub"))
    line = identity_problem(odd, "d", ["id"])
    assert line is not None
    assert line.endswith('ALTER TABLE "Sales"."my""table" REPLICA IDENTITY FULL;')
