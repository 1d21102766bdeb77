"""The native protocol's codec: a topic's event as an ``event`` frame, encoded once per event
(as text and as a complete WebSocket frame, the same bytes for every socket); the change body
once per payload, shared by the payload's topics."""

from __future__ import annotations

from typing import Any

from gateway.encoding import dumps
from gateway.events import Payload, TopicEvent
from gateway.publish import MessagePayload
from gateway.router import ChannelPayload, Shape
from gateway.session import Frame
from gateway.transport.wsframe import text_frame


def change_body(payload: ChannelPayload) -> dict[str, Any]:
    """The change as the native protocol's ``change`` object, in the payload's shape, with the
    channel's projection. A row that moved into the topic (its partition) arrives as an INSERT
    marked ``"moved": "in"``; one that moved out of it, or out of the topic's filter, as a
    DELETE of its previous values marked ``"moved": "out"``. An event a custom enricher failed
    on is marked ``"enriched": false`` with the enrichers' names in ``failed``."""
    change, keep = payload.change, payload.channel.columns
    new, old = payload.rows()
    body: dict[str, Any] = {
        "id": str(change.id),
        "schema": change.schema,
        "table": change.table,
        "op": payload.op,
        "commit_time": change.commit_time,
        "new": new,
        "old": old,
    }
    if payload.shape is not Shape.CHANGE:
        body["moved"] = "in" if payload.shape is Shape.ENTERED else "out"
    if payload.enriched.failed:  # a custom enricher raised or timed out: its value is null
        body["enriched"] = False
        body["failed"] = list(payload.enriched.failed)
    unchanged = change.unchanged
    if unchanged and new is not None:
        body["unchanged"] = [c for c in unchanged if keep is None or c in keep]
    return body


class NativeCodec:
    """Encodes ``{"type":"event","topic","offset","epoch","change"|"message"}``."""

    def encode(self, event: TopicEvent) -> Frame:
        key, body = self._body(event.payload)
        encoded = b"".join(
            (
                b'{"type":"event","topic":',
                dumps(event.topic),
                b',"offset":%d,"epoch":"%s","%s":' % (event.offset, event.epoch.encode(), key),
                body,
                b"}",
            )
        )
        return encoded.decode(), text_frame(encoded)

    def _body(self, payload: Payload) -> tuple[bytes, bytes]:
        if isinstance(payload, MessagePayload):
            return b"message", payload.body
        cache = payload.encodings
        body = cache.get(self)
        if body is None:
            assert isinstance(payload, ChannelPayload), payload
            body = cache[self] = dumps(change_body(payload))
        return b"change", body


CODEC = NativeCodec()
