"""The native protocol's endpoint, ``/v1/ws``. Thin: it checks the Origin, accepts, and moves
frames between the socket and a ``Connection``."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from gateway.connection import Receive
from gateway.errors import CloseCode
from gateway.node import Node

router = APIRouter()


class StarletteTransport:
    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket

    async def send_text(self, frame: str) -> None:
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


@router.websocket("/v1/ws")
async def native_endpoint(websocket: WebSocket) -> None:
    node: Node = websocket.app.state.node
    if not origin_allowed(websocket, node.settings.allowed_origins):
        await websocket.close(CloseCode.POLICY, "origin_forbidden")
        return
    await websocket.accept()
    await node.serve_connection(
        StarletteTransport(websocket), receiver(websocket), bearer_token(websocket)
    )
