"""gateway.hub: subscribers that share a lane take each event through it, once per topic, and
every subscriber still gets every event whatever lanes its topic mixes."""

from __future__ import annotations

from collections.abc import Collection

from gateway.events import GapNotice, TopicEvent
from gateway.hub import Hub, Subscriber
from gateway.publish import MessagePayload
from tests.unit.recorder import Recorder


class Lane:
    """Hands each event to its members' ``deliver``, and counts the calls and members."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def deliver(self, event: TopicEvent, members: Collection[Subscriber]) -> None:
        self.calls.append(len(members))
        for member in members:
            member.deliver(event)


class Member(Recorder):
    """A recorder in a lane: it is handed events by the lane or by the hub."""

    def __init__(self, lane: Lane) -> None:
        super().__init__()
        self.lane = lane


def publish(hub: Hub, offset: int, topic: str = "orders") -> int:
    return hub.publish(topic, topic, MessagePayload(b'{"n":%d}' % offset), offset, 0.0)


def subscribe(hub: Hub, subscriber: Subscriber, topic: str = "orders") -> None:
    hub.subscribe(subscriber, topic, topic, None, None)


def offsets(recorder: Recorder) -> list[int]:
    return [frame["offset"] for frame in recorder.decoded()]


def test_a_topic_whose_subscribers_share_a_lane_is_handed_each_event_once() -> None:
    hub, lane = Hub(), Lane()
    members = [Member(lane) for _ in range(3)]
    for member in members:
        subscribe(hub, member)
    assert publish(hub, 1) == 3 and publish(hub, 2) == 3
    assert lane.calls == [3, 3]
    assert all(offsets(member) == [1, 2] for member in members)


def test_a_mixed_topic_delivers_to_each_subscriber_and_finds_its_lane_again() -> None:
    hub, lane, other = Hub(), Lane(), Lane()
    laned, plain, elsewhere = Member(lane), Recorder(), Member(other)
    for subscriber in (laned, plain, elsewhere):
        subscribe(hub, subscriber)
    assert publish(hub, 1) == 3
    assert lane.calls == [] and other.calls == []  # one by one: they do not all share a lane
    hub.unsubscribe(plain, "orders")
    hub.unsubscribe(elsewhere, "orders")
    assert publish(hub, 2) == 1
    assert lane.calls == [1]
    later = Member(lane)
    subscribe(hub, later)
    subscribe(hub, later)  # subscribing twice adds nothing
    assert publish(hub, 3) == 2
    assert lane.calls == [1, 2]
    assert offsets(laned) == [1, 2, 3] and offsets(later) == [3]
    assert offsets(plain) == [1] and offsets(elsewhere) == [1]


def test_lane_members_leave_and_gaps_reach_them_one_by_one() -> None:
    hub, lane = Hub(), Lane()
    first, second = Member(lane), Member(lane)
    subscribe(hub, first)
    subscribe(hub, second)
    hub.unsubscribe(first, "orders")
    hub.unsubscribe(first, "orders")  # leaving twice removes nothing more
    assert publish(hub, 1) == 1 and lane.calls == [1]
    hub.notify_gap(None, "test")
    assert offsets(first) == [] and offsets(second) == [1]
    assert [gap.reason for gap in second.gaps] == ["test"] and first.gaps == []
    assert isinstance(second.gaps[0], GapNotice)
