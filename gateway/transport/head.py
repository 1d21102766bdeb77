"""Request heads under limits, before any parser or handshake code sees them: uvicorn's httptools
protocol, measuring each request's head as it arrives (``HeadMeter``: bytes, lines, line
length), with a deadline for it to complete, and counting a connection whose head is still
arriving against its address's connection limit (but for trusted proxies: a load balancer's
connections carry many clients, each counted by its forwarded address once the head is read).

A head over a limit is answered 431, one too slow 408, an address over its limit 429, each
with the JSON error body, and the connection is closed. Nothing is buffered beyond the limits
(plus one read).

Relies on uvicorn internals (hence the pinned uvicorn version), like transport/direct.py.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.deadlines import Deadline, Deadlines
from gateway.encoding import dumps
from gateway.errors import GatewayError
from gateway.limits import ConnectionCounter, HeadLimits, HeadMeter, ProxySet
from gateway.transport.direct import DirectSendProtocol
from gateway.transport.handshake import read_upgrade

log = logging.getLogger("rtgw.http")


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with rtgw's request-head limits (see the module)."""

    limits = HeadLimits()
    addresses: ConnectionCounter | None = None  # the per-address connection limit
    proxies = ProxySet(())  # peers not counted here (RTGW_TRUSTED_PROXIES)
    deadlines: Deadlines  # the heads' deadlines, one loop timer for all (set by guarded_http)
    _meter: HeadMeter | None = None  # None: between heads
    _deadline: Deadline | None = None
    _held: str | None = None  # the address whose slot this connection holds

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """uvicorn's, but the addresses are the transport's (uvloop has them from the accept)
        rather than read from a socket object made for the purpose: five system calls fewer
        per connection."""
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server, self.client = socket_addresses(transport)
        self.scheme = "https" if transport.get_extra_info("sslcontext") else "http"
        self._meter = HeadMeter(self.limits)
        address = self.client[0] if self.client else "unknown"
        if self.addresses is not None and address not in self.proxies:
            if not self.addresses.acquire(address):
                self._refuse(GatewayError(
                    "too_many_connections",
                    f"at most {self.addresses.limit} connections per client address",
                ))
                return
            self._held = address
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        meter = self._meter
        if meter is not None:
            if self._deadline is None:  # the first bytes of a head after a previous request
                self._arm()
            try:
                ended = meter.feed(data)
            except GatewayError as exc:
                self._refuse(exc)
                return
            if ended is not None:
                self._head_done()
        super().data_received(data)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._meter is None and not self.parser.should_upgrade():
            self._meter = HeadMeter(self.limits)  # what arrives next is the next head

    def handle_websocket_upgrade(self) -> None:
        """uvicorn's, but for a ``DirectSendProtocol`` the head is handed over as httptools
        parsed it (``read_upgrade``), not written out again for websockets to parse a second
        time. Any other head goes the way uvicorn sends it."""
        protocol_class = self.ws_protocol_class
        upgrade = read_upgrade(self.scope["method"], self.scope["http_version"], self.url,
                               self.headers)
        if upgrade is None or not (isinstance(protocol_class, type)
                                   and issubclass(protocol_class, DirectSendProtocol)):
            super().handle_websocket_upgrade()
        else:
            self.connections.discard(self)
            protocol = protocol_class(self.config, self.server_state, self.app_state, self.loop)
            protocol.handshake(self.transport, (self.server, self.client),
                               self.scheme == "https", upgrade)
            self.transport.set_protocol(protocol)
        # The socket is the WebSocket protocol's now. The parser refers back to this protocol, a
        # cycle only the garbage collector would free (rarely: GC_THRESHOLDS), 2.5-3 KB per
        # connection until then: without the parser, it is freed at once.
        del self.parser

    def _arm(self) -> None:
        self._deadline = self.deadlines.call_later(self.limits.timeout_s, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        self._refuse(GatewayError(
            "request_head_timeout",
            f"the request line and headers must arrive within {self.limits.timeout_s:g} s",
        ))

    def _head_done(self) -> None:
        """The head is complete (or the connection is gone): its limits no longer apply."""
        self._meter = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._held is not None and self.addresses is not None:
            self.addresses.release(self._held)
            self._held = None

    def _refuse(self, error: GatewayError) -> None:
        log.info("refused a request from %s: %s", self.client[0] if self.client else "?", error)
        self._head_done()
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is under way: no second one in its middle
            return
        status = error.spec.http_status
        body = dumps({"code": error.code, "message": error.message})
        self.transport.write(b"".join((
            STATUS_LINE[status],
            b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        )))
        self.transport.close()


def socket_addresses(
    transport: asyncio.BaseTransport,
) -> tuple[tuple[str, int | None] | None, tuple[str, int] | None]:
    """The (server, client) addresses of a connection, as uvicorn's scope has them: (host,
    port) for IP sockets, (path, None) for the server of a Unix socket, None if unknown."""
    local = transport.get_extra_info("sockname")
    server = (local, None) if isinstance(local, str) else _host_and_port(local)
    return server, _host_and_port(transport.get_extra_info("peername"))


def _host_and_port(address: object) -> tuple[str, int] | None:
    if isinstance(address, list | tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


def guarded_http(
    limits: HeadLimits, addresses: ConnectionCounter, proxies: ProxySet
) -> type[GuardedHttpProtocol]:
    """The protocol class for uvicorn's ``http`` option, with these limits."""
    return type(
        "GatewayHttpProtocol",
        (GuardedHttpProtocol,),
        {"limits": limits, "addresses": addresses, "proxies": proxies, "deadlines": Deadlines()},
    )
