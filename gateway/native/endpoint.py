"""The native protocol's endpoint, ``/v1/ws``: admit the upgrade, build a ``NativeSession``
and serve it (a token in ``Authorization: Bearer`` authenticates at once)."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, WebSocket

from gateway.connection import new_connection_id
from gateway.native.session import NativeSession
from gateway.transport.deps import parts_of
from gateway.transport.socket import bearer_token, run_socket

router = APIRouter()


@router.websocket("/v1/ws")
async def native_endpoint(websocket: WebSocket) -> None:
    parts = parts_of(websocket)
    connections = parts.connections
    connection_id = new_connection_id()
    session = NativeSession(
        parts.channels, connections.limits, connection_id, bearer=bearer_token(websocket.headers)
    )

    await run_socket(
        websocket, parts.admission, partial(connections.serve, session, connection_id)
    )
