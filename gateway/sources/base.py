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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from gateway.changes import Change

ChangeSink = Callable[[Sequence[Change]], Awaitable[None]]


class Source(Protocol):
    @property
    def streaming(self) -> bool:
        """True while connected upstream and forwarding changes."""

    async def run(self, sink: ChangeSink) -> None:
        """Stream changes into ``sink`` until cancelled. Never returns normally."""
