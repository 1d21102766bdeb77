"""A direct, synchronous send of pre-encoded text frames, offered to the app through an ASGI
scope extension by a small subclass of uvicorn's sans-I/O WebSocket protocol.

The plain ASGI path costs a message dict, several awaits and Starlette's wrappers per frame
and per client; fan-out sends the same bytes to many clients, so that overhead dominates.
Relies on uvicorn internals (hence the pinned uvicorn version); anywhere else the extension is
absent and transports fall back to the ASGI send.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

EXTENSION = "rtgw.direct_send"


class DirectSend:
    """Writes text frames straight to the socket while it can take them."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol

    def ready(self) -> bool:
        """True when a frame can be written now: open, and the transport is not paused
        (otherwise use the ASGI send, which waits for the transport to drain)."""
        protocol = self._protocol
        return (
            protocol.handshake_complete
            and not protocol.close_sent
            and not protocol.transport.is_closing()
            and protocol.writable.is_set()
        )

    def send_text(self, frame: str) -> None:
        protocol = self._protocol
        protocol.conn.send_text(frame.encode())
        protocol.transport.write(b"".join(protocol.conn.data_to_send()))


class DirectSendProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, plus the ``rtgw.direct_send`` scope extension."""

    async def run_asgi(self) -> None:
        extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
        extensions[EXTENSION] = DirectSend(self)
        await super().run_asgi()
