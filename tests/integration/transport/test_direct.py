"""gateway.transport.direct: the receive queue and writable flag that replace asyncio's."""

from __future__ import annotations

import asyncio

from gateway.transport.direct import Inbox, Writable


async def test_inbox_hands_messages_over_in_order() -> None:
    inbox = Inbox()
    assert inbox.empty()
    inbox.put_nowait({"type": "websocket.connect"})
    inbox.put_nowait({"type": "websocket.receive", "text": "a"})
    assert not inbox.empty()
    assert (await inbox.get())["type"] == "websocket.connect"
    assert await inbox.get() == {"type": "websocket.receive", "text": "a"}
    assert inbox.empty()


async def test_inbox_wakes_a_waiting_reader_and_survives_its_cancellation() -> None:
    inbox = Inbox()
    waiting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not reader.done()
    inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
    assert (await asyncio.wait_for(reader, 1))["type"] == "websocket.disconnect"


async def test_writable_blocks_senders_while_cleared() -> None:
    writable = Writable()
    assert writable.is_set()
    await asyncio.wait_for(writable.wait(), 1)  # set: no wait
    writable.clear()
    senders = [asyncio.create_task(writable.wait()) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert not writable.is_set() and not any(s.done() for s in senders)
    writable.set()
    await asyncio.wait_for(asyncio.gather(*senders), 1)
    assert writable.is_set()
