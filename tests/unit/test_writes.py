"""gateway.writes: the hub holds transports' writes while it hands out a batch of several
publications, and releases every holder once, in order, when the batch is handed out."""

from __future__ import annotations

from gateway.bus.base import Publication, Target
from gateway.events import TopicEvent
from gateway.hub import Hub
from gateway.publish import MessagePayload
from gateway.writes import HELD, HeldWrites
from tests.unit.recorder import Recorder


class Holding(Recorder):
    """A subscriber that holds what it is handed while ``HELD`` holds, as a transport does."""

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name, self.log, self.held = name, log, 0

    def deliver(self, event: TopicEvent) -> None:
        super().deliver(event)
        if HELD.holding:
            if not self.held:
                HELD.held(self)
            self.held += 1

    def release(self) -> None:
        self.log.append(f"{self.name}:{self.held}")
        self.held = 0


def batch(*offsets: int) -> list[Publication]:
    return [Publication(offset, 0.0, (Target("orders", "orders",
                                              MessagePayload(b'{"n":%d}' % offset)),))
            for offset in offsets]


def test_a_batch_is_held_and_each_holder_released_once_at_its_end() -> None:
    hub, log = Hub(), []
    first, second = Holding("first", log), Holding("second", log)
    hub.subscribe(first, "orders", "orders", None, None)
    hub.subscribe(second, "orders", "orders", None, None)
    hub.receive(batch(1, 2, 3))
    assert log == ["first:3", "second:3"]
    assert not HELD.holding
    assert [frame["offset"] for frame in first.decoded()] == [1, 2, 3]


def test_a_batch_of_one_is_written_as_it_goes() -> None:
    hub, log = Hub(), []
    subscriber = Holding("only", log)
    hub.subscribe(subscriber, "orders", "orders", None, None)
    hub.receive(batch(1))
    assert log == [] and subscriber.held == 0 and len(subscriber.frames) == 1


def test_a_hold_inside_a_hold_leaves_the_release_to_the_outer_one() -> None:
    held, log = HeldWrites(), []
    holder = Holding("h", log)
    assert held.hold()
    assert not held.hold()
    held.held(holder)
    assert held.holding and log == []
    held.release()
    assert not held.holding and log == ["h:0"]
