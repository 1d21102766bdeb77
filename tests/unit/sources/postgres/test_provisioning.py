"""Provisioning, read from query rows: what the publication, the slot and the tables lack, and
which channels the table's replica identity cannot serve, each with the fix it names."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.changes import Op
from gateway.channels import Channel, Lookup, Partition
from gateway.sources.postgres.provisioning import (
    Publication,
    Slot,
    TableInfo,
    identity_problem,
    identity_problems,
    read_tables,
    table_problems,
    tables_params,
)

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


def test_a_publication_names_what_it_does_not_publish_and_the_fix() -> None:
    assert Publication.from_row("p", None) is None
    row = (True, False, True, False, [["public", "orders"]])
    publication = Publication.from_row("p", row)
    assert publication == Publication("p", ("update", "truncate"),
                                      frozenset({("public", "orders")}))
    assert publication.problems([("public", "orders"), ("app", "notes")]) == [
        "publication p does not publish update, truncate: ALTER PUBLICATION p SET "
        "(publish = 'insert, update, delete, truncate');",
        "publication p does not include app.notes, so its changes never arrive: "
        "ALTER PUBLICATION p ADD TABLE app.notes;",
    ]
    complete = Publication.from_row("p", (True, True, True, True, []))
    assert complete is not None and complete.problems([]) == []


def test_a_slot_names_why_it_cannot_serve_and_the_fix() -> None:
    assert Slot.from_row("s", None) is None
    healthy = Slot.from_row("s", ("pgoutput", "logical", False, None, "reserved", 23_456))
    assert healthy == Slot("s", "pgoutput", "logical", False, None, "reserved", 23_456)
    assert healthy.problems() == [] and not healthy.lost
    busy_and_lost = Slot.from_row("s", ("pgoutput", "logical", True, 42, "lost", None))
    assert busy_and_lost is not None and busy_and_lost.lost
    assert busy_and_lost.confirmed_flush == 0
    assert busy_and_lost.problems() == [
        "slot s is in use by another process (pid 42): stop the other consumer or set "
        "RTGW_SLOT to another name",
        "slot s was invalidated (its WAL was removed): drop it "
        "(SELECT pg_drop_replication_slot('s');) and let rtgw serve recreate it",
    ]
    physical = Slot.from_row("s", (None, "physical", False, None, None, None))
    assert physical is not None and physical.problems() == [physical.kind_problem()]
    assert physical.problems()[0].startswith("slot s is a physical slot with plugin None, not "
                                             "pgoutput: drop it")


def test_tables_are_read_by_name_and_checked_against_their_channels() -> None:
    partitioned = channel(partition=Partition("owner", "sub"), filterable=frozenset({"status"}))
    missing = channel(name="m", table="gone")
    assert tables_params([partitioned, missing, partitioned]) == (
        ["public", "public"], ["gone", "t"]
    )
    tables = read_tables([("public", "t", "d", ["id"], ["id", "owner"])])
    assert tables == {("public", "t"): TableInfo("d", frozenset({"id"}),
                                                 frozenset({"id", "owner"}))}
    assert table_problems(partitioned, tables) == [
        "c.toml: channel 'c': column 'status' is not in public.t"
    ]
    assert table_problems(missing, tables) == [
        "c.toml: channel 'm': table public.gone does not exist"
    ]
    # A missing table has no replica identity to speak of: only its own line, above.
    assert identity_problems([partitioned, missing], tables) == [
        identity_problem(partitioned, "d", ["id"])
    ]


def test_lookups_are_checked_against_their_tables_too() -> None:
    lookup = Lookup("customer", "public", "customers", (("customer_id", "id"),), ("name", "x"))
    gone = Lookup("owner", "public", "owners", (("customer_id", "id"),), ("name",))
    orders = channel(table="orders", lookups=(lookup, gone))
    assert tables_params([orders]) == (["public"] * 3, ["customers", "orders", "owners"])
    tables = {
        ("public", "orders"): TableInfo("f", frozenset(), frozenset({"id"})),
        ("public", "customers"): TableInfo("f", frozenset(), frozenset({"id", "name"})),
    }
    assert table_problems(orders, tables) == [
        "c.toml: channel 'c': column 'customer_id' is not in public.orders",
        "c.toml: channel 'c': lookup 'customer': column 'x' is not in public.customers",
        "c.toml: channel 'c': lookup 'owner': table public.owners does not exist",
    ]
