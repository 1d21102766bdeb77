"""A raw client for what well-behaved clients never send: oversized or slow request heads, and
WebSocket frames written by hand (pings never read, text that is not UTF-8). Used by
``tests/integration/test_abuse.py`` and by ``bench.attacks``."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from dataclasses import dataclass

from gateway.encoding import loads

UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)


@dataclass
class Answer:
    status: int
    body: dict[str, object] | None


async def open_raw(
    port: int, receive_buffer: int | None = None, source: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to the gateway on 127.0.0.1; ``receive_buffer`` shrinks the client's
    socket buffer (so that what the client does not read stays on the server); ``source`` is
    the local address to connect from (another loopback address, such as 127.0.0.2, is
    another client address to the gateway)."""
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    if source is not None:
        sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def read_answer(reader: asyncio.StreamReader, wait_s: float = 10.0) -> Answer:
    """An HTTP response (status and JSON body, if any); the connection must then close."""
    async with asyncio.timeout(wait_s):
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length) if length else b""
        try:
            rest = await reader.read()
        except ConnectionResetError:  # closed with the client's unread bytes: a reset
            rest = b""
        assert rest == b"", "the connection stays open after the answer"
    return Answer(status, loads(body) if body.startswith(b"{") else None)


async def upgrade(
    port: int,
    path: str = "/v1/ws",
    receive_buffer: int | None = None,
    source: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket connection whose handshake is done (with ``headers`` added to the upgrade
    request); frames are then written by hand."""
    reader, writer = await open_raw(port, receive_buffer, source)
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    writer.write(UPGRADE.format(path=path, key=key, extra=extra).encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final client frame (payloads up to 125 bytes: control frames, short text)."""
    assert len(payload) <= 125
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame (unmasked): its opcode and payload."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", await reader.readexactly(8))[0]
    return first & 0x0F, await reader.readexactly(length)


TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA
