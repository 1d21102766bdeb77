"""How the Supabase source turns Supabase's ``postgres_changes`` data into rtgw Changes."""

from __future__ import annotations

from realtime import RealtimePostgresChangesListenEvent

from gateway.changes import Column, Op
from gateway.sources.supabase import SupabaseSource, SupabaseSourceConfig

SOURCE = SupabaseSource(SupabaseSourceConfig(url="https://x.supabase.co", service_key="k",
                                             tables=(("public", "orders"),)))
COLUMNS = [{"name": "id", "type": "int8"}, {"name": "total", "type": "numeric"}]


def test_insert_update_delete_keep_their_rows_and_get_ordered_unique_ids() -> None:
    insert = SOURCE._change({
        "schema": "public", "table": "orders", "commit_timestamp": "2026-01-01T00:00:00.250Z",
        "type": RealtimePostgresChangesListenEvent.Insert, "columns": COLUMNS,
        "record": {"id": 1, "total": 12.5}, "errors": None,
    })
    assert (insert.op, insert.schema, insert.table) == (Op.INSERT, "public", "orders")
    assert insert.new == {"id": 1, "total": "12.5"} and insert.old is None  # as Postgres writes
    assert insert.columns == (Column("id", "int8"), Column("total", "numeric"))
    assert insert.commit_time == "2026-01-01T00:00:00.250Z"

    update = SOURCE._change({
        "schema": "public", "table": "orders", "commit_timestamp": "2026-01-01T00:00:00.250Z",
        "type": "UPDATE", "columns": COLUMNS, "record": {"id": 1, "total": 13},
        "old_record": {"id": 1, "total": 12.5}, "errors": None,
    })
    assert update.new == {"id": 1, "total": "13"} and update.old == {"id": 1, "total": "12.5"}
    assert update.id > insert.id  # same commit time: arrival decides

    delete = SOURCE._change({
        "schema": "public", "table": "orders", "commit_timestamp": "2026-01-01T00:00:01Z",
        "type": "DELETE", "columns": COLUMNS, "old_record": {"id": 1}, "errors": None,
    })
    assert delete.op is Op.DELETE and delete.new is None and delete.old == {"id": 1}
    assert delete.row == {"id": 1}


def test_numeric_numbers_from_supabase_become_digit_strings() -> None:
    change = SOURCE._change({
        "schema": "public", "table": "orders", "commit_timestamp": "2026-01-01T00:00:00Z",
        "type": "INSERT", "columns": COLUMNS + [{"name": "flag", "type": "bool"}],
        "record": {"id": 7, "total": 1e20, "flag": True}, "errors": None,
    })
    assert change.new == {"id": 7, "total": "100000000000000000000", "flag": True}
