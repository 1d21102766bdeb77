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
* **Roles.** A publication that carries ``roles`` (changes to the ``[roles]`` table) reaches
  every receiver, whatever it wants: every node applies them, at their place in the order.
* **Gaps.** ``gap`` tells every receiver that events of some channels may have been lost
  (``None``: all of them; the name ``ROLES`` among them: changes to the ``[roles]`` table).
  It is ordered with the publications: after every publication published before it, before
  every later one.
* **Streams.** ``start`` tells every receiver which position space follows (the slot owner's
  source began a session), ordered with the publications like a gap.
* **Connection.** A bus that crosses processes may lose its connection: ``connected`` says so,
  and the callbacks given to ``watch`` hear it. While it is lost, publications may be missed
  (receivers must not claim to have them); ``publish`` raises ``BusUnavailable``.
* **Fencing.** Only the publisher that called ``start`` last may publish: a deposed one gets
  ``BusUnavailable`` and publishes nothing, so a slot owner that lost the slot cannot write
  behind its successor.
* **Archive.** A bus may keep history itself, shared by every node (``archive``); a node then
  resumes clients from it, whichever node they were on before.
* **Lifecycle.** A bus is an async context manager; ``publish``, ``start`` and ``gap`` are
  used only while it is entered.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from gateway.changes import RoleChange
from gateway.errors import RtgwError
from gateway.events import Payload
from gateway.history import Entry


class BusUnavailable(RtgwError):
    """The bus cannot take a publication: its connection is lost, or this publisher was
    deposed (another one called ``start`` since)."""

    code = "bus_unavailable"


ROLES = "[roles]"  # in a gap's channels: role changes may have been lost (no channel has it)


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
    roles: tuple[RoleChange, ...] = ()  # roles granted and revoked by this change


class Receiver(Protocol):
    """A node's side of the bus (its hub)."""

    def receive(self, batch: Sequence[Publication]) -> None:
        """Apply publications in order. Must not block."""

    def gap(self, channels: Collection[str] | None, reason: str) -> None:
        """Events of ``channels`` (None: every channel) up to now may have been lost."""

    def start(self, stream: str, after: int) -> bool:
        """Positions of ``stream`` follow, from after ``after``; False when the stream
        changed (the receiver tells its subscribers)."""

    def rejoin(self, stream: str, after: int) -> None:
        """The bus (re)connected: positions of ``stream`` after ``after`` follow, and may repeat
        ones received before the connection was lost. What the receiver kept may have holes:
        it forgets it."""


class Archive(Protocol):
    """History a bus keeps outside the process, shared by every node."""

    async def recall(self, channel: str, base: str, after: int | None) -> list[Entry] | None:
        """Make sure publications of ``base`` reach the receiver, then read the kept events of
        ``base`` (and TRUNCATEs of ``channel``) after ``after``, oldest first: None when some
        of them may be gone. ``after`` None reads nothing (returns []). Every event of
        ``base`` published later than the read reaches the receiver; some read may arrive
        too (drop them by position). The receiver must ``want`` ``base`` before the next
        await, or it may stop arriving. Raises ``BusUnavailable``."""

    def oldest_needed(self) -> int | None:
        """The commit LSN of the oldest event this publisher wrote that the archive still
        serves: the slot keeps it, so an archive that lost its data can be rebuilt."""


class Bus(Protocol):
    archive: Archive | None  # the bus's own history, or None (each node keeps its own)

    @property
    def connected(self) -> bool:
        """Publications flow (always, for a bus within the process)."""

    def watch(self, changed: Callable[[bool], None]) -> None:
        """Call ``changed(False)`` when the connection is lost, ``changed(True)`` when it is
        back (before entering)."""

    def attach(self, receiver: Receiver) -> None:
        """Deliver to ``receiver`` from now on (before entering)."""

    def want(self, base: str) -> None:
        """The attached receiver has subscribers for ``base``."""

    def unwant(self, base: str) -> None:
        """The attached receiver no longer has subscribers for ``base``."""

    async def settle(self) -> None:
        """Wait until every base wanted so far reaches the receivers and everything published
        before the call has reached them (within the process: at once)."""

    async def publish(self, batch: Sequence[Publication]) -> None:
        """Publish in order (slot owner only). Returns once the batch is handed to the bus."""

    def gap(self, channels: Collection[str] | None, reason: str) -> None:
        """Publish a gap, ordered after everything published before it. Does not block."""

    def start(self, stream: str, after: int) -> None:
        """(The slot owner) its source began a session in position space ``stream``, items
        above ``after`` follow: ordered like ``gap``, and it makes this the only publisher
        (fences the previous one). Does not block."""

    async def __aenter__(self) -> Bus: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
