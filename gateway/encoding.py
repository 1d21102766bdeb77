"""The one place that serializes JSON. Everything on the wire goes through here."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """Encode a JSON-ready value; non-str dict keys are allowed (stringified). The bytes take
    no more memory than their length: orjson 3.12+ hands back a buffer of at least 4 KB, and
    encoded bodies are kept (history holds every event's), which made each cost 4 KB more."""
    return bytes(memoryview(dumps_brief(value)))


def dumps_brief(value: Any) -> bytes:
    """``dumps`` for bytes used at once and dropped (joined into a frame, written): they may
    hold a larger buffer than their length."""
    try:  # str keys only, by far the most common: orjson is faster when not told otherwise
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError, for a non-str key among others
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def dumps_text(value: Any) -> str:
    """Encode a JSON-ready value as a str, for WebSocket text frames."""
    return dumps_brief(value).decode()


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode JSON; raises ``orjson.JSONDecodeError`` (a ``ValueError``) on bad input."""
    return orjson.loads(data)


def raw_json(text: str) -> Any:
    """``text``, already valid JSON (say a number with its exact digits), embedded as it is by
    ``dumps``."""
    return orjson.Fragment(text.encode())
