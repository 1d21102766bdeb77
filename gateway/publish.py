"""Published events: application messages sent to a channel's topic over HTTP.

A published event does not go straight to the hub. The ``Publisher`` hands it to the source,
which carries it through the stream (Postgres: ``pg_logical_emit_message``), so it is ordered
with the changes, numbered like them, kept in the slot and replayed after a restart. When it
comes back, the hub publishes it and the ``Receipts`` tell the waiting HTTP request.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import orjson

from gateway.encoding import dumps, loads
from gateway.errors import GatewayError
from gateway.filters import Filter

PUBLISH_WAIT_S = 5.0  # how long a publish waits for its event to come back


class MessagePayload:
    """An application event (``body``: the JSON object clients receive). Row filters do not
    apply to it: every filtered variant of its topic receives it."""

    __slots__ = ("body", "encodings")
    op = "MESSAGE"  # not a row change: Supabase clients' postgres_changes bindings skip it

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.encodings: dict[Any, Any] = {}

    def view(self, row_filter: Filter) -> MessagePayload:
        return self


@dataclass(slots=True)
class Envelope:
    """What travels through the stream: where the event goes, and the event. Envelopes,
    outgoing events and receipts are never changed once made; they are not ``frozen`` because
    a few are made per event, and a frozen dataclass takes several times as long to build."""

    id: str
    channel: str
    base: str
    message: bytes  # the JSON object native clients receive

    def encode(self) -> bytes:
        """One encoding call, the message inside as it is (the bytes are handed to the source,
        not kept: no copy out of orjson's buffer)."""
        return orjson.dumps({"id": self.id, "channel": self.channel, "base": self.base,
                             "message": orjson.Fragment(self.message)})

    @classmethod
    def decode(cls, content: bytes) -> Envelope | None:
        """None when ``content`` is not an envelope (written by something else)."""
        try:
            data: Any = loads(content)
            return cls(data["id"], data["channel"], data["base"], dumps(data["message"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(slots=True)
class Receipt:
    offset: int  # where the event stands, as clients see it
    epoch: str
    topics: tuple[str, ...]  # the topic keys it was published to
    delivered: int  # subscribers it was handed to


class Receipts:
    """Published events the HTTP layer waits for, by id: one wait for a request's events."""

    def __init__(self) -> None:
        self._waiting: dict[str, _Wait] = {}

    def expect(self, *event_ids: str) -> asyncio.Future[list[Receipt]]:
        """A future done with the events' receipts, in the order given, once all arrived."""
        wait = _Wait(event_ids)
        for event_id in event_ids:
            self._waiting[event_id] = wait
        return wait.future

    def forget(self, event_id: str) -> None:
        self._waiting.pop(event_id, None)

    def waits_for(self, event_id: str) -> bool:
        return event_id in self._waiting

    def arrived(self, event_id: str, receipt: Receipt) -> None:
        wait = self._waiting.pop(event_id, None)
        if wait is not None:
            wait.arrived(event_id, receipt)


class _Wait:
    """One request's events: their receipts as they arrive, and the future that hands them
    over once the last one did (one future per request, not per event)."""

    __slots__ = ("future", "_receipts", "_left")

    def __init__(self, event_ids: Sequence[str]) -> None:
        self.future: asyncio.Future[list[Receipt]] = asyncio.get_running_loop().create_future()
        self._receipts: dict[str, Receipt | None] = dict.fromkeys(event_ids)
        self._left = len(self._receipts)
        if not self._left:
            self.future.set_result([])

    def arrived(self, event_id: str, receipt: Receipt) -> None:
        self._receipts[event_id] = receipt
        self._left -= 1
        if not self._left and not self.future.done():
            self.future.set_result(cast(list[Receipt], list(self._receipts.values())))


@dataclass(slots=True)
class Outgoing:
    """An event to publish: ``event`` (its name) with ``payload`` (an encoded JSON object) to
    topic base ``base`` of ``channel``."""

    channel: str
    base: str
    event: str
    payload: bytes

    def message(self, event_id: str, at: float) -> bytes:
        """The JSON object clients receive."""
        return orjson.dumps({"id": event_id, "channel": self.channel, "event": self.event,
                             "payload": orjson.Fragment(self.payload), "time": at})


_VERSION_4 = bytes(byte & 0x0F | 0x40 for byte in range(256))  # the high nibble of byte 6: 4
_VARIANT = bytes(byte & 0x3F | 0x80 for byte in range(256))  # the top bits of byte 8: 10


def _random_ids(count: int) -> list[str]:
    """``count`` random UUIDs (version 4, RFC 9562 variant), from one read of the system's
    randomness: the version and variant bits set on every 16 bytes at once, the text sliced
    from one hex string (``uuid.UUID`` per id cost a twentieth of a batched event's CPU)."""
    randomness = bytearray(os.urandom(16 * count))
    randomness[6::16] = randomness[6::16].translate(_VERSION_4)
    randomness[8::16] = randomness[8::16].translate(_VARIANT)
    text = randomness.hex()
    return [f"{text[at:at + 8]}-{text[at + 8:at + 12]}-{text[at + 12:at + 16]}-"
            f"{text[at + 16:at + 20]}-{text[at + 20:at + 32]}" for at in range(0, 32 * count, 32)]


class Emit(Protocol):
    def __call__(self, *contents: bytes) -> Awaitable[None]:
        """``Source.emit``: carry the contents in order, all or none."""


@dataclass(slots=True)
class PublishStats:
    published: int = 0  # events published (their receipts came back)
    failed: int = 0  # events refused with ``not_ready`` once the caller was allowed to publish


class Publisher:
    """Publishes application events through the source (``emit``: ``Source.emit``)."""

    def __init__(self, emit: Emit, receipts: Receipts) -> None:
        self._emit = emit
        self._receipts = receipts
        self.stats = PublishStats()

    async def publish(self, events: Sequence[Outgoing]) -> list[tuple[str, Receipt]]:
        """Send ``events`` (each gets an ``id``) in one call of ``emit`` (all or none, in
        order) and wait until they were published. Returns their ids and receipts, in order;
        ``not_ready`` when they cannot be stored, or were stored but have not all come back
        within ``PUBLISH_WAIT_S``."""
        at = time.time()
        ids = _random_ids(len(events))
        arrivals = self._receipts.expect(*ids)
        try:
            await self._emit(*(
                Envelope(event_id, event.channel, event.base, event.message(event_id, at)).encode()
                for event_id, event in zip(ids, events, strict=True)
            ))
            try:
                async with asyncio.timeout(PUBLISH_WAIT_S):
                    receipts = await arrivals
            except TimeoutError:
                which = ids[0] if len(ids) == 1 else f"{ids[0]} (and the {len(ids) - 1} after it)"
                raise GatewayError(
                    "not_ready",
                    f"event {which} was handed to the source but has not come back from it "
                    "yet; with Postgres it will be delivered, with the Supabase upstream it is "
                    "delivered at most once",
                ) from None
        except GatewayError:
            self.stats.failed += len(events)
            raise
        finally:
            for event_id in ids:
                self._receipts.forget(event_id)
        self.stats.published += len(events)
        return list(zip(ids, receipts, strict=True))
