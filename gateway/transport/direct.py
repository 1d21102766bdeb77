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

Relies on uvicorn internals (hence the pinned uvicorn version); anywhere else the extension is
absent and transports fall back to the ASGI path.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

EXTENSION = "rtgw.direct_send"


class DirectSocket:
    """A ``Transport`` (gateway/connection.py) and a ``Receive`` straight on the protocol."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: DirectSendProtocol) -> None:
        self._protocol = protocol

    def send_now(self, frame: str) -> bool:
        """Write ``frame`` now if the socket is open and the transport is not paused; False
        otherwise (``send_text`` then waits for the transport to drain)."""
        protocol = self._protocol
        if (
            protocol.handshake_complete
            and not protocol.close_sent
            and not protocol.transport.is_closing()
            and protocol.writable.is_set()
        ):
            protocol.conn.send_text(frame.encode())
            protocol.transport.write(b"".join(protocol.conn.data_to_send()))
            return True
        return False

    async def send_text(self, frame: str) -> None:
        await self._protocol.send({"type": "websocket.send", "text": frame})

    async def close(self, code: int, reason: str) -> None:
        await self._protocol.send({"type": "websocket.close", "code": code, "reason": reason})

    async def receive(self) -> str | bytes | None:
        """The next client frame, or None when the client went away."""
        message = await self._protocol.receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            return text if text is not None else message.get("bytes") or b""
        return None

    async def accept(self) -> None:
        """Complete the handshake, then release what only the handshake needed."""
        protocol = self._protocol
        await protocol.receive()  # websocket.connect
        await protocol.send({"type": "websocket.accept"})
        del protocol.scope, protocol.request, protocol.response

    def detach(self, serving: Coroutine[Any, Any, None]) -> None:
        """Run ``serving`` (which starts with ``accept``) in the protocol's task once the ASGI
        call has returned, and close the connection when it ends. The endpoint's last call."""
        self._protocol.detached = serving


class DirectSendProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, plus the ``rtgw.direct_send`` scope extension."""

    detached: Coroutine[Any, Any, None] | None = None

    async def run_asgi(self) -> None:
        """uvicorn's ``run_asgi``; a connection the app detached is then served on this task,
        and closed when that ends."""
        extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
        extensions[EXTENSION] = DirectSocket(self)
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete and self.detached is None:
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
