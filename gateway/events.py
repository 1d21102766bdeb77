"""What the hub moves, and the codec seam.

A ``Payload`` is a change as one channel shows it (or a published message); the hub numbers it
in each topic that receives it as a ``TopicEvent``. The core never encodes either: each protocol
has a ``Codec`` that turns a topic's event into its bytes, and the result is cached on the event,
so every subscriber of a topic gets the same bytes, encoded once per protocol (the way
supabase/realtime's dispatcher encodes once per serializer). Payloads cache the part of the
encoding that topics share (the row body) the same way. Adding a protocol adds a codec; no core
file changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from gateway.filters import Filter


class Codec(Protocol):
    """One protocol's encoding of topic events. Instances are long-lived (one per protocol)
    and used as cache keys."""

    def encode(self, event: TopicEvent) -> Any:
        """The protocol's representation of ``event``; called at most once per event."""


class Payload(Protocol):
    """An event's content, shared by every topic that receives it."""

    @property
    def op(self) -> str:
        """INSERT, UPDATE, DELETE or TRUNCATE for a change; MESSAGE for a published event."""

    @property
    def encodings(self) -> dict[Codec, Any]:
        """Codecs cache their per-payload encoding here (shared by the payload's topics)."""

    def view(self, row_filter: Filter) -> Payload | None:
        """What a topic narrowed by ``row_filter`` receives of this event (this payload, or
        another shape of it), or None. The same test serves live delivery and replay, so a
        resumed client sees what a connected one saw."""


class TopicEvent:
    """One numbered event of one topic. ``encoded(codec)`` builds a protocol's representation
    on first use and shares it with every later caller."""

    __slots__ = ("topic", "offset", "epoch", "payload", "_codec", "_encoded", "_others")

    def __init__(self, topic: str, offset: int, epoch: str, payload: Payload) -> None:
        self.topic = topic
        self.offset = offset
        self.epoch = epoch
        self.payload = payload
        self._codec: Codec | None = None
        self._encoded: Any = None
        self._others: dict[Codec, Any] | None = None

    def encoded(self, codec: Codec) -> Any:
        if self._codec is codec:
            return self._encoded
        if self._codec is None:
            self._codec, self._encoded = codec, codec.encode(self)
            return self._encoded
        others = self._others
        if others is None:
            others = self._others = {}
        if codec not in others:
            others[codec] = codec.encode(self)
        return others[codec]


@dataclass(frozen=True, slots=True)
class GapNotice:
    """Events of ``topic`` up to (``epoch``, ``offset``) may have been lost (for example the
    upstream had to be restarted without replay): refetch, then resume from there."""

    topic: str
    offset: int
    epoch: str
    reason: str
