"""What every client connection shares, whatever its protocol: a bounded outbox drained by one
writer task, a frame-size limit, token-expiry timers, an optional idle timeout and a lifecycle.

A protocol (native ``Connection``, Phoenix ``PhoenixSession``) subclasses ``BaseConnection`` and
supplies how frames are handled, how a fatal error is told to the client, and how its hub
subscriptions end. A client that lets its outbox exceed ``max_outbox_bytes`` is closed with
``slow_consumer`` (4008) and never slows anyone else.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import CloseCode, GatewayError
from gateway.limits import TokenBucket


class Transport(Protocol):
    def send_now(self, frame: str, wire: bytes | None = None) -> bool:
        """Write ``frame`` synchronously if the socket can take it right now; False when it
        cannot (the frame is then queued and sent by ``send_text``). ``wire``, when given, is
        ``frame`` already framed for WebSocket (shared by many connections): a transport that
        can write it as it is does so."""

    async def send_text(self, frame: str) -> None: ...

    async def close(self, code: int, reason: str) -> None:
        """Close the socket. From then on (and once a send failed because the client left),
        the connection's ``Receive`` returns None, or its owner cancels ``serve``."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_frame_bytes: int = 64 * 1024
    max_outbox_bytes: int = 4 * 1024 * 1024
    max_subscriptions: int = 100
    auth_timeout_s: float = 10.0
    max_messages_per_s: float = 20.0  # client frames; bursts of twice that are allowed
    idle_timeout_s: float = 60.0  # Phoenix: close after this long without a frame from the client


Receive = Callable[[], Awaitable[str | bytes | None]]  # None: the client went away


class BaseConnection(ABC):
    """One client connection bound to a transport. ``serve`` runs it to the end."""

    _idle_timeout_s: float | None = None  # None: the client may stay silent
    _resume_hint = "reconnect"  # what a client closed as a slow consumer should do

    def __init__(self, transport: Transport, limits: Limits) -> None:
        self.id = secrets.token_hex(6)
        self._transport = transport
        self._limits = limits
        # The outbox and its writer task exist only once a frame had to be queued (or the
        # connection is closing): most connections write every frame directly and never
        # need them.
        self._outbox: deque[str] | None = None
        self._outbox_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._writer_idle: asyncio.Future[None] | None = None  # set to wake the writer
        self._in_flight = False  # the writer is awaiting a send: later frames must queue
        self._ended = False  # serve() has returned: nothing more can be sent
        self._inbound = TokenBucket(limits.max_messages_per_s, 2 * limits.max_messages_per_s)
        self._close: tuple[int, str] | None = None
        self.closed_with: tuple[int, str] | None = None  # what the writer closed with
        self._expiries: dict[str, asyncio.TimerHandle] = {}

    # -- what a protocol supplies --------------------------------------------------------

    @abstractmethod
    async def _handle(self, data: str | bytes) -> None:
        """Handle one client frame (already within the size limit)."""

    @abstractmethod
    def _fatal_frames(self, error: GatewayError, ref: str | None) -> Iterable[str]:
        """The frames that tell the client about a fatal error, sent just before the close."""

    @abstractmethod
    def _end_all_subscriptions(self) -> None:
        """Leave every hub topic; called once when the connection ends."""

    @abstractmethod
    async def _on_start(self) -> None:
        """Runs in ``serve`` before the first frame is read."""

    @property
    @abstractmethod
    def subscription_count(self) -> int:
        """How many hub topics this connection reads, for the metrics."""

    @abstractmethod
    def _reply_error(self, error: GatewayError, ref: str | None) -> None:
        """Tell the client about a refusal it can recover from (or close, if the protocol has
        no such thing)."""

    def _idle(self) -> None:
        """No frame arrived for ``_idle_timeout_s``."""
        self.fail(
            GatewayError(
                "idle_timeout", f"nothing arrived for {self._idle_timeout_s:g} s; send heartbeats"
            )
        )

    # -- the outbox ----------------------------------------------------------------------

    def _send(self, frame: str, wire: bytes | None = None) -> None:
        if self._close is not None:
            return
        if not self._outbox and not self._in_flight and self._transport.send_now(frame, wire):
            return  # the hot path: nothing queued ahead of it, straight to the socket
        size = len(frame)
        if self._outbox_bytes + size > self._limits.max_outbox_bytes:
            if self._outbox is not None:
                self._outbox.clear()
            self._outbox_bytes = 0
            self.fail(
                GatewayError(
                    "slow_consumer",
                    f"more than {self._limits.max_outbox_bytes} bytes were waiting; "
                    + self._resume_hint,
                )
            )
            return
        self._outbox_bytes += size
        self._queue((frame,))

    def fail(self, error: GatewayError, ref: str | None = None) -> None:
        """Tell the client about the error, then close with the error's close code."""
        if self._close is not None:
            return
        self._close = (int(error.close_code or CloseCode.POLICY), error.code)
        self._queue(self._fatal_frames(error, ref))

    def _queue(self, frames: Iterable[str]) -> None:
        """Append to the outbox and wake the writer (both made on first use)."""
        if self._ended:
            return  # the connection has ended: nothing more can be sent
        if self._outbox is None:
            self._outbox = deque()
        self._outbox.extend(frames)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(
                self._write_loop(self._outbox), name=f"rtgw-writer-{self.id}"
            )
        elif self._writer_idle is not None and not self._writer_idle.done():
            self._writer_idle.set_result(None)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in the outbox: what this client has not taken yet."""
        return self._outbox_bytes

    @property
    def closing(self) -> bool:
        return self._close is not None

    # -- timers (token expiry) -------------------------------------------------------------

    def _expire_at(self, key: str, expires_at: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` at ``expires_at`` (Unix time) unless rescheduled or cancelled.
        Every timer ends with the connection."""
        self._cancel_expiry(key)
        delay = max(0.0, expires_at - time.time())
        self._expiries[key] = asyncio.get_running_loop().call_later(delay, callback)

    def _cancel_expiry(self, key: str) -> None:
        timer = self._expiries.pop(key, None)
        if timer is not None:
            timer.cancel()

    # -- lifecycle -----------------------------------------------------------------------

    async def serve(self, receive: Receive) -> None:
        """Run until the client leaves or the connection is closed. Cleans up after itself.
        Reads in the caller's task: no task of its own (see ``Transport.close``)."""
        try:
            await self._read_loop(receive)
        finally:
            self._ended = True
            for timer in self._expiries.values():
                timer.cancel()
            self._expiries.clear()
            if self._writer is not None:
                self._writer.cancel()
                await asyncio.gather(self._writer, return_exceptions=True)
            self._end_all_subscriptions()

    async def _write_loop(self, outbox: deque[str]) -> None:
        transport, loop = self._transport, asyncio.get_running_loop()
        while True:
            while outbox:
                frame = outbox.popleft()
                self._outbox_bytes -= len(frame)
                self._in_flight = True
                try:
                    await transport.send_text(frame)
                finally:
                    self._in_flight = False
            if self._close is not None:
                self.closed_with = self._close
                await transport.close(*self._close)
                return
            self._writer_idle = loop.create_future()
            await self._writer_idle
            self._writer_idle = None

    async def _read_loop(self, receive: Receive) -> None:
        await self._on_start()
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout_s):
                    data = await receive()
            except TimeoutError:
                self._idle()  # fails the connection; the writer then closes it
                continue
            if data is None:
                return
            if self._close is not None:
                continue
            if len(data) > self._limits.max_frame_bytes:
                self.fail(
                    GatewayError(
                        "frame_too_large",
                        f"frames are limited to {self._limits.max_frame_bytes} bytes",
                    )
                )
                continue
            if not self._inbound.allow(loop.time()):
                self._rate_limited()
                continue
            await self._handle(data)

    def _rate_limited(self) -> None:
        """A frame beyond ``max_messages_per_s`` arrived; it is dropped, not handled."""
        error = GatewayError(
            "rate_limited",
            f"at most {self._limits.max_messages_per_s:g} frames per second; "
            "this frame was not processed",
        )
        self._reply_error(error, None)
