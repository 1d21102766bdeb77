"""The Bus contract (gateway/bus/base.py), one suite run over every backend through the ``bus``
fixture: ordering, interest, gaps ordered with publications, redelivery dropped by position.
The Redis backend runs against a real Redis, its keys under a namespace of the test's own."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Collection, Sequence

import pytest

from gateway.bus.base import Bus, Publication, Target
from gateway.bus.memory import MemoryBus
from gateway.bus.redis import RedisBus, RedisBusConfig
from gateway.changes import RoleChange
from gateway.channels import load_channels
from gateway.hub import Hub
from gateway.publish import MessagePayload
from tests.conftest import REPO
from tests.redis_server import forget
from tests.unit.recorder import Recorder

BACKENDS = ["memory", "redis"]
STREAM = "c0ffee00"


def make_bus(name: str, redis_url: str, namespace: str) -> Bus:
    match name:
        case "memory":
            return MemoryBus()
        case "redis":
            return RedisBus(RedisBusConfig(redis_url, namespace), load_channels(REPO / "channels"))
    raise AssertionError(name)


class Log:
    """A receiver that records what it is handed, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def receive(self, batch: Sequence[Publication]) -> None:
        self.seen.extend(("publication", publication) for publication in batch)

    def gap(self, channels: Collection[str] | None, reason: str) -> None:
        self.seen.append(("gap", (None if channels is None else sorted(channels), reason)))

    def start(self, stream: str, after: int) -> bool:
        return True

    def rejoin(self, stream: str, after: int) -> None:
        pass

    def positions(self, base: str | None = None) -> list[int]:
        return [
            item.position for kind, item in self.seen
            if isinstance(item, Publication)
            and (base is None or any(t.base == base for t in item.targets))
        ]


@pytest.fixture(params=BACKENDS)
async def bus(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Bus]:
    """A backend, entered, whose publisher has started a stream (it may publish)."""
    namespace = f"rtgw:test_{secrets.token_hex(6)}"
    try:
        async with make_bus(request.param, redis_url, namespace) as entered:
            entered.start(STREAM, 0)
            await entered.settle()
            yield entered
    finally:
        forget(redis_url, namespace)


def message(channel: str, base: str | None, position: int) -> Publication:
    body = b'{"n":%d}' % position
    return Publication(position, 1.0, (Target(channel, base, MessagePayload(body)),))


async def test_publications_arrive_in_order(bus: Bus) -> None:
    log = Log()
    bus.attach(log)
    bus.want("orders")
    await bus.settle()
    batch = [message("orders", "orders", position) for position in range(10, 20)]
    await bus.publish(batch[:4])
    await bus.publish(batch[4:])
    await bus.settle()
    assert log.positions("orders") == list(range(10, 20))


async def test_a_receiver_gets_the_bases_it_wants_and_channel_wide_targets(bus: Bus) -> None:
    log = Log()
    bus.attach(log)
    bus.want("my_notifications:user_id=a")
    await bus.settle()
    await bus.publish([
        message("my_notifications", "my_notifications:user_id=a", 1),
        message("my_notifications", "my_notifications:user_id=b", 2),
        message("my_notifications", None, 3),  # a TRUNCATE: every base of the channel
    ])
    await bus.settle()
    assert log.positions("my_notifications:user_id=a") == [1]
    assert 3 in log.positions()


async def test_a_gap_is_ordered_with_the_publications(bus: Bus) -> None:
    log = Log()
    bus.attach(log)
    bus.want("orders")
    await bus.settle()
    await bus.publish([message("orders", "orders", 1)])
    bus.gap({"orders"}, "slot_invalidated")
    await bus.publish([message("orders", "orders", 2)])
    await bus.settle()
    kinds = [kind for kind, _ in log.seen]
    assert kinds == ["publication", "gap", "publication"]
    assert log.seen[1][1] == (["orders"], "slot_invalidated")


async def test_every_attached_receiver_gets_every_publication(bus: Bus) -> None:
    first, second = Log(), Log()
    bus.attach(first)
    bus.attach(second)
    bus.want("orders")
    await bus.settle()
    await bus.publish([message("orders", "orders", 5)])
    await bus.settle()
    assert first.positions() == second.positions() == [5]


async def test_redelivery_is_dropped_by_position_at_the_hub(bus: Bus) -> None:
    """At-least-once: a publication that comes again (a new owner replays the slot) reaches
    subscribers once: the bus or the receiving hub drops positions already passed."""
    hub = Hub(interest=bus)
    bus.attach(hub)
    recorder = Recorder()
    hub.subscribe(recorder, "orders", "orders", None, None)
    await bus.settle()
    first = [message("orders", "orders", position) for position in (1, 2, 3)]
    await bus.publish(first)
    await bus.publish(first[1:] + [message("orders", "orders", 4)])
    await bus.settle()
    assert [event["message"]["n"] for event in recorder.decoded()] == [1, 2, 3, 4]


async def test_role_changes_reach_every_receiver_in_order_whatever_it_wants(bus: Bus) -> None:
    log = Log()
    bus.attach(log)  # wants no base at all
    revoked = (RoleChange("u-1", "admin", False), RoleChange("u-1", "support", True))
    await bus.publish([
        message("orders", "orders", 1),
        Publication(2, 1.0, roles=revoked),
        Publication(3, 1.0, roles=(RoleChange(None, None, False),)),
    ])
    await bus.settle()
    carried = [(item.position, item.roles) for kind, item in log.seen
               if isinstance(item, Publication) and item.roles]
    assert carried == [(2, revoked), (3, (RoleChange(None, None, False),))]
