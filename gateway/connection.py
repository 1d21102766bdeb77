"""The driver of a sans-I/O ``Session`` (gateway/session.py) over a ``Transport``: what every
client connection shares, whatever its protocol. A bounded outbox drained by one writer task, a
frame-size and a rate limit, the session's timers, an optional idle timeout, its hub
subscriptions, and a lifecycle.

A client that lets its outbox exceed ``max_outbox_bytes`` is closed with ``slow_consumer``
(4008) and never slows anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Iterator
from typing import Protocol

from gateway import logs
from gateway.auth import Claims, Verifier
from gateway.bus.base import BusUnavailable
from gateway.deadlines import Deadline, Deadlines
from gateway.errors import CloseCode, GatewayError
from gateway.events import GapNotice, TopicEvent
from gateway.hub import Hub, Recall
from gateway.limits import Limits, TokenBucket
from gateway.roles import Roles
from gateway.session import (
    AwaitStream,
    Fail,
    Output,
    Outputs,
    Renderer,
    Send,
    Session,
    Subscribe,
    Timer,
    Unsubscribe,
    Verify,
)
from gateway.writes import HELD

log = logging.getLogger("rtgw.node")
YIELD_EVERY = 64  # client frames handled before the read loop lets other tasks run


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


Receive = Callable[[], Awaitable[str | bytes | None]]  # None: the client went away


class _Subscriber:
    """The hub's subscriber for one of the session's subscriptions."""

    __slots__ = ("connection", "_renderer", "lane", "topic")

    def __init__(self, connection: Connection, renderer: Renderer) -> None:
        self.connection = connection
        self._renderer = renderer
        self.lane = _lane_of(renderer)
        self.topic = ""

    def deliver(self, event: TopicEvent) -> None:
        frame = self._renderer.event(event)
        if frame is not None:
            self.connection._send(*frame)

    def gap(self, notice: GapNotice) -> None:
        frame = self._renderer.gap(notice)
        if frame is not None:
            self.connection._send(frame, None)


class _Lane:
    """The subscribers of a shared renderer in one topic (a hub ``Lane``): the event's frame is
    rendered once, and each connection with nothing queued ahead gets it straight from its
    transport's ``send_now``; the others through their ``_send`` (their outbox)."""

    __slots__ = ("_renderer",)

    def __init__(self, renderer: Renderer) -> None:
        self._renderer = renderer

    def deliver(self, event: TopicEvent, members: Collection[_Subscriber]) -> None:
        frame = self._renderer.event(event)
        if frame is None:
            return
        text, wire = frame
        for member in members:
            connection = member.connection
            if not (connection.direct and connection._transport.send_now(text, wire)):
                connection._send(text, wire)


_LANES: dict[Renderer, _Lane] = {}  # shared renderers are few and live as long as the process


def _lane_of(renderer: Renderer) -> _Lane | None:
    if not renderer.shared:
        return None
    lane = _LANES.get(renderer)
    if lane is None:
        lane = _LANES[renderer] = _Lane(renderer)
    return lane


class Connection:
    """Runs one session over one transport. ``serve`` runs it to the end."""

    __slots__ = (
        "id", "session", "_transport", "_limits", "_hub", "_verifier", "_outbox",
        "_outbox_bytes", "_writer", "_writer_idle", "direct", "_ended", "_inbound",
        "_close", "closed_with", "_timers", "_deadlines", "_subscriptions", "_roles",
    )

    def __init__(
        self,
        session: Session,
        transport: Transport,
        limits: Limits,
        hub: Hub,
        verifier: Verifier,
        connection_id: str,
        roles: Roles | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        """``deadlines``: where the session's timers are kept (shared by a node's
        connections; by default this connection's own)."""
        if deadlines is None:
            deadlines = Deadlines()
        self.id = connection_id
        self._roles = roles  # told which users' claims this connection holds
        self.session = session
        self._transport = transport
        self._limits = limits
        self._hub = hub
        self._verifier = verifier
        # The outbox and its writer task exist only once a frame had to be queued (or the
        # connection is closing): most connections write every frame directly and never
        # need them.
        self._outbox: deque[str] | None = None
        self._outbox_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._writer_idle: asyncio.Future[None] | None = None  # set to wake the writer
        # Nothing is queued or being sent, and no close is pending: a frame may go straight
        # to the transport (``send_now``). False from the first frame queued until the writer
        # has sent them all.
        self.direct = True
        self._ended = False  # serve() has returned: nothing more can be sent
        self._inbound = TokenBucket(limits.max_messages_per_s, 2 * limits.max_messages_per_s)
        self._close: tuple[int, str] | None = None
        self.closed_with: tuple[int, str] | None = None  # what the writer closed with
        self._timers: dict[str, Deadline] = {}
        self._deadlines = deadlines
        self._subscriptions: dict[Hashable, _Subscriber] = {}

    @property
    def subscription_count(self) -> int:
        """How many hub topics this connection reads, for the metrics."""
        return len(self._subscriptions)

    # -- the outbox ----------------------------------------------------------------------

    def _send(self, frame: str, wire: bytes | None = None) -> None:
        if self._close is not None:
            return
        if self.direct and self._transport.send_now(frame, wire):
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
                    + self.session.resume_hint,
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
        self._queue(self.session.fatal_frames(error, ref))

    def _queue(self, frames: Iterable[str]) -> None:
        """Append to the outbox and wake the writer (both made on first use)."""
        if self._ended:
            return  # the connection has ended: nothing more can be sent
        self.direct = False
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

    # -- the session's outputs -------------------------------------------------------------

    async def _run(self, outputs: Outputs) -> None:
        """Carry out outputs in order, awaiting the I/O that continuations wait for."""
        for output in outputs:
            match output:
                case Verify(token, then):
                    try:
                        result: object = await self._verifier.verify(token)
                    except GatewayError as exc:
                        result = exc
                    if self._roles is not None and isinstance(result, Claims):
                        # No await between the roles read and this: no role change between.
                        self._roles.hold(result, self)
                    await self._run(then(result))  # type: ignore[arg-type]
                case AwaitStream(since, then):
                    problem = None
                    try:
                        await self._hub.wait_caught_up()
                        if since is not None:
                            await self._hub.reach(since)
                    except GatewayError as exc:
                        problem = exc
                    await self._run(then(problem))
                case Subscribe() if self._hub.archive is not None:
                    try:
                        recall = await self._hub.recall(output.channel, output.base, output.since)
                    except BusUnavailable:
                        self.fail(GatewayError("bus_unavailable"))
                        return
                    if not self._ended:
                        self._subscribe(output, recall)
                case _:
                    self._apply(output)

    def _apply(self, output: Output) -> None:
        """Carry out an output that needs no waiting."""
        match output:
            case Send(frame):
                self._send(frame)
            case Fail(error, ref):
                self.fail(error, ref)
            case Subscribe():
                self._subscribe(output)
            case Unsubscribe(handle):
                subscriber = self._subscriptions.pop(handle, None)
                if subscriber is not None:
                    self._hub.unsubscribe(subscriber, subscriber.topic)
            case Timer(name, at, then):
                self._set_timer(name, at, then)
            case _:
                raise AssertionError(f"{output!r} must be awaited; timers cannot wait")

    def reauthorize(self, update: Callable[[Claims], Claims]) -> None:
        """A user's roles changed: the session re-checks its claims (``Session.reauthorize``)
        and what it ends is ended now, before the stream delivers anything later."""
        if self._ended:
            return
        for output in self.session.reauthorize(update):
            self._apply(output)

    def _subscribe(self, request: Subscribe, recall: Recall | None = None) -> None:
        subscriber = _Subscriber(self, request.renderer)
        previous = self._subscriptions.pop(request.handle, None)
        if previous is not None:
            self._hub.unsubscribe(previous, previous.topic)
        subscription = self._hub.subscribe(
            subscriber, request.channel, request.base, request.filter, request.since, recall
        )
        subscriber.topic = subscription.topic
        self._subscriptions[request.handle] = subscriber
        # A backlog is written with the answer, held like a hub batch (``gateway.writes``): in
        # as few writes as the bounds allow, and, as nothing awaits here, before any live event.
        holding = bool(subscription.backlog) and HELD.hold()
        try:
            for output in request.then(subscription):
                self._apply(output)
            for event in subscription.backlog:
                subscriber.deliver(event)
        finally:
            if holding:
                HELD.release()

    def _set_timer(self, name: str, at: float | None, then: Callable[[], Outputs] | None) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        if at is None or then is None or self._ended:
            return
        delay = max(0.0, at - time.time())
        self._timers[name] = self._deadlines.call_later(delay, self._fire, name, then)

    def _fire(self, name: str, then: Callable[[], Outputs]) -> None:
        self._timers.pop(name, None)
        for output in then():
            self._apply(output)

    # -- lifecycle -----------------------------------------------------------------------

    async def serve(self, receive: Receive) -> None:
        """Run until the client leaves or the connection is closed. Cleans up after itself.
        Reads in the caller's task: no task of its own (see ``Transport.close``), and in this
        coroutine's frame: an idle connection keeps no deeper one."""
        try:
            await self._run(self.session.start())
            loop = asyncio.get_running_loop()
            idle_timeout_s = self.session.idle_timeout_s
            handled, refused_at = 0, -1.0
            while True:
                try:
                    if idle_timeout_s is None:  # no timeout object per wait (native clients)
                        data = await receive()
                    else:
                        async with asyncio.timeout(idle_timeout_s):
                            data = await receive()
                except TimeoutError:
                    self.fail(GatewayError(
                        "idle_timeout", f"nothing arrived for {idle_timeout_s:g} s; send heartbeats"
                    ))  # the writer then closes it
                    continue
                if data is None:
                    return
                try:
                    if self._close is not None:
                        continue
                    if len(data) > self._limits.max_frame_bytes:
                        self.fail(GatewayError(
                            "frame_too_large",
                            f"frames are limited to {self._limits.max_frame_bytes} bytes",
                        ))
                        continue
                    now = loop.time()
                    handled += 1
                    if handled % YIELD_EVERY == 0:  # a burst read at once: let others run too
                        await asyncio.sleep(0)
                    if not self._inbound.allow(now):
                        if now - refused_at >= 1.0:  # one reply a second; the rest dropped
                            refused_at = now
                            error = GatewayError(
                                "rate_limited",
                                f"at most {self._limits.max_messages_per_s:g} frames per second; "
                                "frames beyond it are dropped",
                            )
                            await self._run(self.session.refuse(error))
                        continue
                    await self._run(self.session.receive(data))
                finally:
                    del data  # not kept while the connection waits for the next one
        finally:
            self._ended = True
            self.direct = False
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()
            if self._writer is not None:
                self._writer.cancel()
                await asyncio.gather(self._writer, return_exceptions=True)
            for subscriber in self._subscriptions.values():
                self._hub.unsubscribe(subscriber, subscriber.topic)
            self._subscriptions.clear()
            if self._roles is not None:
                self._roles.release(self)

    async def _write_loop(self, outbox: deque[str]) -> None:
        transport, loop = self._transport, asyncio.get_running_loop()
        while True:
            while outbox:
                frame = outbox.popleft()
                self._outbox_bytes -= len(frame)
                await transport.send_text(frame)
            if self._close is not None:
                self.closed_with = self._close
                await transport.close(*self._close)
                return
            self.direct = True  # everything queued went out: frames may go straight again
            self._writer_idle = loop.create_future()
            await self._writer_idle
            self._writer_idle = None

def new_connection_id() -> str:
    """A connection's name in logs and in ``ready``: 48 random bits, not a secret (nothing
    is granted by knowing one), so from ``random`` rather than a system call per connection."""
    return f"{random.getrandbits(48):012x}"


class Connections:
    """A node's open connections: serves each to its end, counts them by transport, and
    drains them all (close code 1012) when the node stops."""

    def __init__(
        self, hub: Hub, verifier: Verifier, limits: Limits, roles: Roles | None = None
    ) -> None:
        self._hub = hub
        self._verifier = verifier
        self._roles = roles
        self.limits = limits
        self._deadlines = Deadlines()  # every connection's timers, on one loop timer
        self._open: dict[Connection, None] = {}
        self._all_closed = asyncio.Event()
        self.draining = False
        self.refusing: GatewayError | None = None  # why clients are turned away (``suspend``)
        # Connections that ended, by (transport, close code or "client", reason).
        self.ended: dict[tuple[str, str, str], int] = {}

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._open))

    def __len__(self) -> int:
        return len(self._open)

    def counts(self) -> dict[str, tuple[int, int]]:
        """Open connections and their subscriptions, by transport."""
        counts: dict[str, tuple[int, int]] = {"native": (0, 0)}
        for connection in self._open:
            name = connection.session.name
            open_, subscribed = counts.get(name, (0, 0))
            counts[name] = (open_ + 1, subscribed + connection.subscription_count)
        return counts

    async def serve(
        self, session: Session, connection_id: str, transport: Transport, receive: Receive
    ) -> None:
        """Run ``session`` over ``transport`` to its end. ``partial(serve, session, id)`` is
        what an endpoint hands the socket layer (a closure would keep one more coroutine frame
        per connection)."""
        connection = Connection(
            session, transport, self.limits, self._hub, self._verifier, connection_id,
            self._roles, self._deadlines,
        )
        token = logs.connection_id.set(connection.id)
        log.info("connection opened (%s)", session.name)
        if self.draining:
            connection.fail(GatewayError("shutting_down"))
        elif self.refusing is not None:
            connection.fail(self.refusing)
        self._open[connection] = None
        self._all_closed.clear()
        try:
            await connection.serve(receive)
        finally:
            del self._open[connection]
            if not self._open:
                self._all_closed.set()
            code, reason = connection.closed_with or (None, "client_left")
            key = (session.name, "client" if code is None else str(code), reason)
            self.ended[key] = self.ended.get(key, 0) + 1
            log.info("connection closed: %s (%s)", code or "by the client", reason)
            logs.connection_id.reset(token)

    def suspend(self, error: GatewayError) -> None:
        """Close every client with ``error`` (its close code: 1012, reconnect elsewhere) and
        turn new ones away until ``resume``."""
        if self._open:
            log.warning("closing %d connection(s): %s", len(self._open), error.message)
        self.refusing = error
        for connection in list(self._open):
            connection.fail(error)

    def resume(self) -> None:
        self.refusing = None

    async def drain(self, grace_s: float) -> None:
        """Close every client with 1012 and wait (up to ``grace_s``) for their writers."""
        if not self.draining and self._open:
            log.info("draining: closing %d connection(s) with 1012", len(self._open))
        self.draining = True
        for connection in list(self._open):
            connection.fail(GatewayError("shutting_down", "the gateway is restarting"))
        if self._open:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._all_closed.wait()
