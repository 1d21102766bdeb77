"""gateway.publish.Receipts: a publish request waits once for all its events' receipts."""

from __future__ import annotations

from gateway.publish import Receipt, Receipts


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
