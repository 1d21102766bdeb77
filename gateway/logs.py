"""Logging: one JSON object per line (or plain text), a connection id on every line written
while serving a connection, and tokens scrubbed from every message.

``configure`` is called once by the CLI. The connection id lives in a context variable: the
node sets it before serving a connection, and every task that connection starts inherits it.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import re
import sys
from typing import Literal

from gateway.encoding import dumps_text

connection_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "rtgw_connection_id", default=None
)

# A JWT (three base64url parts, the first starting with '{"' encoded) or a bearer credential.
_TOKEN = re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]*|(?i:bearer)\s+\S+")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with anything that looks like a token replaced."""
    return _TOKEN.sub(REDACTED, text)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "connection_id", None) is None:
            record.connection_id = connection_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """``{"ts","level","logger","message","connection_id"?,"exc"?}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        conn = getattr(record, "connection_id", None)
        if conn is not None:
            entry["connection_id"] = conn
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return dumps_text(entry)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(conn)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        conn = getattr(record, "connection_id", None)
        record.conn = f" [{conn}]" if conn else ""
        return redact(super().format(record))


def configure(fmt: Literal["json", "text"], level: str) -> None:
    """Send every logger (uvicorn's too) through one stderr handler in ``fmt``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
