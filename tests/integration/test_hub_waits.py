"""gateway.hub's waits (they need an event loop): subscriptions wait for the start-up replay
and for the stream to reach a ``since`` from another gateway."""

from __future__ import annotations

import asyncio

import pytest

from gateway import hub as hub_module
from gateway.changes import PLACE_BITS
from gateway.errors import GatewayError
from gateway.hub import Hub, Since
from tests.unit.recorder import Recorder
from tests.unit.test_hub import Stream, make_hub, position, since


@pytest.fixture
def hub() -> Hub:
    return make_hub(per_base=5, total=100, max_age_s=60)


async def test_subscriptions_wait_until_the_hub_caught_up(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    await hub.wait_caught_up()  # set by default
    hub.caught_up.clear()
    monkeypatch.setattr(hub_module, "CATCH_UP_WAIT_S", 0.05)
    with pytest.raises(GatewayError) as refused:
        await hub.wait_caught_up()
    assert refused.value.code == "not_ready"


async def test_a_since_ahead_of_the_stream_waits_for_it(hub: Hub) -> None:
    """A client coming from another gateway on the same database can be a little ahead."""
    start = hub.position
    stream = Stream(hub)
    ahead = position(stream.lsn + 0x40)
    waiting = asyncio.create_task(hub.reach(since(hub, ahead)))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    [arrived] = stream.rows("orders", 1)  # the stream reaches it
    assert arrived == ahead
    await asyncio.wait_for(waiting, 1)
    sub = hub.subscribe(Recorder(), "orders", "orders", None, since(hub, ahead))
    assert (sub.recovered, sub.backlog) == (True, ())
    sub = hub.subscribe(Recorder(), "orders", "orders", None, since(hub, start))
    assert [event.offset for event in sub.backlog] == [arrived]


async def test_a_since_the_stream_does_not_reach_in_time_is_not_recovered(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "AHEAD_WAIT_S", 0.05)
    ahead = since(hub, hub.position + (0x1000 << PLACE_BITS))
    await hub.reach(ahead)  # gives up after AHEAD_WAIT_S
    assert hub.subscribe(Recorder(), "orders", "orders", None, ahead).recovered is False
    await asyncio.wait_for(hub.reach(Since(1, "0badbad00")), 0.01)  # not this stream: at once
    Stream(hub).rows("orders", 1)  # nobody waits any more: advancing is unaffected
