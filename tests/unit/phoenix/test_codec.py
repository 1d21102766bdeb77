"""gateway.phoenix.codec: a change as ``postgres_changes`` ``data``, encoded once per payload."""

from __future__ import annotations

from typing import Any

from gateway.changes import Change, ChangeId, Column, Op
from gateway.channels import Channel, Partition
from gateway.encoding import loads
from gateway.events import TopicEvent
from gateway.phoenix.codec import CODEC, postgres_changes_data
from gateway.router import ChannelPayload

CHANNEL = Channel(
    name="mine", schema="public", table="notes", operations=frozenset(Op), scopes=frozenset(),
    columns=("id", "user_id", "title"), filterable=None,
    partition=Partition("user_id", "sub"), source="t.toml",
)
COLUMNS = tuple(Column(n, t) for n, t in (("id", "int8"), ("user_id", "uuid"), ("title", "text"),
                                          ("secret", "text")))


def _change(op: Op, new: dict[str, Any] | None, old: dict[str, Any] | None) -> Change:
    return Change(ChangeId(1, 0), "public", "notes", op, 1_767_225_600_123_000, COLUMNS, new,
                  old)


def test_postgres_changes_data_has_supabase_shape_and_the_channel_projection() -> None:
    row = {"id": 1, "user_id": "u", "title": "t", "secret": "s"}
    insert = postgres_changes_data(ChannelPayload(_change(Op.INSERT, row, None), CHANNEL))
    assert insert == {
        "schema": "public", "table": "notes", "commit_timestamp": "2026-01-01T00:00:00.123Z",
        "type": "INSERT",
        "columns": [{"name": "id", "type": "int8"}, {"name": "user_id", "type": "uuid"},
                    {"name": "title", "type": "text"}],
        "record": {"id": 1, "user_id": "u", "title": "t"}, "errors": None,
    }
    update = postgres_changes_data(ChannelPayload(_change(Op.UPDATE, row, None), CHANNEL))
    assert update["old_record"] == {} and update["record"]["title"] == "t"
    delete = postgres_changes_data(ChannelPayload(_change(Op.DELETE, None, row), CHANNEL))
    assert "record" not in delete and delete["old_record"] == {"id": 1, "user_id": "u",
                                                                "title": "t"}


def test_channel_payload_encodes_the_supabase_data_once() -> None:
    payload = ChannelPayload(_change(Op.INSERT, {"id": 1, "user_id": "u", "title": "t"}, None),
                             CHANNEL)
    first = TopicEvent("a", 1, "e", payload).encoded(CODEC)
    assert TopicEvent("b", 1, "e", payload).encoded(CODEC) is first  # shared by its topics
    assert payload.op == "INSERT"
    assert loads(first)["record"] == {"id": 1, "user_id": "u", "title": "t"}


def test_numeric_values_are_json_numbers_with_their_exact_digits() -> None:
    columns = (Column("id", "int8"), Column("total", "numeric"), Column("parts", "_numeric"),
               Column("label", "text"))
    channel = Channel(name="o", schema="public", table="o", operations=frozenset(Op),
                      scopes=frozenset(), columns=None, filterable=None, partition=None,
                      source="t.toml")
    row = {"id": 1, "total": "12.50", "parts": [["0.10", None], ["NaN", "-3"]],
           "label": "12.50"}
    old = {**row, "total": "Infinity"}
    change = Change(ChangeId(1, 0), "public", "o", Op.UPDATE, 0, columns, row, old)
    encoded = TopicEvent("o", 1, "e", ChannelPayload(change, channel)).encoded(CODEC)
    assert b'"total":12.50' in encoded  # the digits as Postgres wrote them, not a float
    data = loads(encoded)
    assert data["record"]["parts"] == [[0.1, None], ["NaN", -3]]
    assert data["record"]["label"] == "12.50"  # text stays text
    assert data["old_record"]["total"] == "Infinity"  # JSON has no infinity
    assert change.new is not None and change.new["total"] == "12.50"  # the change is untouched
