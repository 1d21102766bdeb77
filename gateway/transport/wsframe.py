"""WebSocket framing (RFC 6455) for frames the server sends.

A server's frames are not masked, and rtgw negotiates no extension (no per-message deflate), so
a text frame's bytes on the wire depend on its payload alone: a frame shared by many clients is
framed once and the same bytes are written to every socket.
"""

from __future__ import annotations

import struct

_TEXT_FINAL = 0x81  # FIN + opcode 1 (text)
_SHORT = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """The complete, unmasked, final text frame carrying ``payload`` (UTF-8)."""
    size = len(payload)
    if size < 126:
        header = bytes((_TEXT_FINAL, size))
    elif size < 1 << 16:
        header = _SHORT.pack(_TEXT_FINAL, 126, size)
    else:
        header = _LONG.pack(_TEXT_FINAL, 127, size)
    return header + payload
