"""The Source interface: where changes come from.

Contract every source keeps:

* **Delivery**: at-least-once. A change is redelivered after a crash only with the same
  ``ChangeId``, so consumers can drop duplicates by id.
* **Ordering**: changes reach the sink in commit order; inside a transaction, in statement order.
  Ids are strictly increasing per slot.
* **Acknowledgement**: a transaction is confirmed upstream only after ``sink`` returned for
  every one of its changes.
* **Gaps**: when changes were lost upstream (a slot invalidated and recreated, a live-only
  reconnect), ``on_gap`` is called with the affected ``(schema, table)`` pairs and a reason,
  once the source is again positioned to capture every later change.
* **Lifecycle**: ``run`` streams until cancelled, reconnecting with backoff on its own;
  ``streaming`` is true while changes can flow; ``last_error`` explains why it is not.

A source whose upstream cannot replay (Supabase Realtime) cannot keep the delivery guarantee; it
says so in its docstring and reports every stretch it may have lost through ``on_gap``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from gateway.changes import Change

ChangeSink = Callable[[Sequence[Change]], Awaitable[None]]
# (schema, table) pairs whose changes may have been lost, and why ("slot_invalidated", ...)
GapSink = Callable[[Sequence[tuple[str, str]], str], None]


class Source(Protocol):
    @property
    def streaming(self) -> bool:
        """True while connected upstream and forwarding changes."""

    @property
    def last_error(self) -> str | None:
        """Why the source is not streaming (``code: message``), or None."""

    async def run(self, sink: ChangeSink, on_gap: GapSink | None = None) -> None:
        """Stream changes into ``sink`` until cancelled; report lost stretches to ``on_gap``.
        Never returns normally."""


class Backoff:
    """Reconnect delays: doubling from ``initial`` up to ``maximum``, and back to ``initial``
    after a session that lasted ``healthy_s`` (it was not a crash loop)."""

    def __init__(self, initial: float, maximum: float, healthy_s: float = 30.0) -> None:
        self.initial, self.maximum, self.healthy_s = initial, maximum, healthy_s
        self._delay = initial

    def retry_at_once(self) -> None:
        """The next retry should not wait (every moment loses changes)."""
        self._delay = 0.0

    def next(self, session_s: float) -> float:
        """The delay before the next attempt, after a session that lasted ``session_s``."""
        if session_s > self.healthy_s and self._delay > 0:
            self._delay = self.initial
        delay = self._delay
        self._delay = min(max(delay * 2, self.initial), self.maximum)
        return delay
