"""The Phoenix (Supabase Realtime) protocol, sans-I/O: frames, joins, ids and event bodies."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.encoding import loads
from gateway.errors import GatewayError
from gateway.phoenix import frames as phoenix

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
