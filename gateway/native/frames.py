"""rtgw's native WebSocket protocol: client frames parsed into commands, server frames built.

Sans-I/O: values in, values out. See docs/protocol.md for the wire format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.encoding import dumps_text, loads
from gateway.errors import GatewayError
from gateway.events import GapNotice
from gateway.hub import Since, Subscription


@dataclass(frozen=True, slots=True)
class Auth:
    ref: str | None
    token: str


@dataclass(frozen=True, slots=True)
class Refresh:
    ref: str | None
    token: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    ref: str | None
    channel: str
    filter: str | None
    since: Since | None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    ref: str | None
    topic: str


@dataclass(frozen=True, slots=True)
class Ping:
    ref: str | None


Command = Auth | Refresh | Subscribe | Unsubscribe | Ping


class FrameError(GatewayError):
    """A frame that cannot be understood. Carries the frame's ``ref`` when one was readable."""

    def __init__(self, message: str, ref: str | None = None) -> None:
        super().__init__("bad_frame", message)
        self.ref = ref


def parse_frame(text: str | bytes) -> Command:
    """Parse one client frame. Raises ``FrameError`` with a readable message."""
    try:
        frame = loads(text)
    except ValueError:
        raise FrameError("frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise FrameError("frame must be a JSON object")
    ref = frame.get("ref")
    if ref is not None and (not isinstance(ref, str | int) or isinstance(ref, bool)):
        raise FrameError("'ref' must be a string or an integer")
    ref = None if ref is None else str(ref)
    kind = frame.get("type")
    match kind:
        case "auth" | "refresh":
            token = frame.get("token")
            if not isinstance(token, str) or not token:
                raise FrameError(f"'{kind}' needs a non-empty string 'token'", ref)
            return Auth(ref, token) if kind == "auth" else Refresh(ref, token)
        case "subscribe":
            channel = frame.get("channel")
            if not isinstance(channel, str) or not channel:
                raise FrameError("'subscribe' needs a string 'channel'", ref)
            row_filter = frame.get("filter")
            if row_filter is not None and not isinstance(row_filter, str):
                raise FrameError("'filter' must be a string like 'status=eq.paid'", ref)
            return Subscribe(ref, channel, row_filter or None, _parse_since(frame, ref))
        case "unsubscribe":
            topic = frame.get("topic")
            if not isinstance(topic, str) or not topic:
                raise FrameError("'unsubscribe' needs a string 'topic'", ref)
            return Unsubscribe(ref, topic)
        case "ping":
            return Ping(ref)
        case None:
            raise FrameError("frame has no 'type'", ref)
        case _:
            raise FrameError(f"unknown frame type {kind!r}", ref)


def _parse_since(frame: dict[str, Any], ref: str | None) -> Since | None:
    since = frame.get("since")
    if since is None:
        return None
    if not isinstance(since, dict):
        raise FrameError("'since' must be an object {offset, epoch}", ref)
    offset, epoch = since.get("offset"), since.get("epoch")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise FrameError("'since.offset' must be a non-negative integer", ref)
    if not isinstance(epoch, str):
        raise FrameError("'since.epoch' must be a string", ref)
    return Since(offset, epoch)


def ready_frame(connection_id: str, subject: str | None, expires_at: float) -> str:
    return dumps_text(
        {"type": "ready", "connection_id": connection_id, "sub": subject, "expires_at": expires_at}
    )


def subscribed_frame(ref: str | None, channel: str, sub: Subscription) -> str:
    frame: dict[str, Any] = {
        "type": "subscribed",
        "ref": ref,
        "channel": channel,
        "topic": sub.topic,
        "offset": sub.offset,
        "epoch": sub.epoch,
    }
    if sub.recovered is not None:
        frame["recovered"] = sub.recovered
    return dumps_text(frame)


def unsubscribed_frame(ref: str | None, topic: str, reason: str | None = None) -> str:
    return dumps_text({"type": "unsubscribed", "ref": ref, "topic": topic, "reason": reason})


def refreshed_frame(ref: str | None, expires_at: float) -> str:
    return dumps_text({"type": "refreshed", "ref": ref, "expires_at": expires_at})


def error_frame(error: GatewayError, ref: str | None = None) -> str:
    return dumps_text({"type": "error", "code": error.code, "message": error.message, "ref": ref})


def gap_frame(notice: GapNotice) -> str:
    return dumps_text(
        {"type": "gap", "topic": notice.topic, "epoch": notice.epoch, "offset": notice.offset,
         "reason": notice.reason}
    )


def pong_frame(ref: str | None) -> str:
    return dumps_text({"type": "pong", "ref": ref})
