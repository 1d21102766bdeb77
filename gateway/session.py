"""The sans-I/O session contract: one protocol's state machine for one connection.

A session takes values (client frames, verified claims, subscriptions, timer ticks) and returns
``Output``\\s: frames to send and actions for its driver (``gateway.connection.Connection``),
which does all the I/O, the way python-websockets' ``protocol.py`` is driven by its
``asyncio/connection.py``. A session never awaits, never touches a socket, the hub or the
verifier, so it is tested without an event loop.

Actions that need I/O carry a continuation (``then``): the driver performs the action and feeds
the result to ``then``, which returns the next outputs. The driver runs one client frame's
outputs (and their continuations) to the end before it reads the next frame.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.auth import Claims
from gateway.errors import GatewayError
from gateway.events import GapNotice, TopicEvent
from gateway.filters import Filter
from gateway.hub import Since, Subscription

Frame = tuple[str, bytes | None]  # text, and optionally the same text already framed for WebSocket


class Renderer(Protocol):
    """How one subscription's events and gaps become frames (None: nothing to send).

    A ``shared`` renderer serves every subscription of its kind and renders an event the same
    for all of them, so the driver renders it once per topic for all its subscribers."""

    @property
    def shared(self) -> bool: ...

    def event(self, event: TopicEvent) -> Frame | None: ...

    def gap(self, notice: GapNotice) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Send:
    frame: str


@dataclass(frozen=True, slots=True)
class Fail:
    """Tell the client (``Session.fatal_frames``), then close with the error's close code."""

    error: GatewayError
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Verify:
    """Verify ``token``; ``then`` gets the claims or the refusal."""

    token: str
    then: Callable[[Claims | GatewayError], Outputs]


@dataclass(frozen=True, slots=True)
class AwaitStream:
    """Wait (bounded) until subscribing is safe: the start-up replay is done and the stream has
    reached ``since``. ``then`` gets None, or ``not_ready``."""

    since: Since | None
    then: Callable[[GatewayError | None], Outputs]


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe to a hub topic under ``handle`` (unique in the session); ``then`` gets the
    subscription, and the backlog it carries is rendered and sent after ``then``'s outputs."""

    handle: Hashable
    channel: str
    base: str
    filter: Filter | None
    since: Since | None
    renderer: Renderer
    then: Callable[[Subscription], Outputs]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    handle: Hashable


@dataclass(frozen=True, slots=True)
class Timer:
    """Call ``then`` at Unix time ``at`` (replacing the timer of that name); ``at`` None
    cancels it. ``then`` may return only immediate outputs (no ``Verify``/``AwaitStream``)."""

    name: str
    at: float | None
    then: Callable[[], Outputs] | None = None


Output = Send | Fail | Verify | AwaitStream | Subscribe | Unsubscribe | Timer
Outputs = Sequence[Output]


class Session(Protocol):
    """One protocol's state machine for one connection."""

    @property
    def name(self) -> str:
        """The transport name for logs and metrics: ``native``, ``sse``, ``phoenix``."""

    @property
    def idle_timeout_s(self) -> float | None:
        """Close after this long without a client frame; None: the client may stay silent."""

    @property
    def resume_hint(self) -> str:
        """What a client closed as a slow consumer should do."""

    def start(self) -> Outputs:
        """Before the first frame is read."""

    def receive(self, data: str | bytes) -> Outputs:
        """One client frame (already within the size and rate limits)."""

    def refuse(self, error: GatewayError) -> Outputs:
        """The driver refused a frame it can recover from (``rate_limited``)."""

    def reauthorize(self, update: Callable[[Claims], Claims]) -> Outputs:
        """The database changed what a user may read (a role was granted or revoked): every
        claims the session holds become ``update(claims)`` (the same object when unchanged),
        and the subscriptions they no longer grant end, with ``forbidden``. Returns only
        immediate outputs (no ``Verify``/``AwaitStream``)."""

    def fatal_frames(self, error: GatewayError, ref: str | None) -> Sequence[str]:
        """The frames that tell the client about a fatal error, sent just before the close."""
