"""What the hub moves: a change as one channel shows it, numbered in one topic.

Every wire shape is encoded lazily and at most once: once per channel for the change body, once
per topic for a native frame. Protocol adapters that need another shape add a cached property
here rather than encoding per subscriber.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.encoding import dumps
from gateway.protocol.filters import Filter
from gateway.protocol.wsframe import text_frame


class Payload(Protocol):
    native_key: bytes  # the event frame's key for the body: b"change" or b"message"

    @property
    def op(self) -> str:
        """INSERT, UPDATE, DELETE or TRUNCATE for a change; MESSAGE for a published event."""

    @property
    def native_body(self) -> bytes:
        """The body of the native protocol's event frame, JSON-encoded."""

    @property
    def supabase_data(self) -> bytes:
        """The change as Supabase's ``postgres_changes`` ``data`` object, JSON-encoded."""

    def passes(self, row_filter: Filter) -> bool:
        """Whether a topic narrowed by ``row_filter`` receives this event. The same test serves
        live delivery and replay, so a resumed client sees what a connected one saw."""


class TopicEvent:
    """One numbered event of one topic. Its native frame is built on first use, then shared:
    as text (``native_frame``) and as a complete WebSocket frame (``native_wire``)."""

    __slots__ = ("topic", "offset", "epoch", "payload", "_frame", "_wire")

    def __init__(self, topic: str, offset: int, epoch: str, payload: Payload) -> None:
        self.topic = topic
        self.offset = offset
        self.epoch = epoch
        self.payload = payload
        self._frame: str | None = None
        self._wire: bytes | None = None

    def _encode(self) -> tuple[str, bytes]:
        """Build the frame once, in both shapes, and keep both."""
        encoded = b"".join(
            (
                b'{"type":"event","topic":',
                dumps(self.topic),
                b',"offset":%d,"epoch":"%s","%s":'
                % (self.offset, self.epoch.encode(), self.payload.native_key),
                self.payload.native_body,
                b"}",
            )
        )
        self._frame, self._wire = encoded.decode(), text_frame(encoded)
        return self._frame, self._wire

    @property
    def native_frame(self) -> str:
        frame = self._frame
        return frame if frame is not None else self._encode()[0]

    @property
    def native_wire(self) -> bytes:
        """The native frame as an unmasked WebSocket text frame, the same for every socket."""
        wire = self._wire
        return wire if wire is not None else self._encode()[1]


@dataclass(frozen=True, slots=True)
class GapNotice:
    """Events of ``topic`` up to (``epoch``, ``offset``) may have been lost (for example the
    upstream had to be restarted without replay): refetch, then resume from there."""

    topic: str
    offset: int
    epoch: str
    reason: str
