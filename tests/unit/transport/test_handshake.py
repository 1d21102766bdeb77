"""gateway.transport.handshake: an upgrade's head as httptools parsed it becomes the request
websockets' own parser makes of the same bytes, and every head that parser refuses (or might see
otherwise) is left to it (None); a plain upgrade is answered with the accept value websockets
answers it with, and every other upgrade is left to websockets."""

from __future__ import annotations

import httptools
import pytest
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from gateway.transport.handshake import Upgrade, read_upgrade

UPGRADE = (
    b"GET /v1/ws?since=3 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
)


class Head:
    """What uvicorn's httptools protocol keeps of a head: the URL, names in lower case."""

    def __init__(self, raw: bytes) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(raw)
        except httptools.HttpParserUpgrade:
            pass
        self.method = parser.get_method().decode()
        self.version = parser.get_http_version()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))


def websockets_parse(raw: bytes) -> Request | None:
    reader = StreamReader()
    reader.feed_data(raw)
    parser = Request.parse(reader.read_line)
    try:
        next(parser)
    except StopIteration as done:
        request: Request = done.value
        return request
    except Exception:  # refused
        return None
    raise AssertionError("the parser wants more of a complete head")


@pytest.mark.parametrize("extra", [
    b"",
    b"Origin: https://app.example\r\nAuthorization: Bearer a.b.c\r\n",
    b"X-Spaces:   padded value \t\r\nX-Empty:\r\n",
    b"X-Obs-Text: caf\xc3\xa9\r\n",
    b"X-Many: " + b"v" * 5_000 + b"\r\n",
])
def test_a_plain_upgrade_is_the_request_websockets_parses(extra: bytes) -> None:
    raw = UPGRADE + extra + b"\r\n"
    head = Head(raw)
    upgrade = read_upgrade(head.method, head.version, head.url, head.headers)
    theirs = websockets_parse(raw)
    assert upgrade is not None and theirs is not None
    ours = upgrade.request()
    assert ours.path == theirs.path == head.url.decode()
    assert list(ours.headers.raw_items()) == [
        (name.lower(), value) for name, value in theirs.headers.raw_items()
    ]


@pytest.mark.parametrize("raw", [
    UPGRADE.replace(b"GET", b"POST") + b"\r\n",
    UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0") + b"\r\n",
    UPGRADE + b"Content-Length: 0\r\n\r\n",
    UPGRADE + b"Transfer-Encoding: chunked\r\n\r\n",
    UPGRADE + b"X-Long: " + b"v" * 8_190 + b"\r\n\r\n",
    UPGRADE + b"".join(b"X-%d: v\r\n" % i for i in range(130)) + b"\r\n",
])
def test_a_head_websockets_refuses_is_left_to_websockets(raw: bytes) -> None:
    head = Head(raw)
    assert websockets_parse(raw) is None
    assert read_upgrade(head.method, head.version, head.url, head.headers) is None


def upgrade_of(raw: bytes) -> Upgrade:
    head = Head(raw)
    upgrade = read_upgrade(head.method, head.version, head.url, head.headers)
    assert upgrade is not None
    return upgrade


def websockets_accept(raw: bytes) -> Response:
    """What websockets' server protocol answers the head (as rtgw configures it: no extension,
    no subprotocol, any Origin)."""
    request = websockets_parse(raw)
    assert request is not None
    return ServerProtocol().accept(request)


@pytest.mark.parametrize("extra", [
    b"",
    b"Origin: https://app.example\r\n",
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
])
@pytest.mark.parametrize("connection", [b"Upgrade", b"keep-alive, Upgrade", b"upgrade"])
@pytest.mark.parametrize("upgrade", [b"websocket", b"WebSocket"])
def test_a_plain_upgrade_is_answered_as_websockets_answers_it(
    extra: bytes, connection: bytes, upgrade: bytes
) -> None:
    raw = (UPGRADE.replace(b"Connection: Upgrade", b"Connection: " + connection)
           .replace(b"Upgrade: websocket", b"Upgrade: " + upgrade) + extra + b"\r\n")
    theirs = websockets_accept(raw)
    assert theirs.status_code == 101
    assert "Sec-WebSocket-Extensions" not in theirs.headers
    assert upgrade_of(raw).accept == theirs.headers["Sec-WebSocket-Accept"].encode()


@pytest.mark.parametrize("raw", [
    UPGRADE.replace(b"Connection: Upgrade", b"Connection: keep-alive") + b"\r\n",  # 426
    UPGRADE.replace(b"Upgrade: websocket", b"Upgrade: h2c") + b"\r\n",  # 426
    UPGRADE.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8") + b"\r\n",
    UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"c2hvcnQ=") + b"\r\n",  # 5 bytes
    UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"not base64!") + b"\r\n",
    UPGRADE + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",  # twice
    UPGRADE + b"Origin: https://a.example\r\nOrigin: https://b.example\r\n\r\n",
    UPGRADE + b"Connection: close\r\n\r\n",  # two Connection headers
    UPGRADE.replace(b"Connection: Upgrade", b"Connection: Upgrade,, x") + b"\r\n",
    UPGRADE.replace(b"Connection: Upgrade", b"Connection: \"Upgrade\"") + b"\r\n",
])
def test_anything_else_is_left_to_websockets(raw: bytes) -> None:
    assert upgrade_of(raw).accept is None


def test_an_offered_subprotocol_is_left_to_websockets() -> None:
    raw = UPGRADE + b"Sec-WebSocket-Protocol: chat\r\n\r\n"
    assert websockets_accept(raw).status_code == 101
    assert upgrade_of(raw).accept is None
