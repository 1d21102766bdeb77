"""gateway.native.frames: client frames parsed into commands, server frames built."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.encoding import dumps_text, loads
from gateway.errors import GatewayError
from gateway.hub import Since, Subscription
from gateway.native.frames import (
    Auth,
    FrameError,
    Ping,
    Refresh,
    Subscribe,
    Unsubscribe,
    error_frame,
    parse_frame,
    pong_frame,
    ready_frame,
    refreshed_frame,
    subscribed_frame,
    unsubscribed_frame,
)


def frame(**fields: Any) -> str:
    return dumps_text(fields)


def refused(text: str | bytes) -> FrameError:
    with pytest.raises(FrameError) as caught:
        parse_frame(text)
    assert caught.value.code == "bad_frame"
    assert isinstance(caught.value, GatewayError)
    return caught.value


# --- client frames: the happy paths ----------------------------------------------------------


def test_auth() -> None:
    assert parse_frame(frame(type="auth", ref="1", token="t.o.k")) == Auth("1", "t.o.k")


def test_refresh() -> None:
    assert parse_frame(frame(type="refresh", ref="9", token="new")) == Refresh("9", "new")


def test_subscribe_minimal() -> None:
    assert parse_frame(frame(type="subscribe", channel="orders")) == Subscribe(
        None, "orders", None, None
    )


def test_subscribe_with_filter_and_since() -> None:
    parsed = parse_frame(
        frame(
            type="subscribe",
            ref="2",
            channel="orders",
            filter="status=eq.paid",
            since={"offset": 17, "epoch": "5f0e9a1c"},
        )
    )
    assert parsed == Subscribe("2", "orders", "status=eq.paid", Since(17, "5f0e9a1c"))


def test_subscribe_empty_filter_means_none() -> None:
    parsed = parse_frame(frame(type="subscribe", channel="orders", filter=""))
    assert isinstance(parsed, Subscribe)
    assert parsed.filter is None


def test_subscribe_null_filter_and_since() -> None:
    parsed = parse_frame(frame(type="subscribe", channel="orders", filter=None, since=None))
    assert parsed == Subscribe(None, "orders", None, None)


def test_subscribe_since_zero() -> None:
    parsed = parse_frame(frame(type="subscribe", channel="c", since={"offset": 0, "epoch": ""}))
    assert isinstance(parsed, Subscribe)
    assert parsed.since == Since(0, "")


def test_unsubscribe() -> None:
    assert parse_frame(frame(type="unsubscribe", ref="3", topic="orders?status=eq.paid")) == (
        Unsubscribe("3", "orders?status=eq.paid")
    )


def test_ping() -> None:
    assert parse_frame(frame(type="ping", ref="p")) == Ping("p")
    assert parse_frame(frame(type="ping")) == Ping(None)


def test_bytes_are_accepted() -> None:
    assert parse_frame(b'{"type":"ping","ref":"b"}') == Ping("b")


def test_unknown_fields_are_ignored() -> None:
    assert parse_frame(frame(type="ping", ref="1", extra={"x": 1})) == Ping("1")


@pytest.mark.parametrize(("ref", "expected"), [(7, "7"), (0, "0"), (-3, "-3"), ("abc", "abc")])
def test_integer_refs_become_strings(ref: int | str, expected: str) -> None:
    parsed = parse_frame(frame(type="ping", ref=ref))
    assert parsed == Ping(expected)
    parsed = parse_frame(frame(type="auth", ref=ref, token="t"))
    assert parsed.ref == expected


def test_null_ref_is_none() -> None:
    assert parse_frame(frame(type="ping", ref=None)).ref is None


# --- client frames: errors -------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "{", "not json", "{'type': 'ping'}", b"\xff\xfe"])
def test_invalid_json(text: str | bytes) -> None:
    error = refused(text)
    assert error.message == "frame is not valid JSON"
    assert error.ref is None


@pytest.mark.parametrize("text", ["[]", '"ping"', "1", "null", "true"])
def test_not_an_object(text: str) -> None:
    error = refused(text)
    assert error.message == "frame must be a JSON object"
    assert error.ref is None


@pytest.mark.parametrize("ref", [1.5, [1], {"a": 1}])
def test_bad_ref_type(ref: Any) -> None:
    error = refused(frame(type="ping", ref=ref))
    assert "'ref' must be a string or an integer" in error.message
    assert error.ref is None  # the ref itself was unreadable


def test_missing_type_carries_the_ref() -> None:
    error = refused(frame(ref="r1"))
    assert error.message == "frame has no 'type'"
    assert error.ref == "r1"
    assert refused(frame(type=None, ref=5)).ref == "5"


@pytest.mark.parametrize("kind", ["subscribed", "AUTH", 3, ["auth"]])
def test_unknown_type(kind: Any) -> None:
    error = refused(frame(type=kind, ref=4))
    assert "unknown frame type" in error.message
    assert repr(kind) in error.message
    assert error.ref == "4"


@pytest.mark.parametrize("kind", ["auth", "refresh"])
@pytest.mark.parametrize("token", [None, "", 5, ["t"]])
def test_token_required(kind: str, token: Any) -> None:
    fields: dict[str, Any] = {"type": kind, "ref": "a"}
    if token is not None:
        fields["token"] = token
    error = refused(dumps_text(fields))
    assert error.message == f"'{kind}' needs a non-empty string 'token'"
    assert error.ref == "a"


@pytest.mark.parametrize("channel", [None, "", 5, ["orders"]])
def test_subscribe_needs_a_channel(channel: Any) -> None:
    error = refused(frame(type="subscribe", ref="s", channel=channel))
    assert error.message == "'subscribe' needs a string 'channel'"
    assert error.ref == "s"


@pytest.mark.parametrize("row_filter", [5, ["status=eq.paid"], {"status": "paid"}, True])
def test_subscribe_filter_must_be_a_string(row_filter: Any) -> None:
    error = refused(frame(type="subscribe", ref="s", channel="orders", filter=row_filter))
    assert "'filter' must be a string" in error.message
    assert error.ref == "s"


@pytest.mark.parametrize("since", [5, "5", [5, "e"], True])
def test_since_must_be_an_object(since: Any) -> None:
    error = refused(frame(type="subscribe", ref=1, channel="orders", since=since))
    assert error.message == "'since' must be an object {offset, epoch}"
    assert error.ref == "1"


@pytest.mark.parametrize("offset", [None, -1, 1.0, "3", True, False, [1]])
def test_since_offset_must_be_a_non_negative_integer(offset: Any) -> None:
    since = {"epoch": "e"} if offset is None else {"offset": offset, "epoch": "e"}
    error = refused(frame(type="subscribe", ref="s", channel="orders", since=since))
    assert error.message == "'since.offset' must be a non-negative integer"
    assert error.ref == "s"


@pytest.mark.parametrize("epoch", [None, 5, ["e"]])
def test_since_epoch_must_be_a_string(epoch: Any) -> None:
    since = {"offset": 1} if epoch is None else {"offset": 1, "epoch": epoch}
    error = refused(frame(type="subscribe", ref="s", channel="orders", since=since))
    assert error.message == "'since.epoch' must be a string"
    assert error.ref == "s"


@pytest.mark.parametrize("topic", [None, "", 5])
def test_unsubscribe_needs_a_topic(topic: Any) -> None:
    error = refused(frame(type="unsubscribe", ref="u", topic=topic))
    assert error.message == "'unsubscribe' needs a string 'topic'"
    assert error.ref == "u"


def test_frame_error_has_no_close_code() -> None:
    error = FrameError("x", "r")
    assert error.close_code is None
    assert str(error) == "bad_frame: x"
    assert FrameError("y").ref is None


# --- server frames ---------------------------------------------------------------------------


def test_ready_frame() -> None:
    text = ready_frame("9f2c4e1a7b3d", "user-42", 1767225600.0)
    assert isinstance(text, str)
    assert loads(text) == {
        "type": "ready",
        "connection_id": "9f2c4e1a7b3d",
        "sub": "user-42",
        "expires_at": 1767225600.0,
    }
    assert loads(ready_frame("c", None, 1.5))["sub"] is None


def test_subscribed_frame_with_recovered() -> None:
    sub = Subscription("orders?status=eq.paid", 17, "5f0e9a1c", True, ())
    assert loads(subscribed_frame("2", "orders", sub)) == {
        "type": "subscribed",
        "ref": "2",
        "channel": "orders",
        "topic": "orders?status=eq.paid",
        "offset": 17,
        "epoch": "5f0e9a1c",
        "recovered": True,
    }
    sub = Subscription("orders", 3, "e", False, ())
    assert loads(subscribed_frame(None, "orders", sub))["recovered"] is False


def test_subscribed_frame_without_since_has_no_recovered() -> None:
    sub = Subscription("orders", 0, "e", None, ())
    decoded = loads(subscribed_frame(None, "orders", sub))
    assert "recovered" not in decoded
    assert decoded == {
        "type": "subscribed",
        "ref": None,
        "channel": "orders",
        "topic": "orders",
        "offset": 0,
        "epoch": "e",
    }


def test_subscribed_frame_does_not_carry_the_backlog() -> None:
    sub = Subscription("orders", 2, "e", True, ('{"type":"event"}',))
    assert "backlog" not in loads(subscribed_frame("1", "orders", sub))


def test_unsubscribed_frame() -> None:
    assert loads(unsubscribed_frame("3", "orders")) == {
        "type": "unsubscribed",
        "ref": "3",
        "topic": "orders",
        "reason": None,
    }
    assert loads(unsubscribed_frame(None, "orders", "forbidden"))["reason"] == "forbidden"


def test_refreshed_frame() -> None:
    assert loads(refreshed_frame("r", 2.5)) == {"type": "refreshed", "ref": "r", "expires_at": 2.5}


def test_error_frame() -> None:
    error = GatewayError("forbidden", "channel 'orders' requires scope 'orders:read'")
    assert loads(error_frame(error, "2")) == {
        "type": "error",
        "code": "forbidden",
        "message": "channel 'orders' requires scope 'orders:read'",
        "ref": "2",
    }
    default = loads(error_frame(GatewayError("not_ready")))
    assert default["ref"] is None
    assert default["message"] == "The source is not streaming yet."


def test_error_frame_from_a_frame_error() -> None:
    error = refused(frame(type="nope", ref=11))
    decoded = loads(error_frame(error, error.ref))
    assert decoded["code"] == "bad_frame"
    assert decoded["ref"] == "11"
    assert "unknown frame type 'nope'" in decoded["message"]


def test_pong_frame() -> None:
    assert loads(pong_frame("p")) == {"type": "pong", "ref": "p"}
    assert loads(pong_frame(None)) == {"type": "pong", "ref": None}


def test_server_frames_escape_text() -> None:
    text = unsubscribed_frame('"quoted"\n', 'orders?x=in.("a,b")')
    assert loads(text)["ref"] == '"quoted"\n'
    assert loads(text)["topic"] == 'orders?x=in.("a,b")'


@pytest.mark.parametrize("ref", ["true", "false"])
def test_boolean_ref_is_refused(ref: str) -> None:
    with pytest.raises(FrameError):
        parse_frame('{"type":"ping","ref":' + ref + "}")
