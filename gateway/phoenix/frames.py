"""The Phoenix channel protocol as Supabase Realtime speaks it: frames, joins, and event bodies.

Sans-I/O: values in, values out. Two serializations share one ``Message``:

* vsn 1.0.0 (realtime-py): JSON objects ``{topic, event, payload, ref, join_ref}``; the server
  never sends ``join_ref``.
* vsn 2.0.0 (realtime-js): JSON arrays ``[join_ref, ref, topic, event, payload]``.

A ``postgres_changes`` event is spliced from pre-encoded parts (``Serializer.parts``), so the
change body (phoenix/codec.py) is encoded once per channel, never per client.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from gateway.encoding import dumps, dumps_text, loads
from gateway.errors import GatewayError

VSN_1, VSN_2 = "1.0.0", "2.0.0"
PHOENIX_TOPIC = "phoenix"
TOPIC_PREFIX = "realtime:"
EVENTS = ("INSERT", "UPDATE", "DELETE", "*")
USER_BROADCAST_PUSH = 3  # the kind byte of a vsn 2.0.0 binary broadcast push
_ID_RANGE = 2**27 - 1  # the range of Erlang's phash2, which Supabase uses for binding ids


class PhoenixFrameError(GatewayError):
    """A frame that is not a Phoenix message (``bad_frame``)."""

    def __init__(self, message: str) -> None:
        super().__init__("bad_frame", message)


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    event: str
    payload: Any
    ref: str | None = None
    join_ref: str | None = None


ROW_OPS = frozenset({"INSERT", "UPDATE", "DELETE"})


@dataclass(frozen=True, slots=True)
class Binding:
    """One ``postgres_changes`` entry of a join: ``raw`` is echoed back with ``id`` added."""

    event: str  # INSERT, UPDATE, DELETE or *
    schema: str
    table: str
    filter: str | None
    raw: dict[str, Any]
    id: int

    def wants(self, op: str) -> bool:
        """Row changes only (Supabase has no TRUNCATE event, and published messages are not
        postgres_changes): ``*`` means INSERT, UPDATE and DELETE."""
        return op in ROW_OPS and (self.event == "*" or self.event == op)


@dataclass(frozen=True, slots=True)
class Join:
    bindings: tuple[Binding, ...]
    access_token: str | None


class Serializer:
    """Encodes and decodes one ``vsn``. Raises ``ValueError`` for an unknown version."""

    def __init__(self, vsn: str) -> None:
        if vsn not in (VSN_1, VSN_2):
            raise ValueError(vsn)
        self.vsn = vsn

    def decode(self, data: str | bytes) -> Message:
        if isinstance(data, bytes):
            return self._decode_binary(data)
        try:
            frame = loads(data)
        except ValueError:
            raise PhoenixFrameError("frame is not valid JSON") from None
        if self.vsn == VSN_2:
            if not isinstance(frame, list) or len(frame) != 5:
                raise PhoenixFrameError("vsn 2.0.0 frames are [join_ref, ref, topic, event, data]")
            join_ref, ref, topic, event, payload = frame
        else:
            if not isinstance(frame, dict):
                raise PhoenixFrameError("vsn 1.0.0 frames are JSON objects")
            join_ref, ref = frame.get("join_ref"), frame.get("ref")
            topic, event, payload = frame.get("topic"), frame.get("event"), frame.get("payload")
        if not isinstance(topic, str) or not isinstance(event, str):
            raise PhoenixFrameError("'topic' and 'event' must be strings")
        return Message(topic, event, payload, _ref(ref), _ref(join_ref))

    def _decode_binary(self, data: bytes) -> Message:
        """vsn 2.0.0 sends ``broadcast`` pushes as binary: kind 3, five length bytes (join_ref,
        ref, topic, event, metadata), an encoding byte, then those fields and the payload. Only
        the header is read, so the push can be answered (rtgw relays no broadcasts)."""
        if self.vsn != VSN_2 or len(data) < 7 or data[0] != USER_BROADCAST_PUSH:
            raise PhoenixFrameError("binary frames are only vsn 2.0.0 broadcast pushes")
        fields, offset = [], 7
        for size in data[1:5]:
            fields.append(data[offset : offset + size].decode("latin-1"))
            offset += size
        if offset > len(data):
            raise PhoenixFrameError("the binary frame is shorter than its header says")
        join_ref, ref, topic, event = fields
        return Message(topic, "broadcast", {"event": event}, ref or None, join_ref or None)

    def encode(self, message: Message) -> str:
        if self.vsn == VSN_2:
            return dumps_text(
                [message.join_ref, message.ref, message.topic, message.event, message.payload]
            )
        return dumps_text(
            {"topic": message.topic, "event": message.event, "payload": message.payload,
             "ref": message.ref}
        )

    def parts(self, topic: str, event: str) -> tuple[bytes, bytes]:
        """The bytes before and after the payload of a push with no refs."""
        if self.vsn == VSN_2:
            return b"[null,null,%s,%s," % (dumps(topic), dumps(event)), b"]"
        return b'{"topic":%s,"event":%s,"payload":' % (dumps(topic), dumps(event)), b',"ref":null}'


def _ref(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)
    raise PhoenixFrameError("refs must be strings or integers")


def reply(request: Message, status: str, response: dict[str, Any]) -> Message:
    return Message(
        request.topic, "phx_reply", {"status": status, "response": response}, request.ref,
        request.join_ref,
    )


def error_reply(request: Message, error: GatewayError) -> Message:
    """Supabase's join error shape: ``{"reason": "<Code>: <message>"}``."""
    return reply(request, "error", {"reason": f"{error.code}: {error.message}"})


def system(topic: str, join_ref: str | None, extension: str, status: str, text: str) -> Message:
    payload = {
        "extension": extension, "status": status, "message": text,
        "channel": topic.removeprefix(TOPIC_PREFIX),
    }
    return Message(topic, "system", payload, None, join_ref)


def channel_error(topic: str, join_ref: str | None, reason: str) -> Message:
    """``phx_error``: the clients' channel error (realtime-js and realtime-py: CHANNEL_ERROR)."""
    return Message(topic, "phx_error", {"reason": reason}, join_ref, join_ref)


def close(topic: str, join_ref: str | None) -> Message:
    return Message(topic, "phx_close", {}, join_ref, join_ref)


def binding_id(raw: dict[str, Any]) -> int:
    """A stable, non-zero integer for a binding (the same binding always gets the same id)."""
    return zlib.crc32(dumps(sorted(raw.items(), key=lambda item: item[0]))) % _ID_RANGE + 1


def parse_join(payload: object) -> Join:
    """Read a ``phx_join`` payload. Broadcast and presence configs are accepted and ignored.
    Raises ``GatewayError("bad_binding")``."""
    if not isinstance(payload, dict):
        raise GatewayError("bad_binding", "the phx_join payload must be an object")
    token = payload.get("access_token", payload.get("user_token"))
    if token is not None and not isinstance(token, str):
        raise GatewayError("bad_binding", "'access_token' must be a string")
    config = payload.get("config", {})
    if not isinstance(config, dict):
        raise GatewayError("bad_binding", "'config' must be an object")
    entries = config.get("postgres_changes", [])
    if not isinstance(entries, list):
        raise GatewayError("bad_binding", "'config.postgres_changes' must be a list")
    return Join(tuple(_binding(entry) for entry in entries), token)


def _binding(raw: object) -> Binding:
    if not isinstance(raw, dict):
        raise GatewayError("bad_binding", "each postgres_changes binding must be an object")
    event = raw.get("event", "*")
    if not isinstance(event, str) or event.upper() not in EVENTS:
        raise GatewayError("bad_binding", f"'event' must be one of {', '.join(EVENTS)}")
    schema, table, row_filter = raw.get("schema"), raw.get("table"), raw.get("filter")
    for name, value in (("schema", schema), ("table", table), ("filter", row_filter)):
        if value is not None and not isinstance(value, str):
            raise GatewayError("bad_binding", f"'{name}' must be a string")
    return Binding(
        event=event.upper(),
        schema=schema or "public",
        table=table or "*",
        filter=row_filter or None,
        raw=dict(raw),
        id=binding_id(raw),
    )
