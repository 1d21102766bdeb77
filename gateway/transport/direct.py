"""Direct access to uvicorn's sans-I/O WebSocket protocol, offered to the app through an ASGI
scope extension by a small subclass of that protocol.

Two costs of the plain ASGI path are avoided:

* per frame and per client: a message dict, several awaits and Starlette's wrappers. Fan-out
  sends the same bytes to many clients, so that overhead dominates; ``send_now`` writes
  pre-encoded text frames synchronously instead.
* per idle connection: the ASGI call stack (uvicorn -> Starlette's middleware -> FastAPI's
  route, its exit stacks and ``WebSocket``) that stays suspended for the connection's whole
  life, and the handshake's request, response and scope kept after it. An endpoint hands the
  connection over with ``detach`` and returns; the protocol's own task then runs the connection
  on a shallow stack, with those objects released.

The protocol also waits with lighter primitives than ``asyncio.Queue`` and ``asyncio.Event``
(each holds empty deques, ~760 bytes apiece).

Relies on uvicorn internals (hence the pinned uvicorn version); anywhere else the extension is
absent and transports fall back to the ASGI path.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from typing import Any, cast
from urllib.parse import unquote

from uvicorn._types import ASGIReceiveEvent
from uvicorn.config import Config
from uvicorn.protocols.utils import (
    ClientDisconnected,
    get_client_addr,
    get_path_with_query_string,
)
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import Frame
from websockets.http11 import Request
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.utils import apply_mask

from gateway.deadlines import Deadlines
from gateway.errors import CloseCode
from gateway.limits import TokenBucket
from gateway.transport.handshake import Upgrade
from gateway.transport.wsframe import text_frame
from gateway.writes import HELD

EXTENSION = "rtgw.direct_send"
OPEN = State.OPEN
PONG = b"\x8a"  # the first byte of a pong frame (final, opcode 0xA, no extension bits)
PING_HEAD = b"\x89\x04"  # a server's ping frame with a 4-byte payload (final, unmasked)
HOLD_BYTES = 64 * 1024  # held beyond this, a socket's frames are written without waiting
# libuv reads a socket again in the same loop turn only after a read that filled its buffer
# (uvloop's is 256,000 bytes; asyncio's own loop reads once per turn); a read this large pauses
# the socket until the next turn.
PAUSE_AFTER = 64 * 1024
_WAITING_FOR_A_FRAME = StreamReader.at_eof.__code__
log = logging.getLogger("rtgw.ws")
UVICORN_LOG = logging.getLogger("uvicorn.error")  # what uvicorn's protocol logs to
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"


def between_frames(conn: Protocol) -> bool:
    """websockets' parser waits for the first byte of a frame, with nothing buffered (it is
    suspended in ``StreamReader.at_eof``, as it is only between frames): bytes that arrive now
    start a frame."""
    waiting: Any = conn.parser  # a generator, suspended in the one it delegates to
    while waiting.gi_yieldfrom is not None:
        waiting = waiting.gi_yieldfrom
    return waiting.gi_code is _WAITING_FOR_A_FRAME


class DirectSocket:
    """A ``Transport`` (gateway/connection.py) and a ``Receive`` straight on the protocol."""

    __slots__ = ("_protocol", "_inbox", "_held", "_held_bytes")

    def __init__(self, protocol: DirectSendProtocol, inbox: Inbox) -> None:
        self._protocol = protocol
        self._inbox = inbox
        self._held: list[bytes] | None = None  # frames held while the hub hands out a batch
        self._held_bytes = 0

    def send_now(self, frame: str, wire: bytes | None = None) -> bool:
        """Write ``frame`` now if the socket is open and the transport is not paused; False
        otherwise (``send_text`` then waits for the transport to drain). Server frames are
        unmasked and no extension is negotiated, so the bytes websockets would build are
        ``wire`` (a shared frame, written as it is) or ``text_frame`` of the payload. While the
        hub hands out a batch (``HELD.holding``), the frame is held and written with the batch's
        others for this socket at its end; up to ``HOLD_BYTES``, then what is held is written at
        once, so the transport's backpressure (and with it the outbox bound) applies as before."""
        held = self._held
        if held is None or wire is None:
            protocol = self._protocol
            conn = protocol.conn
            # OPEN: the handshake is done and no close frame went either way.
            if conn.state is not OPEN or not protocol.writable.ready:
                return False
            transport = protocol.transport
            if transport.is_closing():
                return False
            if conn.extensions:
                conn.send_text(frame.encode())
                transport.write(b"".join(conn.data_to_send()))
                return True
            if wire is None:
                wire = text_frame(frame.encode())
            if held is None:
                if not HELD.holding:
                    transport.write(wire)
                    return True
                held = self._held = []
                HELD.held(self)
        # Holding: the socket was open and writable at its first frame of the batch (or it
        # holds its 101, ``accept``), and nothing has been written to it since (nothing else
        # runs until the batch has been handed out).
        held.append(wire)
        self._held_bytes += len(wire)
        if self._held_bytes >= HOLD_BYTES:
            self.release()
        return True

    def release(self) -> None:
        """Write the frames held (a ``gateway.writes.Holder``), in one write. The next frame
        of the batch, if any, checks the socket again (the write may have filled it)."""
        held = self._held
        if held is None:
            return
        self._held, self._held_bytes = None, 0
        transport = self._protocol.transport
        if not transport.is_closing():
            transport.write(held[0] if len(held) == 1 else b"".join(held))

    async def send_text(self, frame: str) -> None:
        self.release()
        await self._protocol.send({"type": "websocket.send", "text": frame})

    async def close(self, code: int, reason: str) -> None:
        self.release()
        await self._protocol.send({"type": "websocket.close", "code": code, "reason": reason})

    async def receive(self) -> str | bytes | None:
        """The next client frame, or None when the client went away. uvicorn's ``receive``
        inlined, so that an idle connection waits on a future here, not two coroutines deeper."""
        protocol, inbox = self._protocol, self._inbox
        while inbox.empty():
            await inbox.arrival()
        message = inbox.take()
        if protocol.read_paused and inbox.empty():
            protocol.read_paused = False
            protocol.transport.resume_reading()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            return text if text is not None else message.get("bytes") or b""
        return None

    async def accept(self) -> None:
        """Complete the handshake, then release what only the handshake needed."""
        protocol = self._protocol
        await protocol.receive()  # websocket.connect
        response = protocol.accept_plain()
        if response is None:
            await protocol.send({"type": "websocket.accept"})
        elif response:
            # The 101 is held like a batch's frames: the session's first frames (``ready``)
            # usually follow at once and go in the same write; what comes later finds it
            # written by then (at the latest in the loop's next turn).
            self._held, self._held_bytes = [response], len(response)
            protocol.loop.call_soon(self.release)
        protocol.settle()

    def detach(self, serving: Coroutine[Any, Any, None]) -> None:
        """Run ``serving`` (which starts with ``accept``) in the protocol's task once the ASGI
        call has returned, and close the connection when it ends. The endpoint's last call."""
        self._protocol.detached = serving


class Inbox:
    """What the protocol uses of its receive queue (``put_nowait``, ``empty`` and ``get`` by
    one reader), in a list and at most one waiter."""

    __slots__ = ("_messages", "_waiter", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._messages: list[ASGIReceiveEvent] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, message: ASGIReceiveEvent) -> None:
        self._messages.append(message)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def empty(self) -> bool:
        return not self._messages

    def take(self) -> ASGIReceiveEvent:
        """The oldest message; the inbox must not be empty."""
        return self._messages.pop(0)

    def arrival(self) -> asyncio.Future[None]:
        """A future done when the next message arrives (or at once if one has)."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = self._loop.create_future()
            if self._messages:
                waiter.set_result(None)
        return waiter

    async def get(self) -> ASGIReceiveEvent:
        while not self._messages:
            await self.arrival()
        return self.take()


class Writable:
    """What the protocol uses of its ``writable`` event: ``set``, ``clear``, ``is_set`` and
    ``wait``, the waiters (senders during backpressure) in a list made when first needed.
    ``ready`` is ``is_set()`` read without a call (``send_now`` reads it per delivery)."""

    __slots__ = ("ready", "_waiters")

    def __init__(self) -> None:
        self.ready = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self.ready

    def set(self) -> None:
        self.ready = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self.ready = False

    async def wait(self) -> None:
        while not self.ready:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            await waiter


class DirectSendProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, plus the ``rtgw.direct_send`` scope extension,
    and bounds on what a client can make it do below the app:

    * pings are answered at most ``control_rate`` per second (bursts of twice that); those
      beyond are not answered;
    * a client that lets more than ``max_buffered`` bytes wait in the socket's write buffer
      (for example by never reading the pongs of a ping flood) is dropped as a slow consumer;
    * a text frame that is not UTF-8 closes the socket with 1007, logged at info;
    * one read per event-loop turn: after a read large enough that libuv may read again at
      once (``PAUSE_AFTER``), the socket is paused until the next turn, so a client that floods
      (pings parsed below the app, say) cannot hold the loop for more than one read's worth of
      parsing while everyone else waits. A smaller read already ends its socket's turn.

    Keepalive pings and the waits for their pongs are scheduled on ``deadlines``, shared by the
    server's sockets, instead of a loop timer each (gateway/deadlines.py); a pong that arrives
    alone is checked without websockets' parser."""

    deadlines: Deadlines  # set by ``direct_protocol``
    detached: Coroutine[Any, Any, None] | None = None
    _accept: bytes | None = None  # ``plain_accept`` of the upgrade, until it is answered
    writable: Writable  # type: ignore[assignment]  # the part of asyncio.Event used
    control_rate = 20.0
    max_buffered = 4 * 1024 * 1024
    _pings: TokenBucket | None = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """uvicorn's, with the lighter queue and event (``Inbox``, ``Writable``) made in place
        of asyncio's rather than after them, and uvicorn's logger looked up once per process,
        not twice per connection. rtgw offers no compression (gateway/server.py)."""
        if not config.loaded:
            config.load()
        if config.ws_per_message_deflate:
            raise ValueError("rtgw's WebSocket protocol offers no per-message compression")
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.logger = UVICORN_LOG
        self.root_path = config.root_path
        self.asgi_version = config.asgi_version
        self.app_state = app_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.default_headers = server_state.default_headers
        self.transport = None  # type: ignore[assignment]  # set by ``handshake``
        self.server = self.client = self.scheme = None  # type: ignore[assignment]
        self.queue = Inbox(self.loop)  # type: ignore[assignment]  # the part of asyncio.Queue used
        self.handshake_initiated = self.handshake_complete = False
        self.close_sent = self.disconnected = False
        self.close_timer = None
        self.close_timeout = 10.0
        self.initial_response = None
        self.conn = ServerProtocol(max_size=config.ws_max_size, logger=UVICORN_LOG)
        self.read_paused = False
        self.writable = Writable()
        self.ping_interval = config.ws_ping_interval
        self.ping_timeout = config.ws_ping_timeout
        self.ping_timer = self.pong_timer = None
        self.pending_ping_payload = None
        self.ping_sent_at = self.last_ping_rtt = 0.0
        self.frames = []
        self.curr_msg_data_type = "bytes"

    def handshake(
        self,
        transport: asyncio.Transport,
        addresses: tuple[tuple[str, int | None] | None, tuple[str, int] | None],
        secure: bool,
        upgrade: Upgrade,
    ) -> None:
        """Take over ``transport`` from the HTTP protocol that read the ``upgrade``
        (transport/handshake.py) and the socket's ``addresses`` (server, client): uvicorn's
        ``connection_made`` without asking the socket again, then its ``handle_connect`` as if
        websockets had parsed the request from the socket. A plain upgrade (``accept`` set)
        skips websockets' ``accept``: its checks, its response and the ``Date`` header uvicorn
        replaces (``accept_plain`` writes the same 101). What the socket delivers next is read
        as frames, as websockets reads it after a request."""
        self.connections.add(self)
        self.transport = transport
        self.server, self.client = addresses
        self.scheme = "wss" if secure else "ws"
        self._read_frames()
        if upgrade.accept is None:
            self.handle_connect(upgrade.request())
            return
        self._accept, self.handshake_initiated = upgrade.accept, True
        raw_path, _, query_string = upgrade.path.partition("?")
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": self.scheme,
            "server": self.server,
            "client": self.client,
            "root_path": self.root_path,
            "path": self.root_path + unquote(raw_path),
            "raw_path": self.root_path.encode("ascii") + raw_path.encode("ascii"),
            "query_string": query_string.encode("ascii"),
            "headers": upgrade.headers,
            "subprotocols": [],
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}},
        }
        self.queue.put_nowait({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi())
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

    def accept_plain(self) -> bytes | None:
        """Accept a plain upgrade as uvicorn's ``send`` accepts websockets' response: the 101 to
        write (``Upgrade``, ``Connection``, ``Sec-WebSocket-Accept``, then the server's default
        headers), b"" if the socket is closing already; None for any other upgrade (``send``
        answers it)."""
        accept, self._accept = self._accept, None
        if accept is None:
            return None
        if self.disconnected:
            raise ClientDisconnected()
        self.logger.info('%s - "WebSocket %s" [accepted]', get_client_addr(self.scope),
                         get_path_with_query_string(self.scope))
        if self.transport.is_closing():
            return b""
        self.handshake_complete = True
        self.conn.state = OPEN
        self.start_keepalive()
        return b"".join((
            SWITCHING, b"Sec-WebSocket-Accept: ", accept, b"\r\n",
            *(b"%s: %s\r\n" % header for header in self.default_headers), b"\r\n",
        ))

    def settle(self) -> None:
        """After the handshake: release what only it needed (the request, the response, the
        scope). uvicorn's protocol has more attributes than a split (shared-key) dict holds, and
        its dict grew past them: a copy sized to what is left is half of it (1,584 -> 832
        bytes). (Keeping the attributes alike for every connection on the class instead would
        halve it again, but costs about 30,000 instructions per connection in lookups.)"""
        request: Request | None = self.__dict__.pop("request", None)  # none: a plain upgrade
        if request is not None:
            self._release_request(request)
        del self.scope
        self.__dict__.pop("response", None)
        self.__dict__ = dict(self.__dict__)

    def _release_request(self, request: Request) -> None:
        """websockets' server parser keeps the handshake's request in its frame for as long as
        the connection lives. When it waits for the first frame with nothing buffered, a fresh
        frame parser takes its place, in the state the old one is in (websockets swaps parsers
        itself, for ``discard``); otherwise the request's headers are at least emptied."""
        conn = self.conn
        if conn.state is OPEN and not conn.reader.buffer and between_frames(conn):
            self._read_frames()
        else:
            request.headers.clear()

    def _read_frames(self) -> None:
        """websockets' frame parser takes over the socket's bytes from here (its server parser
        would read a request first)."""
        conn = self.conn
        conn.parser = Protocol.parse(conn)
        next(conn.parser)

    def data_received(self, data: bytes) -> None:
        if data[:1] == PONG and self._lone_pong(data):
            self._pong(apply_mask(data[6:], data[2:6]))
            return
        super().data_received(data)
        if len(data) >= PAUSE_AFTER and not self.read_paused and not self.transport.is_closing():
            self.transport.pause_reading()
            self.loop.call_soon(self._next_turn)

    def _lone_pong(self, data: bytes) -> bool:
        """``data`` is exactly one masked pong frame (what a client answers a ping with, in a
        read of its own), and websockets' parser waits for a new frame with nothing buffered:
        the pong may skip the parser, which would only hand it to ``handle_pong``."""
        size = len(data) - 6  # the header's two bytes and the masking key's four
        if not 0 <= size <= 125 or data[1] != 0x80 | size:
            return False
        return self.conn.state is OPEN and not self.close_sent and between_frames(self.conn)

    def handle_pong(self, event: Frame) -> None:
        self._pong(bytes(event.data))

    def _pong(self, payload: bytes) -> None:
        """uvicorn's ``handle_pong``: the answer to the ping in flight (others are ignored)
        ends its wait and schedules the next ping."""
        if self.pending_ping_payload is None or payload != self.pending_ping_payload:
            return
        self.last_ping_rtt = self.loop.time() - self.ping_sent_at
        self.pending_ping_payload = None
        if self.pong_timer is not None:
            self.pong_timer.cancel()
            self.pong_timer = None
            self.schedule_ping()

    def _next_turn(self) -> None:
        if not self.read_paused and not self.transport.is_closing():
            self.transport.resume_reading()

    def schedule_ping(self) -> None:
        """uvicorn's, on the shared deadlines."""
        assert self.ping_interval is not None
        delay = max(0.0, self.ping_interval - self.last_ping_rtt)
        self.ping_timer = self.deadlines.call_later(  # type: ignore[assignment]
            delay, self.send_keepalive_ping
        )

    def send_keepalive_ping(self) -> None:
        """uvicorn's, with the frame written as it is (a server's ping is unmasked, and its
        4-byte payload needs no length beyond the header's) and the wait for its pong on the
        shared deadlines."""
        self.ping_timer = None
        if self.close_sent or self.transport.is_closing() or self.conn.state is not OPEN:
            return
        payload = random.getrandbits(32).to_bytes(4, "big")  # names this ping; see ``_pong``
        self.pending_ping_payload = payload
        self.ping_sent_at = self.loop.time()
        self.transport.write(PING_HEAD + payload)
        if self.ping_timeout is not None:
            self.pong_timer = self.deadlines.call_later(  # type: ignore[assignment]
                self.ping_timeout, self.keepalive_timeout
            )
        else:
            self.schedule_ping()

    def handle_ping(self) -> None:
        """Write what websockets queued (for a burst of pings, all their pongs at once), each
        pong within the rate and the buffer bound."""
        if self._pings is None:
            self._pings = TokenBucket(self.control_rate, 2 * self.control_rate)
        now, transport = self.loop.time(), self.transport
        for chunk in self.conn.data_to_send():
            if chunk[:1] == PONG and not self._pings.allow(now):
                continue  # over the rate: this pong is dropped
            if transport.get_write_buffer_size() + len(chunk) > self.max_buffered:
                log.info("dropped a client that does not read what it is sent (slow_consumer)")
                self.close_sent = True
                transport.abort()  # what waits will never be read: do not wait to flush it
                return
            transport.write(chunk)

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:
                log.info("closed a socket that sent a text frame that is not UTF-8 (1007)")
                self.frames = []
                self.conn.send_close(CloseCode.INVALID_DATA, "invalid UTF-8")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()

    async def run_asgi(self) -> None:
        """uvicorn's ``run_asgi``; a connection the app detached is then served on this task,
        and closed when that ends. An upgrade the app refused with a response is no error."""
        # Not kept in a local: this frame lives as long as the connection, the scope need not.
        extensions = cast(dict[str, Any], self.scope.setdefault("extensions", {}))
        extensions[EXTENSION] = DirectSocket(self, cast(Inbox, self.queue))
        del extensions
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            refused = self.initial_response is not None
            if not self.handshake_complete and self.detached is None and not refused:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
        serving, self.detached = self.detached, None
        try:
            if serving is not None:
                await serving
        except ClientDisconnected:
            pass
        except Exception:
            self.logger.exception("Exception in a detached WebSocket connection\n")
        finally:
            if self.close_timer is None:
                self.transport.close()


def direct_protocol(control_rate: float, max_buffered: int) -> type[DirectSendProtocol]:
    """The protocol class for uvicorn's ``ws`` option, with these bounds (and its own
    deadlines)."""
    return type(
        "GatewayWebSocketProtocol", (DirectSendProtocol,),
        {"control_rate": control_rate, "max_buffered": max_buffered, "deadlines": Deadlines()},
    )
