"""The Source interface: where changes come from.

Contract every source keeps:

* **Delivery**: at-least-once. A change is redelivered after a crash only with the same
  ``ChangeId``, so consumers can drop duplicates by id.
* **Ordering**: changes reach the sink in commit order; inside a transaction, in statement order.
  Ids are strictly increasing per slot.
* **Acknowledgement**: a transaction is confirmed upstream only after ``sink`` returned for
  every one of its changes. A sink that raises ``SinkUnavailable`` (something it must reach
  first, such as the task queue, is down) ends the session without confirming the batch; the
  next session, after the usual backoff, delivers it again.
* **Gaps**: when changes were lost upstream (a slot invalidated and recreated, a live-only
  reconnect), ``on_gap`` is called with the affected ``(schema, table)`` pairs and a reason,
  once the source is again positioned to capture every later change.
* **Positions**: every item has an increasing ``ChangeId.position``. At the start of each
  session the source tells the ``keeper`` which position space it streams (``started``) and
  after which position items follow, then when it has handed on everything that was committed
  before the session began (``caught_up``). It never confirms upstream beyond the commit the
  keeper still needs (``oldest_needed``): that is what lets a restarted gateway rebuild its
  history from the slot.
* **Lifecycle**: ``run`` streams until cancelled, reconnecting with backoff on its own (every
  source through the one ``Supervisor`` loop below); ``streaming`` is true while changes can
  flow; ``last_error`` explains why it is not.
* **Ownership**: with several gateways on one bus, one reads the upstream at a time. A
  replication slot admits one reader, so it elects by itself (a standby's session fails with
  ``slot_in_use`` and is retried soon); an upstream that admits many readers (Supabase
  Realtime) runs its sessions under an ``Election`` (a Redis lease), which the supervisor holds,
  and its standbys publish through a ``Relay`` to the session that holds it.

A source whose upstream cannot replay (Supabase Realtime) cannot keep the delivery guarantee; it
says so in its docstring and reports every stretch it may have lost through ``on_gap``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, Protocol

from gateway.changes import Item
from gateway.errors import RtgwError

ChangeSink = Callable[[Sequence[Item]], Awaitable[None]]
# (schema, table) pairs whose changes may have been lost, and why ("slot_invalidated", ...)
GapSink = Callable[[Sequence[tuple[str, str]], str], None]


class SinkUnavailable(RtgwError):
    """The sink cannot take the batch now (a downstream it needs is unavailable): nothing of
    the batch is confirmed, and the source retries the session with backoff."""


class NotElected(RtgwError):
    """Another gateway reads the upstream (or this one could not keep it): stand by."""


class Election(Protocol):
    """Which one of several gateways reads an upstream that admits many readers."""

    @property
    def retry_s(self) -> float:
        """How often a standby tries to take over."""

    async def hold(self, session: Callable[[], Awaitable[None]]) -> None:
        """Run ``session`` while this gateway owns the upstream. Raises ``NotElected`` when
        another one does, or when the ownership could not be kept: then ``session`` is cancelled
        before another gateway can be elected."""


class Relay(Protocol):
    """How a standby's published events reach the gateway that owns the upstream (``Election``)."""

    async def send(self, *contents: bytes) -> None:
        """Hand events to the owner, in order (each one is then taken on its own). Raises
        ``GatewayError("not_ready")`` when it cannot."""

    async def take(self, emit: Callable[[bytes], Awaitable[None]]) -> NoReturn:
        """Run by the owner's session until cancelled: ``emit`` every event sent, in arrival
        order, each at most once across sessions and gateways."""

    async def close(self) -> None:
        """Release connections."""


class Keeper(Protocol):
    """What the downstream keeps of the stream (the node's history)."""

    def started(self, stream: str, after: int) -> None:
        """A session began in position space ``stream`` (the same id after a restart means the
        same positions); every item with a position above ``after`` follows."""

    def caught_up(self) -> None:
        """Everything committed before the session began has been handed on."""

    def oldest_needed(self) -> int | None:
        """The commit LSN of the oldest item still kept (a restart must replay from there), or
        None when nothing is kept."""


class Source(Protocol):
    @property
    def streaming(self) -> bool:
        """True while connected upstream and forwarding changes."""

    @property
    def last_error(self) -> str | None:
        """Why the source is not streaming (``code: message``), or None."""

    @property
    def lag_bytes(self) -> float | None:
        """How many bytes of WAL the upstream holds back for this source, sampled while ``run``
        runs; None when unknown or when the upstream keeps nothing for it."""

    async def run(
        self, sink: ChangeSink, on_gap: GapSink | None = None, keeper: Keeper | None = None
    ) -> None:
        """Stream changes into ``sink`` until cancelled; report lost stretches to ``on_gap``
        and positions to ``keeper``. Never returns normally."""

    async def emit(self, *contents: bytes) -> None:
        """Carry published events (each a ``Published.content``) through the stream, in order
        with the changes and in the order given; with a source that replays, in one transaction
        (all are carried, or none). Raises ``GatewayError("not_ready")`` when it cannot."""

    async def note(self, history: dict[str, Any]) -> None:
        """After ``run`` ended: leave the history's floors in the stream for the next process,
        which receives them as a ``HistoryNote`` (``{"confirmed": <the slot's last confirmed
        LSN>, "history": history}``). A source that cannot replay ignores it."""


class Backoff:
    """Reconnect delays: doubling from ``initial`` up to ``maximum``, and back to ``initial``
    after a session that lasted ``healthy_s`` (it was not a crash loop)."""

    def __init__(self, initial: float, maximum: float, healthy_s: float = 30.0) -> None:
        self.initial, self.maximum, self.healthy_s = initial, maximum, healthy_s
        self._delay = initial

    def retry_at_once(self) -> None:
        """The next retry should not wait (every moment loses changes)."""
        self._delay = 0.0

    def retry_in(self, seconds: float) -> None:
        """The next retry waits ``seconds``, whatever came before (a standby's poll)."""
        self._delay = seconds

    def next(self, session_s: float) -> float:
        """The delay before the next attempt, after a session that lasted ``session_s``."""
        if session_s > self.healthy_s and self._delay > 0:
            self._delay = self.initial
        delay = self._delay
        self._delay = min(max(delay * 2, self.initial), self.maximum)
        return delay


def first_line(exc: BaseException) -> str:
    """The first line of an error's message, or its repr when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


class Supervisor:
    """The one reconnect loop every source runs: a session, then (whatever ended it) a delay
    from ``backoff``, then the next session, until cancelled. It keeps what ``Source.streaming``
    and ``Source.last_error`` report: a session calls ``up`` once changes can flow; when it
    ends, ``streaming`` is false and ``describe`` (called with the error, if one of ``errors``)
    gives ``last_error`` (``sink_unavailable: ...`` for a ``SinkUnavailable``). Any other error
    is a bug: logged with its traceback (server side only), reported as ``internal_error`` in
    ``last_error``, and retried the same way, so the source never ends silently. With an
    ``election`` every session runs while it is held; a standby (``NotElected``) tries again
    every ``election.retry_s``."""

    def __init__(
        self,
        backoff: Backoff,
        describe: Callable[[Exception], str],
        log: logging.Logger,
        stopped: str,
        errors: tuple[type[Exception], ...] = (Exception,),
        expected: Callable[[Exception], bool] = lambda _: False,
        election: Election | None = None,
    ) -> None:
        self.backoff = backoff
        self._election = election
        self._describe, self._log, self._stopped, self._errors = describe, log, stopped, errors
        self._expected = expected  # ends that are logged at debug level (a standby's wait)
        self.streaming = False
        self.last_error: str | None = None
        self.sessions = 0  # sessions that reached ``up``

    def up(self) -> None:
        """The current session streams: no error to report."""
        self.streaming = True
        self.last_error = None
        self.sessions += 1

    async def run(self, session: Callable[[], Awaitable[None]]) -> NoReturn:
        while True:
            started = time.monotonic()
            level = logging.WARNING
            try:
                await (session() if self._election is None else self._election.hold(session))
            except SinkUnavailable as exc:
                self.last_error = f"sink_unavailable: {exc}"
            except NotElected as exc:
                assert self._election is not None, "only an election stands a source by"
                self.last_error = f"not_elected: {exc}"
                self.backoff.retry_in(self._election.retry_s)
                level = logging.DEBUG
            except self._errors as exc:
                self.last_error = self._describe(exc)
                if self._expected(exc):
                    level = logging.DEBUG
            except Exception as exc:
                self._log.error("%s: unexpected error", self._stopped, exc_info=exc)
                self.last_error = f"internal_error: {type(exc).__name__}: {first_line(exc)}"
            finally:
                self.streaming = False
            delay = self.backoff.next(time.monotonic() - started)
            self._log.log(level, "%s: %s; retrying in %.1fs", self._stopped, self.last_error,
                          delay)
            await asyncio.sleep(delay)


class Supervised:
    """Base of a source whose sessions ``_supervisor`` runs: its ``streaming`` and
    ``last_error`` are the supervisor's."""

    _supervisor: Supervisor

    @property
    def streaming(self) -> bool:
        return self._supervisor.streaming

    @property
    def last_error(self) -> str | None:
        return self._supervisor.last_error
