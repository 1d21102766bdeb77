"""gateway.transport.direct.between_frames: when a read may be taken for a whole frame, so a
lone pong can skip websockets' parser. If websockets changes where its parser waits, these fail
(and pongs would quietly take the slow path)."""

from __future__ import annotations

from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

from gateway.transport.direct import between_frames

MASK = b"\x01\x02\x03\x04"
MASKED_PONG = b"\x8a\x84" + MASK + bytes(b ^ m for b, m in zip(b"abcd", MASK, strict=True))


def opened() -> ServerProtocol:
    server = ServerProtocol()
    server.receive_data(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    (request,) = server.events_received()
    server.send_response(server.accept(request))
    server.data_to_send()
    return server


def test_not_before_the_handshake() -> None:
    assert not between_frames(ServerProtocol())


def test_between_frames_after_the_handshake_and_after_each_whole_frame() -> None:
    server = opened()
    assert between_frames(server)
    server.receive_data(MASKED_PONG)
    assert server.events_received() == [Frame(Opcode.PONG, b"abcd")]
    assert between_frames(server)


def test_not_inside_a_frame_even_with_nothing_buffered() -> None:
    server = opened()
    server.receive_data(MASKED_PONG[:2])  # the header: the parser took it and wants the mask
    assert not between_frames(server)
    server.receive_data(MASKED_PONG[2:6])  # the mask: nothing buffered, the payload to come
    assert not between_frames(server)
    server.receive_data(MASKED_PONG[6:])
    assert between_frames(server)


def test_not_with_part_of_the_next_frame_buffered() -> None:
    server = opened()
    server.receive_data(MASKED_PONG + MASKED_PONG[:1])
    assert not between_frames(server)
