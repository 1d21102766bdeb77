"""Published events: application messages sent to a channel's topic over HTTP.

A published event does not go straight to the hub. The node hands it to the source, which
carries it through the stream (Postgres: ``pg_logical_emit_message``), so it is ordered with
the changes, numbered like them, kept in the slot and replayed after a restart. When it comes
back, the router publishes it and the ``Receipts`` tell the waiting HTTP request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from gateway.encoding import dumps, loads
from gateway.protocol.filters import Filter


class MessagePayload:
    """An application event; shown to native clients as ``message``. Row filters do not apply
    to it: every filtered variant of its topic receives it."""

    __slots__ = ("_body",)
    native_key = b"message"
    op = "MESSAGE"  # not a row change: Supabase clients' postgres_changes bindings skip it

    def __init__(self, body: bytes) -> None:
        self._body = body

    @property
    def native_body(self) -> bytes:
        return self._body

    @property
    def supabase_data(self) -> bytes:
        return self._body  # never sent: Phoenix bindings only take row operations

    def passes(self, row_filter: Filter) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class Envelope:
    """What travels through the stream: where the event goes, and the event."""

    id: str
    channel: str
    base: str
    message: bytes  # the JSON object native clients receive

    def encode(self) -> bytes:
        return b'{"id":%s,"channel":%s,"base":%s,"message":%s}' % (
            dumps(self.id), dumps(self.channel), dumps(self.base), self.message
        )

    @classmethod
    def decode(cls, content: bytes) -> Envelope | None:
        """None when ``content`` is not an envelope (written by something else)."""
        try:
            data: Any = loads(content)
            return cls(data["id"], data["channel"], data["base"], dumps(data["message"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True, slots=True)
class Receipt:
    position: int
    topics: tuple[str, ...]  # the topic keys it was published to
    delivered: int  # subscribers it was handed to


class Receipts:
    """Published events the HTTP layer waits for, by id."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[Receipt]] = {}

    def expect(self, event_id: str) -> asyncio.Future[Receipt]:
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self._waiting[event_id] = future
        return future

    def forget(self, event_id: str) -> None:
        self._waiting.pop(event_id, None)

    def waits_for(self, event_id: str) -> bool:
        return event_id in self._waiting

    def arrived(self, event_id: str, receipt: Receipt) -> None:
        future = self._waiting.pop(event_id, None)
        if future is not None and not future.done():
            future.set_result(receipt)
