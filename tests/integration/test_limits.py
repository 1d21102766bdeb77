"""Limits on /v1/ws, each with its documented refusal: per-address connections, frame rate,
the heartbeat, and the JSON body of refused upgrades."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
from collections.abc import Callable

import pytest
import websockets
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from gateway.encoding import dumps, loads
from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import Gateway, connect, drop_slot, start_gateway, token


async def test_connections_per_address_are_limited(pg: EmbeddedPostgres) -> None:
    gateway = await start_gateway(pg.dsn, max_connections_per_ip=2)
    try:
        async with connect(gateway.ws_url) as first, connect(gateway.ws_url):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with connect(gateway.ws_url):
                    pass
            response = refused.value.response
            assert response.status_code == 429
            assert loads(response.body)["code"] == "too_many_connections"
            await first.socket.close()
            await asyncio.sleep(0.2)
            async with connect(gateway.ws_url) as again:
                assert (await again.auth(token()))["type"] == "ready"
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)


async def test_forwarded_addresses_count_only_behind_a_trusted_proxy(pg: EmbeddedPostgres) -> None:
    """Behind RTGW_TRUSTED_PROXIES each client counts by its X-Forwarded-For address; anywhere
    else the header is ignored, so a client cannot pick the address it is counted under."""
    def behind(address: str) -> dict[str, str]:
        return {"additional_headers": {"X-Forwarded-For": address}}

    proxied = await start_gateway(pg.dsn, max_connections_per_ip=1, trusted_proxies="127.0.0.1")
    direct = await start_gateway(pg.dsn, max_connections_per_ip=1)
    try:
        async with (
            connect(proxied.ws_url, **behind("198.51.100.1")),
            connect(proxied.ws_url, **behind("198.51.100.2")) as second,
        ):
            assert (await second.auth(token()))["type"] == "ready"
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with connect(proxied.ws_url, **behind("198.51.100.2")):
                    pass
            assert refused.value.response.status_code == 429
        async with connect(direct.ws_url, **behind("198.51.100.1")):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with connect(direct.ws_url, **behind("198.51.100.2")):
                    pass
            assert refused.value.response.status_code == 429
    finally:
        for gateway in (proxied, direct):
            await gateway.stop()
            drop_slot(pg.dsn, gateway.settings.slot)


async def test_frames_beyond_the_rate_are_refused_and_the_connection_stays(
    pg: EmbeddedPostgres,
) -> None:
    gateway = await start_gateway(pg.dsn, max_messages_per_s=5)
    try:
        async with connect(gateway.ws_url) as client:
            for n in range(30):
                await client.send({"type": "ping", "ref": str(n)})
            replies = []
            with contextlib.suppress(TimeoutError):
                while True:
                    replies.append(await client.recv(wait_s=0.5))
            pongs = [r for r in replies if r["type"] == "pong"]
            limited = [r for r in replies if r.get("code") == "rate_limited"]
            assert 10 <= len(pongs) <= 12  # the burst (twice the rate), maybe one refill
            # One refusal a second says so; the other excess frames are dropped unanswered,
            # so a flood costs the gateway no work per frame beyond counting it.
            assert len(limited) == 1 and "dropped" in limited[0]["message"]
            assert len(replies) == len(pongs) + 1
            await asyncio.sleep(1.0)
            await client.send({"type": "ping", "ref": "later"})
            assert await client.recv() == {"type": "pong", "ref": "later"}
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)


async def test_a_peer_that_ignores_pings_is_closed(pg: EmbeddedPostgres) -> None:
    gateway = await start_gateway(pg.dsn, ping_interval_s=0.3, ping_timeout_s=0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.settings.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        started = time.monotonic()
        # This peer never answers the server's pings: the server must hang up on it.
        async with asyncio.timeout(10):
            while await reader.read(4096):
                pass
        assert time.monotonic() - started < 5
        writer.close()
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)


async def keepalive_peer(
    gateway: Gateway, answer: Callable[[ClientProtocol, bytes], list[bytes]], pings: int = 3
) -> tuple[ClientProtocol, list[Frame]]:
    """A client that writes what ``answer`` makes of each of the server's pings (given the
    pongs websockets queued for it), write by write, until ``pings`` pings came or the server
    hung up; its state and the frames it received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.settings.port)
    client = ClientProtocol(parse_uri(f"{gateway.ws_url}"))
    client.send_request(client.connect())
    writer.write(b"".join(client.data_to_send()))
    received: list[Frame] = []
    try:
        async with asyncio.timeout(10):
            while sum(f.opcode is Opcode.PING for f in received) < pings:
                data = await reader.read(4096)
                if not data:
                    break
                client.receive_data(data)
                for event in client.events_received():
                    if isinstance(event, Frame):
                        received.append(event)
                queued = b"".join(client.data_to_send())
                if client.state is State.OPEN and queued[:1] == b"\x8a":  # pongs only
                    for chunk in answer(client, queued):
                        writer.write(chunk)
                        await writer.drain()
                        await asyncio.sleep(0.02)  # each chunk a read of its own
    finally:
        writer.close()
    return client, received


async def test_a_peer_that_answers_pings_is_pinged_again_and_kept(pg: EmbeddedPostgres) -> None:
    """The keepalive chain (ping, pong, the next ping), on the server's shared deadlines: a pong
    alone in its read, split over three reads, or in one read with a message (the message still
    arrives)."""
    gateway = await start_gateway(pg.dsn, ping_interval_s=0.1, ping_timeout_s=0.5)

    def split(client: ClientProtocol, pongs: bytes) -> list[bytes]:
        return [pongs[:1], pongs[1:2], pongs[2:]]  # a read of the first byte alone, too

    def with_a_message(client: ClientProtocol, pongs: bytes) -> list[bytes]:
        client.send_text(dumps({"type": "ping", "ref": "r"}))
        return [pongs + b"".join(client.data_to_send())]

    try:
        for answer in (lambda _, pongs: [pongs], split, with_a_message):
            client, received = await keepalive_peer(gateway, answer)
            assert client.state is State.OPEN, "the server closed a peer that answers its pings"
            assert sum(f.opcode is Opcode.PING for f in received) == 3
            if answer is with_a_message:
                replies = [loads(f.data) for f in received if f.opcode is Opcode.TEXT]
                assert {"type": "pong", "ref": "r"} in replies
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)


async def test_a_peer_whose_pongs_answer_no_ping_is_closed(pg: EmbeddedPostgres) -> None:
    """A pong counts only if it carries the payload of the ping in flight."""
    gateway = await start_gateway(pg.dsn, ping_interval_s=0.3, ping_timeout_s=0.3)

    def wrong(client: ClientProtocol, pongs: bytes) -> list[bytes]:
        client.send_pong(b"nope")
        return [b"".join(client.data_to_send())]

    try:
        started = time.monotonic()
        client, received = await keepalive_peer(gateway, wrong, pings=10)
        assert sum(f.opcode is Opcode.PING for f in received) < 10
        assert time.monotonic() - started < 5
        assert received[-1].opcode is Opcode.CLOSE  # 1011 keepalive ping timeout
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)
