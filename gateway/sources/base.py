"""The Source interface: where changes come from.

Contract every source keeps:

* **Delivery**: at-least-once. A change is redelivered after a crash only with the same
  ``ChangeId``, so consumers can drop duplicates by id.
* **Ordering**: changes reach the sink in commit order; inside a transaction, in statement order.
  Ids are strictly increasing per slot.
* **Acknowledgement**: a transaction is confirmed upstream only after ``sink`` returned for
  every one of its changes.
* **Lifecycle**: ``run`` streams until cancelled, reconnecting with backoff on its own;
  ``streaming`` is true while changes can flow.

A source whose upstream cannot replay (Supabase Realtime) cannot keep the delivery guarantee; it
says so in its docstring and is a ``GapReporter``: it tells the affected topics when changes may
have been lost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

from gateway.changes import Change

ChangeSink = Callable[[Sequence[Change]], Awaitable[None]]
# Changes of these channels (None: every channel) may have been lost; the reason is for humans.
GapCallback = Callable[[Iterable[str] | None, str], object]


class Source(Protocol):
    @property
    def streaming(self) -> bool:
        """True while connected upstream and forwarding changes."""

    async def run(self, sink: ChangeSink) -> None:
        """Stream changes into ``sink`` until cancelled. Never returns normally."""


@runtime_checkable
class GapReporter(Protocol):
    """A source that can lose changes it cannot replay (Supabase Realtime) reports it: the node
    hands it a ``GapCallback`` that sends the affected topics a gap notice."""

    def report_gaps_to(self, callback: GapCallback) -> None: ...
