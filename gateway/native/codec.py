"""The native protocol's codec: a topic's event as an ``event`` frame, encoded once per event
(as text and as a complete WebSocket frame, the same bytes for every socket); the change body
once per payload, shared by the payload's topics."""

from __future__ import annotations

from gateway.encoding import dumps, dumps_brief
from gateway.events import Payload, TopicEvent
from gateway.publish import MessagePayload
from gateway.router import ChannelPayload, change_body
from gateway.session import Frame
from gateway.transport.wsframe import text_frame


class NativeCodec:
    """Encodes ``{"type":"event","topic","offset","epoch","change"|"message"}``."""

    def encode(self, event: TopicEvent) -> Frame:
        key, body = self._body(event.payload)
        encoded = b"".join(
            (
                b'{"type":"event","topic":',
                dumps_brief(event.topic),
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
