"""The Supabase Realtime-compatible endpoint, ``/realtime/v1/websocket`` (and Phoenix's own
``/socket/websocket``). Thin: it checks the Origin, the ``apikey`` and the ``vsn`` at the
upgrade, then moves frames between the socket and a ``PhoenixSession``.

A refused upgrade is answered as Supabase answers it, with an HTTP status and a JSON body
(``{"error", "code", "message"}``), through the ASGI WebSocket Denial Response extension that
uvicorn implements; a server without it gets a plain close (1008) instead.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse

from gateway.errors import CloseCode, GatewayError
from gateway.node import Node
from gateway.protocol.phoenix import VSN_1, VSN_2
from gateway.transport.native import StarletteTransport, origin_allowed, receiver

router = APIRouter()


def check_api_key(websocket: WebSocket, expected: str | None) -> None:
    """The ``apikey`` query parameter or ``x-api-key`` header must equal RTGW_API_KEY."""
    given = websocket.query_params.get("apikey") or websocket.headers.get("x-api-key")
    if expected is None:
        raise GatewayError("api_key_invalid", "this gateway has no RTGW_API_KEY: endpoint off")
    if given is None:
        raise GatewayError("api_key_invalid", "API key is missing")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise GatewayError("api_key_invalid", "API key is not valid")


async def deny(websocket: WebSocket, error: GatewayError) -> None:
    body = {"error": error.message, "code": error.code, "message": error.message}
    try:
        await websocket.send_denial_response(
            JSONResponse(body, status_code=error.spec.http_status)
        )
    except RuntimeError:  # the server lacks the denial extension
        await websocket.close(CloseCode.POLICY, error.code)


@router.websocket("/realtime/v1/websocket")
@router.websocket("/socket/websocket")
async def phoenix_endpoint(websocket: WebSocket) -> None:
    node: Node = websocket.app.state.node
    vsn = websocket.query_params.get("vsn") or VSN_1
    try:
        if not origin_allowed(websocket, node.settings.allowed_origins):
            raise GatewayError("origin_forbidden")
        check_api_key(websocket, node.settings.api_key)
        if vsn not in (VSN_1, VSN_2):
            raise GatewayError("vsn_unsupported", f"vsn {vsn!r}: use {VSN_1} or {VSN_2}")
    except GatewayError as exc:
        await deny(websocket, exc)
        return
    await websocket.accept()
    await node.serve_phoenix(StarletteTransport(websocket), receiver(websocket), vsn)
