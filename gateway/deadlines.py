"""Many timers on one event-loop timer: what every connection schedules (its request head's
deadline, its token's expiry, the keepalive ping) without a loop timer each. uvloop's
``call_later`` costs about 700 bytes per pending timer; a deadline here about 150, in a heap
that one loop timer serves.

``call_later`` and ``cancel`` behave as the loop's: a callback runs once, at or after its time,
unless cancelled before; deadlines due at the same time run in the order they were set; an
exception in one is reported to the loop's exception handler and the others still run.
Cancelled deadlines leave the heap when they come due, or sooner when they are most of it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

RESOLUTION_S = 0.001  # libuv's timers are in milliseconds: what is this close to due runs now


class Deadline:
    """One pending callback; ``cancel`` it as a loop's ``TimerHandle``."""

    __slots__ = ("_owner", "callback", "args")

    def __init__(self, owner: Deadlines, callback: Callable[..., object], args: tuple[Any, ...]
                 ) -> None:
        self._owner = owner
        self.callback: Callable[..., object] | None = callback
        self.args = args

    def cancel(self) -> None:
        if self.callback is not None:
            self.callback = None
            self.args = ()
            self._owner.cancelled()

    def cancelled(self) -> bool:
        return self.callback is None


class Deadlines:
    """Deadlines on the running loop's clock (``loop.time()``), served by one loop timer."""

    __slots__ = ("_heap", "_order", "_cancelled", "_timer", "_timer_at", "_firing", "_loop")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop whose clock they are on
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._cancelled = 0  # cancelled deadlines still in the heap
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._firing = False

    def __len__(self) -> int:
        """Pending deadlines (not cancelled)."""
        return len(self._heap) - self._cancelled

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Deadline:
        """Run ``callback(*args)`` ``delay`` seconds from now, from the running loop."""
        loop = self._loop
        if loop is None or (self._timer is None and not self._firing):
            # Asked only when nothing is pending: on Python 3.11 ``get_running_loop`` is a
            # system call (getpid), and most deadlines are set while others wait.
            loop = self._loop = asyncio.get_running_loop()
        deadline = Deadline(self, callback, args)
        at = loop.time() + max(0.0, delay)
        heapq.heappush(self._heap, (at, next(self._order), deadline))
        if not self._firing and (self._timer is None or at < self._timer_at):
            self._arm(loop)
        return deadline

    def cancelled(self) -> None:
        """A deadline was cancelled: drop the cancelled ones when they are most of the heap."""
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            self._heap[:] = [entry for entry in self._heap if entry[2].callback is not None]
            heapq.heapify(self._heap)  # in place: ``_fire`` may be walking it
            self._cancelled = 0

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._heap:
            self._timer_at = self._heap[0][0]
            self._timer = loop.call_at(self._timer_at, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._firing = True
        heap, now = self._heap, loop.time() + RESOLUTION_S
        try:
            while heap and heap[0][0] <= now:
                deadline = heapq.heappop(heap)[2]
                callback, args = deadline.callback, deadline.args
                if callback is None:
                    self._cancelled -= 1
                    continue
                deadline.callback, deadline.args = None, ()
                try:
                    callback(*args)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    loop.call_exception_handler({
                        "message": f"Exception in deadline callback {callback!r}",
                        "exception": exc,
                    })
        finally:
            self._firing = False
            self._arm(loop)
