"""Sockets: admission (Origin, per-address limit), refusals with a JSON body, bearer parsing,
and serving a connection on the direct path or through Starlette. Every protocol's endpoint
uses these; none of them knows a protocol."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from fastapi import WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from gateway.connection import Receive, Transport
from gateway.errors import CloseCode, GatewayError
from gateway.limits import ConnectionCounter
from gateway.transport.direct import EXTENSION, DirectSocket

log = logging.getLogger("rtgw.ws")


class StarletteSocket:
    """The ASGI path, where the server offers no direct access: every frame goes through the
    connection's writer task and Starlette's send, which waits out backpressure."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket

    async def accept(self) -> None:
        await self._websocket.accept()

    def send_now(self, frame: str, wire: bytes | None = None) -> bool:
        return False

    async def send_text(self, frame: str) -> None:
        await self._websocket.send_text(frame)

    async def close(self, code: int, reason: str) -> None:
        await self._websocket.close(code, reason)

    async def receive(self) -> str | bytes | None:
        """The next client frame, or None when the client went away."""
        try:
            message = await self._websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text: str | None = message.get("text")
        return text if text is not None else message.get("bytes") or b""


Serve = Callable[[Transport, Receive], Awaitable[None]]


def origin_allowed(websocket: WebSocket, allowed: tuple[str, ...]) -> bool:
    """Non-browser clients send no Origin. Browsers may connect from the gateway's own origin
    or from an origin in RTGW_ALLOWED_ORIGINS (``*`` allows any)."""
    origin = websocket.headers.get("origin")
    if origin is None or "*" in allowed or origin in allowed:
        return True
    host = websocket.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (the one parser for sockets,
    SSE and HTTP), or None."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def refuse(websocket: WebSocket, error: GatewayError) -> None:
    """Refuse an upgrade with the error's HTTP status and a JSON body (``{"code", "message"}``,
    plus Supabase's ``error``) through the ASGI WebSocket Denial Response extension; a plain
    close where the server lacks it. Logged at info: refusals are the client's business."""
    log.info("refused an upgrade from %s: %s", client_address(websocket), error)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        body = {"code": error.code, "message": error.message, "error": error.message}
        await websocket.send_denial_response(
            JSONResponse(body, status_code=error.spec.http_status)
        )
    else:
        await websocket.close(int(error.close_code or CloseCode.POLICY), error.code)


def client_address(websocket: WebSocket) -> str:
    """The peer's address (uvicorn rewrites it from X-Forwarded-For for trusted proxies)."""
    return websocket.client.host if websocket.client else "unknown"


@dataclass(frozen=True, slots=True)
class Admission:
    """Who may open a connection: the Origins allowed (RTGW_ALLOWED_ORIGINS) and the
    per-address connection counter (RTGW_MAX_CONNECTIONS_PER_IP)."""

    allowed_origins: tuple[str, ...]
    addresses: ConnectionCounter

    def acquire(self, address: str) -> None:
        """Take a connection slot for ``address``; ``too_many_connections`` when none is left."""
        if not self.addresses.acquire(address):
            raise GatewayError(
                "too_many_connections",
                f"at most {self.addresses.limit} connections per client address",
            )

    def release(self, address: str) -> None:
        self.addresses.release(address)


async def admit(websocket: WebSocket, admission: Admission) -> str | None:
    """Check the Origin and the per-address connection limit: the client's address, its slot
    acquired, or None when the upgrade was refused (and answered)."""
    try:
        if not origin_allowed(websocket, admission.allowed_origins):
            raise GatewayError("origin_forbidden")
        address = client_address(websocket)
        admission.acquire(address)
    except GatewayError as exc:
        await refuse(websocket, exc)
        return None
    return address


async def run_socket(websocket: WebSocket, admission: Admission, serve: Serve) -> None:
    """Admit the upgrade (or refuse it), accept it and ``serve`` the connection to its end, the
    address's slot held until then. Where uvicorn offers direct access (transport/direct.py),
    the connection is served after this endpoint has returned, so that no ASGI call stack is
    kept per connection; elsewhere within the call, through Starlette."""
    address = await admit(websocket, admission)
    if address is None:
        return
    direct: DirectSocket | None = websocket.scope.get("extensions", {}).get(EXTENSION)
    socket = StarletteSocket(websocket) if direct is None else direct
    serving = _accept_and_serve(socket, serve, admission, address)
    if direct is None:
        await serving
    else:
        direct.detach(serving)


async def _accept_and_serve(
    socket: DirectSocket | StarletteSocket, serve: Serve, admission: Admission, address: str
) -> None:
    try:
        await socket.accept()
        serving = serve(socket, socket.receive)
        del serve  # what it was made of is in ``serving``: not kept twice per connection
        await serving
    finally:
        admission.release(address)
