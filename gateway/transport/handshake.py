"""An upgrade's head, as uvicorn's HTTP protocol parsed it with httptools, read once.

websockets would parse the same head again from the socket (uvicorn writes it back out for
that) and build a request, a response with a ``Date`` header uvicorn then replaces, and objects
for each header. For the head websockets' parser would read as it is, ``read_upgrade`` keeps
what httptools parsed; for the plain upgrade every client sends (no subprotocol offered, each
header websockets checks spelt the one simple way), it also computes the
``Sec-WebSocket-Accept`` value that websockets would answer with, and the WebSocket protocol
(transport/direct.py) writes the 101 itself. Anything else is left to websockets: the head it
would refuse or might read otherwise to its parser, the upgrade it would refuse (400, 426) or
negotiate to its handshake.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from base64 import b64decode, b64encode
from collections.abc import Sequence
from dataclasses import dataclass

from websockets.datastructures import Headers
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request

# What websockets' request parser accepts in header names and values (websockets/http11.py).
HEADER_NAMES = re.compile(rb"[-!#$%&\'*+.^_`|~0-9a-zA-Z]+")
HEADER_VALUES = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")
# A Connection header that is a plain list of tokens, read as websockets' parse_connection reads
# it; any other spelling is left to websockets.
TOKEN = rb"[-!#$%&\'*+.^_`|~0-9a-zA-Z]+"
TOKEN_LIST = re.compile(rb"%s(?:[ \t]*,[ \t]*%s)*" % (TOKEN, TOKEN))
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
# The headers websockets checks (or, for Origin, refuses more than one of): at most one each.
CHECKED_ONCE = frozenset(
    (b"connection", b"upgrade", b"sec-websocket-key", b"sec-websocket-version", b"origin")
)


@dataclass(slots=True)
class Upgrade:
    """An upgrade's head that websockets' parser would read as it is."""

    path: str  # the request target, as websockets' request has it
    headers: list[tuple[bytes, bytes]]  # names in lower case, values stripped (the ASGI scope's)
    accept: bytes | None  # ``plain_accept``; None: websockets answers the upgrade

    def request(self) -> Request:
        """The request websockets' parser would make of the head."""
        fields = Headers()
        for name, value in self.headers:
            fields[name.decode()] = value.decode("ascii", "surrogateescape")
        return Request(self.path, fields)


def read_upgrade(
    method: str, http_version: str, url: bytes, headers: Sequence[tuple[bytes, bytes]]
) -> Upgrade | None:
    """The upgrade in this request head (as uvicorn's HTTP protocol parsed it, names in lower
    case), or None where websockets' parser would refuse the head or might read it otherwise
    (then it parses the head itself, as uvicorn has it do)."""
    if (method != "GET" or http_version != "1.1" or len(headers) > MAX_NUM_HEADERS
            or len(url) > MAX_LINE_LENGTH - 16
            or not HEADER_NAMES.fullmatch(b"".join(name for name, _ in headers))):
        return None
    fields = []
    for name, value in headers:
        value = value.strip(b" \t")
        if (not name or name in (b"content-length", b"transfer-encoding")
                or len(name) + len(value) > MAX_LINE_LENGTH - 8
                or not HEADER_VALUES.fullmatch(value)):
            return None
        fields.append((name, value))
    return Upgrade(url.decode("ascii", "surrogateescape"), fields, plain_accept(fields))


def plain_accept(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The ``Sec-WebSocket-Accept`` value websockets' ``process_request`` would answer these
    headers (names in lower case, values stripped) with as rtgw configures it (no extension, no
    subprotocol, any Origin), when they offer no subprotocol and spell each header it checks the
    one simple way; None for anything else."""
    seen: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in CHECKED_ONCE:
            if name in seen:
                return None
            seen[name] = value
        elif name == b"sec-websocket-protocol":
            return None
    connection, key = seen.get(b"connection"), seen.get(b"sec-websocket-key")
    if (connection is None or key is None or seen.get(b"sec-websocket-version") != b"13"
            or seen.get(b"upgrade", b"").lower() != b"websocket"
            or not TOKEN_LIST.fullmatch(connection)
            or b"upgrade" not in (token.strip(b" \t").lower() for token in connection.split(b","))):
        return None
    try:
        if len(b64decode(key, validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    return b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest())  # noqa: S324 - RFC 6455
