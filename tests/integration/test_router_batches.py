"""gateway.router.Router as the source's ChangeSink (it awaits the bus): batches in order,
replays dropped, published events and history notes."""

from __future__ import annotations

import pytest

from gateway.changes import ChangeId, HistoryNote, Op, Published
from gateway.channels import load_channels
from gateway.publish import Envelope
from gateway.router import YIELD_EVERY
from tests.unit.test_router import CHANNELS, Setup, change, order


@pytest.fixture
def real() -> Setup:
    return Setup(load_channels(CHANNELS))


async def test_router_routes_a_batch_in_order(real: Setup) -> None:
    everything = real.subscriber("orders", "orders")
    count = YIELD_EVERY * 2 + 5
    batch = [change("orders", Op.INSERT, new=order(id=n)) for n in range(count)]
    await real.router(batch)
    events = everything.decoded()
    assert [e["offset"] for e in events] == [c.id.position for c in batch]
    assert [e["change"]["new"]["id"] for e in events] == list(range(count))
    assert real.router.stats.changes == count
    assert real.hub.stats.deliveries == count


async def test_router_accepts_an_empty_batch(real: Setup) -> None:
    await real.router([])
    assert real.router.stats.changes == 0


async def test_replayed_changes_are_dropped_by_position(real: Setup) -> None:
    everything = real.subscriber("orders", "orders")
    batch = [change("orders", Op.INSERT, new=order(id=n)) for n in range(3)]
    await real.router(batch)
    await real.router(batch[1:] + [change("orders", Op.INSERT, new=order(id=3))])  # a reconnect
    assert [e["change"]["new"]["id"] for e in everything.decoded()] == [0, 1, 2, 3]
    assert real.hub.stats.replayed == 2


async def test_a_published_event_reaches_its_topic_and_its_receipt(real: Setup) -> None:
    everything = real.subscriber("orders", "orders")
    arrived = real.hub.receipts.expect("e1")
    envelope = Envelope("e1", "orders", "orders", b'{"id":"e1","event":"note"}')
    item = Published(ChangeId(0x2000, 0), 1, envelope.encode())
    await real.router([item])
    [event] = everything.decoded()
    assert event["message"] == {"id": "e1", "event": "note"}
    assert event["offset"] == item.id.position
    [receipt] = arrived.result()
    assert (receipt.offset, receipt.epoch, receipt.topics, receipt.delivered) == (
        *real.hub.offset_and_epoch(item.id.position), ("orders",), 1
    )


async def test_published_content_that_names_no_channel_is_skipped(real: Setup) -> None:
    everything = real.subscriber("orders", "orders")
    stray = Envelope("e2", "no_such_channel", "orders", b"{}").encode()
    await real.router([Published(ChangeId(0x2000, 0), 1, stray),
                       Published(ChangeId(0x2000, 1), 1, b"not json")])
    assert everything.decoded() == []


async def test_a_history_note_that_cannot_be_read_is_skipped(real: Setup) -> None:
    everything = real.subscriber("orders", "orders")
    await real.router([HistoryNote(ChangeId(0x500, 0), 1, b"not json"),
                       HistoryNote(ChangeId(0x500, 1), 1, b'{"confirmed": 1}'),
                       change("orders", Op.INSERT, new=order(id=7))])
    assert [e["change"]["new"]["id"] for e in everything.decoded()] == [7]
