"""Held writes: while the hub hands out a batch of events, a transport may hold the frames it
is sent and write them in one go when the batch is handed out (one write per socket per batch,
instead of one per frame and socket).

A batch is handed out synchronously (no await between its first frame and ``release``), so
nothing else can write to a socket in between: held frames keep their order among the socket's
writes, and one process-wide ``HELD`` is all there is.
"""

from __future__ import annotations

from typing import Protocol


class Holder(Protocol):
    def release(self) -> None:
        """Write what this transport held."""


class HeldWrites:
    """Open while a batch is handed out; transports that held frames are released at its end."""

    __slots__ = ("holding", "_holders")

    def __init__(self) -> None:
        self.holding = False  # read per frame by the transports: a plain attribute
        self._holders: list[Holder] = []

    def hold(self) -> bool:
        """Start holding; False when already holding (the caller must then not ``release``)."""
        if self.holding:
            return False
        self.holding = True
        return True

    def held(self, holder: Holder) -> None:
        """``holder`` holds frames now (told once per batch): release it at the end."""
        self._holders.append(holder)

    def release(self) -> None:
        """Stop holding and let every holder write what it held, in the order they began."""
        self.holding = False
        holders, self._holders = self._holders, []
        for holder in holders:
            holder.release()


HELD = HeldWrites()
