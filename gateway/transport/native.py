"""The native protocol's endpoint, ``/v1/ws``. Thin: it checks the Origin, accepts, and moves
frames between the socket and a ``Connection``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from gateway.connection import Receive
from gateway.errors import CloseCode, GatewayError
from gateway.node import Node
from gateway.transport.direct import EXTENSION, DirectSend

router = APIRouter()


class StarletteTransport:
    """Sends through the direct path when the server offers it and the socket can take the
    frame now; otherwise through the ASGI send, which also waits out backpressure."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        self._direct: DirectSend | None = websocket.scope.get("extensions", {}).get(EXTENSION)

    def send_now(self, frame: str) -> bool:
        direct = self._direct
        if direct is not None and direct.ready():
            direct.send_text(frame)
            return True
        return False

    async def send_text(self, frame: str) -> None:
        if not self.send_now(frame):
            await self._websocket.send_text(frame)

    async def close(self, code: int, reason: str) -> None:
        await self._websocket.close(code, reason)


def origin_allowed(websocket: WebSocket, allowed: tuple[str, ...]) -> bool:
    """Non-browser clients send no Origin. Browsers may connect from the gateway's own origin
    or from an origin in RTGW_ALLOWED_ORIGINS (``*`` allows any)."""
    origin = websocket.headers.get("origin")
    if origin is None or "*" in allowed or origin in allowed:
        return True
    host = websocket.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def bearer_token(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def refuse(websocket: WebSocket, error: GatewayError) -> None:
    """Refuse an upgrade with the error's HTTP status and a JSON body (``{"code", "message"}``,
    plus Supabase's ``error``) through the ASGI WebSocket Denial Response extension; a plain
    close where the server lacks it."""
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


@asynccontextmanager
async def admitted(websocket: WebSocket, node: Node) -> AsyncIterator[bool]:
    """Check the Origin and the per-address connection limit; on refusal answer the upgrade
    and yield False. The address's slot is held until the block ends."""
    if not origin_allowed(websocket, node.settings.allowed_origins):
        await refuse(websocket, GatewayError("origin_forbidden"))
        yield False
        return
    address = client_address(websocket)
    if not node.addresses.acquire(address):
        limit = node.addresses.limit
        await refuse(websocket, GatewayError(
            "too_many_connections", f"at most {limit} connections per client address"
        ))
        yield False
        return
    try:
        yield True
    finally:
        node.addresses.release(address)


@router.websocket("/v1/ws")
async def native_endpoint(websocket: WebSocket) -> None:
    node: Node = websocket.app.state.node
    async with admitted(websocket, node) as admit:
        if admit:
            await websocket.accept()
            await node.serve_connection(
                StarletteTransport(websocket), receiver(websocket), bearer_token(websocket)
            )


def receiver(websocket: WebSocket) -> Receive:
    """The next client frame, or None when the client went away."""

    async def receive() -> str | bytes | None:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text: str | None = message.get("text")
        return text if text is not None else message.get("bytes") or b""

    return receive
