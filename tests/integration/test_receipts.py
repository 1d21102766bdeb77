"""gateway.publish: a publish request waits once for all its events' receipts, and answers
``not_ready`` when they do not all come back in time."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import GatewayError
from gateway.publish import Envelope, Outgoing, Publisher, Receipt, Receipts


async def test_one_wait_hands_over_a_requests_receipts_in_order_once_all_arrived() -> None:
    receipts = Receipts()
    arrivals = receipts.expect("a", "b", "c")
    assert receipts.waits_for("b") and not receipts.waits_for("d")
    for event_id in ("c", "a"):
        receipts.arrived(event_id, Receipt(ord(event_id), "e", (), 1))
    assert not arrivals.done()
    receipts.arrived("b", Receipt(ord("b"), "e", (), 1))
    assert [receipt.offset for receipt in await arrivals] == [ord("a"), ord("b"), ord("c")]
    assert not receipts.waits_for("a")
    assert await receipts.expect() == []


async def test_a_publish_answers_once_every_event_came_back_or_not_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receipts, emitted = Receipts(), []

    async def emit(*contents: bytes) -> None:  # the source: nothing comes back by itself
        emitted.extend(contents)

    publisher = Publisher(emit, receipts)
    events = [Outgoing("orders", "orders", "note", b'{"n":%d}' % n) for n in range(3)]
    monkeypatch.setattr("gateway.publish.PUBLISH_WAIT_S", 0.05)
    with pytest.raises(GatewayError) as refused:
        await publisher.publish(events)
    assert refused.value.code == "not_ready" and "(and the 2 after it)" in refused.value.message
    assert publisher.stats.failed == 3 and not any(
        receipts.waits_for(envelope.id) for envelope in map(Envelope.decode, emitted) if envelope
    )

    async def coming_back(*contents: bytes) -> None:  # the stream hands them back in order
        for offset, content in enumerate(contents):
            envelope = Envelope.decode(content)
            assert envelope is not None
            asyncio.get_running_loop().call_soon(
                receipts.arrived, envelope.id, Receipt(offset, "e", ("orders",), 1)
            )

    published = await Publisher(coming_back, receipts).publish(events)
    assert [receipt.offset for _, receipt in published] == [0, 1, 2]
    assert len({event_id for event_id, _ in published}) == 3
