"""Server-Sent Events, ``GET /v1/sse?channel=...``: one subscription per stream, for one-way
consumers such as notification widgets.

It runs the same ``NativeSession`` as ``/v1/ws`` (auth, grants, filters, outbox bound, token
expiry), fed with an ``auth`` and a ``subscribe`` frame; only the framing differs. The event id
is ``<epoch>:<offset>``, so a browser's automatic ``Last-Event-ID`` resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from gateway.auth import Verifier
from gateway.connection import Connections, new_connection_id
from gateway.encoding import dumps_text
from gateway.errors import GatewayError
from gateway.native.session import NativeSession
from gateway.transport.deps import (
    AdmissionDep,
    ChannelsDep,
    ConnectionsDep,
    SettingsDep,
    VerifierDep,
)
from gateway.transport.socket import Admission, bearer_token

router = APIRouter(prefix="/v1", tags=["sse"])

KEEPALIVE_S = 15.0
# Event frames are built by TopicEvent with a fixed prefix; reading the id from it avoids
# decoding each frame per client.
_EVENT_ID = re.compile(r'^\{"type":"event","topic":.*?,"offset":(\d+),"epoch":"([0-9a-f]+)"')
_TYPE = re.compile(r'^\{"type":"([a-z]+)"')


class SseTransport:
    """Turns the connection's frames into SSE text. The queue holds one chunk, so the
    connection's writer feels the client's pace and its bounded outbox applies."""

    def __init__(self) -> None:
        self.chunks: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1)

    def send_now(self, frame: str, wire: bytes | None = None) -> bool:
        return False  # frames go through the queue, at the HTTP client's pace

    async def send_text(self, frame: str) -> None:
        head = frame[:200]
        event = _EVENT_ID.match(head)
        if event is not None:
            chunk = f"id: {event.group(2)}:{event.group(1)}\nevent: event\ndata: {frame}\n\n"
        else:
            kind = _TYPE.match(head)
            chunk = f"event: {kind.group(1) if kind else 'message'}\ndata: {frame}\n\n"
        await self.chunks.put(chunk)

    async def close(self, code: int, reason: str) -> None:
        data = dumps_text({"code": code, "reason": reason})
        await self.chunks.put(f"event: close\ndata: {data}\n\n")
        await self.chunks.put(None)


@router.get("/sse", response_class=StreamingResponse)
async def sse(
    request: Request,
    settings: SettingsDep,
    channels: ChannelsDep,
    verifier: VerifierDep,
    connections: ConnectionsDep,
    admission: AdmissionDep,
    channel: str,
    filter: str | None = Query(None, description="e.g. status=eq.paid"),
    access_token: str | None = Query(
        None, description="a short-lived token, for clients that cannot send a header"
    ),
) -> StreamingResponse:
    """Stream one channel's events as ``text/event-stream``. Authenticate with
    ``Authorization: Bearer`` or a short-lived ``access_token`` query parameter; resume with
    ``Last-Event-ID`` (``<epoch>:<offset>``)."""
    token = await _token(request, verifier, access_token, settings.sse_query_token_max_ttl_s)
    claims = await verifier.verify(token)
    channels.grant(channel, claims, filter or None)  # refused now, as an HTTP error
    since = _since(request.headers.get("last-event-id"))

    address = request.client.host if request.client else "unknown"
    admission.acquire(address)
    session = NativeSession(
        channels, connections.limits, new_connection_id(), name="sse", one_subscription=True
    )
    frames = [dumps_text({"type": "auth", "token": token})]
    subscribe: dict[str, object] = {"type": "subscribe", "ref": "sse", "channel": channel}
    if filter:
        subscribe["filter"] = filter
    if since is not None:
        subscribe["since"] = since
    frames.append(dumps_text(subscribe))
    return StreamingResponse(
        _stream(connections, admission, session, frames, address),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(
    connections: Connections,
    admission: Admission,
    session: NativeSession,
    frames: list[str],
    address: str,
) -> AsyncIterator[str]:
    transport = SseTransport()
    pending = list(frames)
    never = asyncio.Event()

    async def receive() -> str | None:
        if pending:
            return pending.pop(0)
        await never.wait()  # one-way: nothing more comes from an SSE client
        return None

    connection = asyncio.create_task(
        connections.serve(session, session.connection_id, transport, receive)
    )
    try:
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_S):
                    chunk = await transport.chunks.get()
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if chunk is None:
                return
            yield chunk
    finally:
        connection.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connection
        admission.release(address)


async def _token(
    request: Request, verifier: Verifier, query_token: str | None, limit: float
) -> str:
    header_token = bearer_token(request.headers)
    if header_token is not None:
        return header_token
    if not query_token:
        raise GatewayError("auth_required", "send Authorization: Bearer or ?access_token=")
    claims = await verifier.verify(query_token)
    issued = claims.raw.get("iat")
    if not isinstance(issued, int | float) or claims.expires_at - issued > limit:
        raise GatewayError(
            "token_claims",
            f"a token in the query must carry iat and live at most {limit:g} s "
            "(URLs end up in logs); send long-lived tokens in the Authorization header",
        )
    return query_token


def _since(last_event_id: str | None) -> dict[str, object] | None:
    if not last_event_id:
        return None
    epoch, _, offset = last_event_id.strip().partition(":")
    if not offset.isdigit() or not epoch:
        raise GatewayError("bad_request", "Last-Event-ID must be <epoch>:<offset>")
    return {"offset": int(offset), "epoch": epoch}
