"""The Bus contract (gateway/bus/base.py), one suite run over every backend through the ``bus``
fixture: ordering, interest, gaps ordered with publications, redelivery dropped by position."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence

import pytest

from gateway.bus.base import Bus, Publication, Target
from gateway.bus.memory import MemoryBus
from gateway.changes import RoleChange
from gateway.hub import Hub
from gateway.publish import MessagePayload
from tests.unit.recorder import Recorder

BACKENDS = ["memory"]


def make_bus(name: str) -> Bus:
    match name:
        case "memory":
            return MemoryBus()
    raise AssertionError(name)


class Log:
    """A receiver that records what it is handed, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def receive(self, batch: Sequence[Publication]) -> None:
        self.seen.extend(("publication", publication) for publication in batch)

    def gap(self, channels: Collection[str] | None, reason: str) -> None:
        self.seen.append(("gap", (None if channels is None else sorted(channels), reason)))

    def positions(self, base: str | None = None) -> list[int]:
        return [
            item.position for kind, item in self.seen
            if isinstance(item, Publication)
            and (base is None or any(t.base == base for t in item.targets))
        ]


@pytest.fixture(params=BACKENDS)
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    async with make_bus(request.param) as entered:
        yield entered


def message(channel: str, base: str | None, position: int) -> Publication:
    body = b'{"n":%d}' % position
    return Publication(position, 1.0, (Target(channel, base, MessagePayload(body)),))


async def test_publications_arrive_in_order(bus: Bus) -> None:
    log = Log()
    bus.attach(log)
    bus.want("orders")
    batch = [message("orders", "orders", position) for position in range(10, 20)]
    await bus.publish(batch[:4])
    await bus.publish(batch[4:])
    assert log.positions("orders") == list(range(10, 20))


async def test_a_receiver_gets_the_bases_it_wants_and_channel_wide_targets(bus: Bus) -> None:
    log = Log()
    bus.attach(log)
    bus.want("my_notifications:user_id=a")
    await bus.publish([
        message("my_notifications", "my_notifications:user_id=a", 1),
        message("my_notifications", "my_notifications:user_id=b", 2),
        message("my_notifications", None, 3),  # a TRUNCATE: every base of the channel
    ])
    assert log.positions("my_notifications:user_id=a") == [1]
    assert 3 in log.positions()


async def test_a_gap_is_ordered_with_the_publications(bus: Bus) -> None:
    log = Log()
    bus.attach(log)
    bus.want("orders")
    await bus.publish([message("orders", "orders", 1)])
    bus.gap({"orders"}, "slot_invalidated")
    await bus.publish([message("orders", "orders", 2)])
    kinds = [kind for kind, _ in log.seen]
    assert kinds == ["publication", "gap", "publication"]
    assert log.seen[1][1] == (["orders"], "slot_invalidated")


async def test_every_attached_receiver_gets_every_publication(bus: Bus) -> None:
    first, second = Log(), Log()
    bus.attach(first)
    bus.attach(second)
    bus.want("orders")
    await bus.publish([message("orders", "orders", 5)])
    assert first.positions() == second.positions() == [5]


async def test_redelivery_is_dropped_by_position_at_the_hub(bus: Bus) -> None:
    """At-least-once: a publication that comes again (a new owner replays the slot) reaches
    subscribers once, because the receiving hub drops positions it has passed."""
    hub = Hub(interest=bus)
    bus.attach(hub)
    recorder = Recorder()
    hub.subscribe(recorder, "orders", "orders", None, None)
    first = [message("orders", "orders", position) for position in (1, 2, 3)]
    await bus.publish(first)
    await bus.publish(first[1:] + [message("orders", "orders", 4)])
    assert [event["message"]["n"] for event in recorder.decoded()] == [1, 2, 3, 4]
    assert hub.stats.replayed == 2


async def test_role_changes_reach_every_receiver_in_order_whatever_it_wants(bus: Bus) -> None:
    log = Log()
    bus.attach(log)  # wants no base at all
    revoked = (RoleChange("u-1", "admin", False), RoleChange("u-1", "support", True))
    await bus.publish([
        message("orders", "orders", 1),
        Publication(2, 1.0, roles=revoked),
        Publication(3, 1.0, roles=(RoleChange(None, None, False),)),
    ])
    carried = [(item.position, item.roles) for kind, item in log.seen
               if isinstance(item, Publication) and item.roles]
    assert carried == [(2, revoked), (3, (RoleChange(None, None, False),))]
