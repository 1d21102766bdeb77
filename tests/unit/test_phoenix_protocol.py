"""The Phoenix (Supabase Realtime) protocol, sans-I/O: frames, joins, ids and event bodies."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.changes import Change, ChangeId, Column, Op
from gateway.channels import Channel, Partition
from gateway.encoding import loads
from gateway.errors import GatewayError
from gateway.events import TopicEvent
from gateway.phoenix import frames as phoenix
from gateway.phoenix.codec import CODEC, postgres_changes_data
from gateway.router import ChannelPayload

V1, V2 = phoenix.Serializer("1.0.0"), phoenix.Serializer("2.0.0")


def test_unknown_vsn_is_refused() -> None:
    with pytest.raises(ValueError):
        phoenix.Serializer("3.0.0")


def test_v1_objects_round_trip_without_join_ref_on_the_way_out() -> None:
    message = V1.decode(
        '{"topic":"realtime:a","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}'
    )
    assert message == phoenix.Message("realtime:a", "phx_join", {}, "1", "1")
    reply = phoenix.reply(message, "ok", {})
    assert loads(V1.encode(reply)) == {
        "topic": "realtime:a", "event": "phx_reply",
        "payload": {"status": "ok", "response": {}}, "ref": "1",
    }


def test_v2_arrays_round_trip() -> None:
    message = V2.decode('[null,"7","phoenix","heartbeat",{}]')
    assert message == phoenix.Message("phoenix", "heartbeat", {}, "7", None)
    assert V2.encode(phoenix.reply(message, "ok", {})) == (
        '[null,"7","phoenix","phx_reply",{"status":"ok","response":{}}]'
    )
    assert V2.decode('[1,2,"t","e",null]').ref == "2"  # integer refs become strings


@pytest.mark.parametrize(
    ("serializer", "frame"),
    [
        (V1, "not json"),
        (V1, "[1,2,3,4,5]"),
        (V2, '{"topic":"t","event":"e"}'),
        (V2, '[null,null,"t","e"]'),
        (V2, '[null,null,1,"e",{}]'),
        (V2, '[true,null,"t","e",{}]'),
        (V1, b"\x03\x01\x01\x01\x01\x00\x01jrte"),
        (V2, b"\x04\x01\x01\x01\x01\x00\x01jrte"),
        (V2, b"\x03\x01\x01\x09\x01\x00\x01jrt"),
    ],
)
def test_malformed_frames_are_refused(serializer: phoenix.Serializer, frame: str | bytes) -> None:
    with pytest.raises(phoenix.PhoenixFrameError):
        serializer.decode(frame)


def test_v2_binary_broadcast_pushes_are_read_up_to_their_header() -> None:
    topic = b"realtime:room"
    frame = b"\x03\x01\x01" + bytes([len(topic)]) + b"\x04\x00\x01" + b"19" + topic + b"ping{}"
    assert V2.decode(frame) == phoenix.Message("realtime:room", "broadcast", {"event": "ping"},
                                               "9", "1")


def test_spliced_event_parts_equal_an_encoded_push() -> None:
    payload = {"ids": [1], "data": {"x": 1}}
    for serializer in (V1, V2):
        head, tail = serializer.parts("realtime:r", "postgres_changes")
        spliced = head + b'{"ids":[1],"data":{"x":1}}' + tail
        expected = serializer.encode(phoenix.Message("realtime:r", "postgres_changes", payload))
        assert loads(spliced) == loads(expected)


def test_join_parses_bindings_with_defaults_and_stable_nonzero_ids() -> None:
    raw = [
        {"event": "insert", "schema": "public", "table": "orders", "filter": "id=eq.1"},
        {"event": "*", "table": "orders"},
    ]
    join = phoenix.parse_join(
        {"config": {"postgres_changes": raw, "broadcast": {"self": True},
                    "presence": {"enabled": True}}, "access_token": "tok"}
    )
    assert join.access_token == "tok"
    first, second = join.bindings
    assert (first.event, first.schema, first.table, first.filter) == (
        "INSERT", "public", "orders", "id=eq.1"
    )
    assert (second.event, second.schema, second.filter) == ("*", "public", None)
    assert first.raw == raw[0]  # echoed as sent
    assert first.id == phoenix.binding_id(dict(raw[0])) != second.id
    assert all(0 < b.id < 2**27 for b in join.bindings)
    assert first.wants("INSERT") and not first.wants("UPDATE") and second.wants("DELETE")
    assert phoenix.parse_join({"config": {}}).bindings == ()
    assert phoenix.parse_join({"user_token": "u"}).access_token == "u"


@pytest.mark.parametrize(
    "payload",
    [
        None,
        {"config": []},
        {"config": {"postgres_changes": {}}},
        {"config": {"postgres_changes": ["orders"]}},
        {"config": {"postgres_changes": [{"event": "TRUNCATE", "table": "orders"}]}},
        {"config": {"postgres_changes": [{"event": "*", "table": 5}]}},
        {"access_token": 5},
    ],
)
def test_bad_joins_are_bad_bindings(payload: Any) -> None:
    with pytest.raises(GatewayError) as refused:
        phoenix.parse_join(payload)
    assert refused.value.code == "bad_binding"


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
    insert = postgres_changes_data(_change(Op.INSERT, row, None), CHANNEL)
    assert insert == {
        "schema": "public", "table": "notes", "commit_timestamp": "2026-01-01T00:00:00.123Z",
        "type": "INSERT",
        "columns": [{"name": "id", "type": "int8"}, {"name": "user_id", "type": "uuid"},
                    {"name": "title", "type": "text"}],
        "record": {"id": 1, "user_id": "u", "title": "t"}, "errors": None,
    }
    update = postgres_changes_data(_change(Op.UPDATE, row, None), CHANNEL)
    assert update["old_record"] == {} and update["record"]["title"] == "t"
    delete = postgres_changes_data(_change(Op.DELETE, None, row), CHANNEL)
    assert "record" not in delete and delete["old_record"] == {"id": 1, "user_id": "u",
                                                                "title": "t"}


def test_channel_payload_encodes_the_supabase_data_once() -> None:
    payload = ChannelPayload(_change(Op.INSERT, {"id": 1, "user_id": "u", "title": "t"}, None),
                             CHANNEL)
    first = TopicEvent("a", 1, "e", payload).encoded(CODEC)
    assert TopicEvent("b", 1, "e", payload).encoded(CODEC) is first  # shared by its topics
    assert payload.op == "INSERT"
    assert loads(first)["record"] == {"id": 1, "user_id": "u", "title": "t"}


def test_system_and_close_messages() -> None:
    system = phoenix.system("realtime:room1", "3", "postgres_changes", "ok", "Subscribed")
    assert loads(V2.encode(system)) == [
        "3", None, "realtime:room1", "system",
        {"extension": "postgres_changes", "status": "ok", "message": "Subscribed",
         "channel": "room1"},
    ]
    assert loads(V2.encode(phoenix.close("realtime:room1", "3"))) == [
        "3", "3", "realtime:room1", "phx_close", {}
    ]
    error = phoenix.error_reply(phoenix.Message("realtime:x", "phx_join", {}, "1", "1"),
                                GatewayError("forbidden", "no"))
    assert error.payload == {"status": "error", "response": {"reason": "forbidden: no"}}
