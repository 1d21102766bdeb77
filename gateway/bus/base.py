"""The Bus: how routed changes travel from the one process that reads the source (the slot
owner) to every process that serves clients.

Contract every backend keeps:

* **Unit.** A ``Publication`` is one source item (a change, a published event, a history note)
  at one stream position, with the topic bases it goes to. The position is the item's
  ``ChangeId.position``: the same number on every node, so numbering (offsets, epochs) and
  resume agree between nodes.
* **Ordering.** Receivers get publications in the order they were published, which is
  position order: per topic base, positions strictly increase.
* **Delivery.** At-least-once. A publication may arrive again (a new owner replays the slot);
  receivers drop it by position (``position <= last seen``). Nothing published is skipped
  without a gap.
* **Interest.** A receiver gets at least every target whose base it ``want``\\s and every
  target without a partition base (``base`` None: a TRUNCATE); a backend may deliver more,
  never less.
* **Gaps.** ``gap`` tells every receiver that events of some channels may have been lost
  (``None``: all of them). It is ordered with the publications: after every publication
  published before it, before every later one.
* **Lifecycle.** A bus is an async context manager; ``publish`` and ``gap`` are used only
  while it is entered.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from gateway.events import Payload


@dataclass(slots=True)
class Target:
    """One channel's view of the item and the topic base it goes to (None: every base of the
    channel, a TRUNCATE). Targets and publications are never changed once made; they are not
    ``frozen`` because one of each is made per change, and a frozen dataclass takes several
    times as long to build."""

    channel: str
    base: str | None
    payload: Payload


@dataclass(slots=True)
class Publication:
    position: int
    committed_at: float  # Unix seconds of the commit: history ages by it
    targets: tuple[Target, ...] = ()
    note: bytes | None = None  # a stopping gateway's history floors (``HistoryNote``)
    receipt: str | None = None  # a published event's id: its HTTP request waits for it


class Receiver(Protocol):
    """A node's side of the bus (its hub)."""

    def receive(self, batch: Sequence[Publication]) -> None:
        """Apply publications in order. Must not block."""

    def gap(self, channels: Collection[str] | None, reason: str) -> None:
        """Events of ``channels`` (None: every channel) up to now may have been lost."""


class Bus(Protocol):
    def attach(self, receiver: Receiver) -> None:
        """Deliver to ``receiver`` from now on (before entering)."""

    def want(self, base: str) -> None:
        """The attached receiver has subscribers for ``base``."""

    def unwant(self, base: str) -> None:
        """The attached receiver no longer has subscribers for ``base``."""

    async def publish(self, batch: Sequence[Publication]) -> None:
        """Publish in order (slot owner only). Returns once the batch is handed to the bus."""

    def gap(self, channels: Collection[str] | None, reason: str) -> None:
        """Publish a gap, ordered after everything published before it. Does not block."""

    async def __aenter__(self) -> Bus: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
