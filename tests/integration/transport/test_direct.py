"""gateway.transport.direct: the receive queue and writable flag that replace asyncio's, and
what a settled connection keeps (and frees: the upgrade's HTTP protocol, transport/head.py)."""

from __future__ import annotations

import asyncio
import gc

from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.protocol import Protocol
from websockets.server import ServerProtocol

from gateway.sources.embedded import EmbeddedPostgres
from gateway.transport.direct import DirectSendProtocol, Inbox, Writable, direct_protocol
from gateway.transport.head import GuardedHttpProtocol
from tests.conftest import connect, drop_slot, start_gateway, token


async def test_inbox_hands_messages_over_in_order() -> None:
    inbox = Inbox(asyncio.get_running_loop())
    assert inbox.empty()
    inbox.put_nowait({"type": "websocket.connect"})
    inbox.put_nowait({"type": "websocket.receive", "text": "a"})
    assert not inbox.empty()
    assert (await inbox.get())["type"] == "websocket.connect"
    assert await inbox.get() == {"type": "websocket.receive", "text": "a"}
    assert inbox.empty()


async def test_inbox_wakes_a_waiting_reader_and_survives_its_cancellation() -> None:
    inbox = Inbox(asyncio.get_running_loop())
    waiting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not reader.done()
    inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
    assert (await asyncio.wait_for(reader, 1))["type"] == "websocket.disconnect"


async def test_writable_blocks_senders_while_cleared() -> None:
    writable = Writable()
    assert writable.is_set()
    await asyncio.wait_for(writable.wait(), 1)  # set: no wait
    writable.clear()
    senders = [asyncio.create_task(writable.wait()) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert not writable.is_set() and not any(s.done() for s in senders)
    writable.set()
    await asyncio.wait_for(asyncio.gather(*senders), 1)
    assert writable.is_set()


async def test_a_settled_connection_keeps_nothing_of_its_handshake(pg: EmbeddedPostgres) -> None:
    """Once the handshake is done the protocol holds no scope, request or response, and
    websockets' parser no longer holds the request; pings, frames and the close still work."""
    gateway = await start_gateway(pg.dsn, ping_interval_s=0.1, ping_timeout_s=0.5)
    try:
        async with connect(gateway.ws_url) as first, connect(gateway.ws_url) as second:
            assert (await first.auth(token()))["type"] == "ready"
            assert (await second.auth(token("user-b")))["type"] == "ready"
            await asyncio.sleep(0.5)  # pings, each answered by the client's library
            protocols = [
                protocol for protocol in gateway.server.server_state.connections
                if isinstance(protocol, DirectSendProtocol)
            ]
            assert len(protocols) == 2
            for protocol in protocols:
                assert not vars(protocol).keys() & {"scope", "request", "response"}
                # the handshake's parser (which held the request) gave way to a frame parser
                assert protocol.conn.parser.gi_code is Protocol.parse.__code__  # type: ignore[attr-defined]
            assert (await first.subscribe("orders"))["type"] == "subscribed"
            assert (await second.subscribe("orders"))["type"] == "subscribed"
        await asyncio.sleep(0.2)
        assert not gateway.server.server_state.connections & set(protocols)  # both closed
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)


async def test_the_upgrades_http_protocol_is_freed_at_once(pg: EmbeddedPostgres) -> None:
    """The HTTP protocol that read the upgrade request is not left in a reference cycle for the
    garbage collector (which runs rarely, GC_THRESHOLDS): nothing of it outlives the upgrade."""
    gateway = await start_gateway(pg.dsn)
    try:
        gc.collect()
        gc.disable()  # what the upgrade leaves must be gone without a collection
        try:
            async with connect(gateway.ws_url) as client, connect(gateway.ws_url) as other:
                assert (await client.auth(token()))["type"] == "ready"
                assert (await other.auth(token("user-b")))["type"] == "ready"
                left = [o for o in gc.get_objects() if isinstance(o, GuardedHttpProtocol)]
        finally:
            gc.enable()
        assert left == []
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)



async def upgrade_answer(port: int, extra: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """Upgrade a raw socket to ``/v1/ws`` with ``extra`` headers: the answer's status line and
    headers (names in lower case, the date left out)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n" + extra + b"\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status, *lines = head[:-4].split(b"\r\n")
        fields = (line.split(b": ", 1) for line in lines)
        headers = {name.lower(): value for name, value in fields}
        headers.pop(b"date")
        return status, headers
    finally:
        writer.close()


async def test_a_plain_upgrade_is_answered_as_websockets_answers_any_other(
    pg: EmbeddedPostgres,
) -> None:
    """rtgw writes the 101 of a plain upgrade itself (``plain_accept``); one websockets answers
    (here: it offers a subprotocol) gets the same headers, and both connections work."""
    gateway = await start_gateway(pg.dsn)
    try:
        port = gateway.settings.port
        plain = await upgrade_answer(port, b"")
        other = await upgrade_answer(port, b"Sec-WebSocket-Protocol: chat\r\n")
        assert plain == other
        status, headers = plain
        assert status == b"HTTP/1.1 101 Switching Protocols"
        assert headers[b"sec-websocket-accept"] == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455
        assert headers[b"upgrade"] == b"websocket" and headers[b"connection"] == b"Upgrade"
        for offer in ({}, {"subprotocols": ["chat"]}):
            async with connect(gateway.ws_url, **offer) as client:
                assert (await client.auth(token()))["type"] == "ready"
                assert (await client.subscribe("orders"))["type"] == "subscribed"
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)


async def test_the_protocol_sets_up_what_uvicorns_sets_up() -> None:
    """``DirectSendProtocol.__init__`` stands in for uvicorn's (which it does not call): every
    attribute uvicorn's protocol starts with is there, with the same value but for the queue
    and event it replaces; a uvicorn that adds one fails here rather than at a connection."""
    config = Config(app=lambda scope, receive, send: None, ws_per_message_deflate=False)
    config.load()
    state = ServerState()
    theirs = vars(WebSocketsSansIOProtocol(config, state, {}))
    ours = vars(direct_protocol(20.0, 1024)(config, state, {}))
    assert ours.keys() == theirs.keys()
    replaced = {"queue": Inbox, "writable": Writable, "conn": ServerProtocol}
    for name, value in theirs.items():
        if name in replaced:
            assert isinstance(ours[name], replaced[name])
        else:
            assert ours[name] == value, name
    assert ours["conn"].max_size == theirs["conn"].max_size
