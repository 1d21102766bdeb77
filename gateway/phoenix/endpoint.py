"""The Supabase Realtime-compatible endpoint, ``/realtime/v1/websocket`` (and Phoenix's own
``/socket/websocket``). Thin: it checks the Origin, the ``apikey`` and the ``vsn`` at the
upgrade, then serves a ``PhoenixSession``.

A refused upgrade is answered as Supabase answers it, with an HTTP status and a JSON body
(``{"error", "code", "message"}``), see ``transport.socket.refuse``.
"""

from __future__ import annotations

import hmac
from functools import partial

from fastapi import APIRouter, WebSocket

from gateway.connection import new_connection_id
from gateway.errors import GatewayError
from gateway.phoenix.frames import VSN_1, VSN_2, Serializer
from gateway.phoenix.session import PhoenixSession
from gateway.transport.deps import parts_of
from gateway.transport.socket import refuse, run_socket

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


@router.websocket("/realtime/v1/websocket")
@router.websocket("/socket/websocket")
async def phoenix_endpoint(websocket: WebSocket) -> None:
    parts = parts_of(websocket)
    settings, connections = parts.settings, parts.connections
    vsn = websocket.query_params.get("vsn") or VSN_1
    try:
        check_api_key(websocket, settings.api_key)
        if vsn not in (VSN_1, VSN_2):
            raise GatewayError("vsn_unsupported", f"vsn {vsn!r}: use {VSN_1} or {VSN_2}")
    except GatewayError as exc:
        await refuse(websocket, exc)
        return
    session = PhoenixSession(
        Serializer(vsn), parts.channels, connections.limits, settings.api_key, parts.streaming
    )
    connection_id = new_connection_id()

    await run_socket(
        websocket, parts.admission, partial(connections.serve, session, connection_id)
    )
