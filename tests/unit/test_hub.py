"""gateway.hub: topics, offsets, shared encoded frames, bounded history and resume."""

from __future__ import annotations

import pytest

from gateway.encoding import loads
from gateway.hub import Hub, Since, Topic, topic_key
from gateway.protocol.filters import parse_filter
from tests.unit.recorder import Recorder


def the_topic(hub: Hub, base: str, key: str | None = None) -> Topic:
    topics = [t for t in hub.topics_for(base) if key is None or t.key == key]
    assert len(topics) == 1
    return topics[0]


def epoch_of(hub: Hub, base: str = "orders") -> str:
    return the_topic(hub, base).epoch


class Raw:
    """A payload whose native body is given verbatim."""

    native_key = b"change"

    def __init__(self, body: bytes) -> None:
        self.native_body = body


def publish_n(hub: Hub, topic: Topic, count: int, start: int = 1) -> list[int]:
    return [hub.publish(topic, Raw(b'{"n":%d}' % n)) for n in range(start, start + count)]


@pytest.fixture
def hub() -> Hub:
    return Hub(history_size=5, max_idle_topics=2)


def test_topic_key() -> None:
    assert topic_key("orders", None) == "orders"
    assert topic_key("orders", parse_filter("total=gt.5,status=eq.paid")) == (
        "orders?status=eq.paid,total=gt.5"
    )


def test_first_subscription_starts_at_zero(hub: Hub) -> None:
    sub = hub.subscribe(Recorder(), "orders", "orders", None, None)
    assert (sub.topic, sub.offset, sub.epoch) == ("orders", 0, the_topic(hub, "orders").epoch)
    assert sub.recovered is None
    assert sub.backlog == ()
    assert len(hub) == 1


def test_epoch_is_random_per_topic(hub: Hub) -> None:
    first = hub.subscribe(Recorder(), "orders", "orders", None, None)
    second = hub.subscribe(Recorder(), "other", "other", None, None)
    assert first.epoch != second.epoch
    assert len(first.epoch) == 8


def test_offsets_continue_from_the_subscription_offset(hub: Hub) -> None:
    early = Recorder()
    hub.subscribe(early, "orders", "orders", None, None)
    topic = the_topic(hub, "orders")
    publish_n(hub, topic, 3)

    late = Recorder()
    sub = hub.subscribe(late, "orders", "orders", None, None)
    assert sub.offset == 3
    publish_n(hub, topic, 2, start=4)
    assert [f["offset"] for f in late.decoded()] == [4, 5]
    assert [f["offset"] for f in early.decoded()] == [1, 2, 3, 4, 5]
    assert topic.offset == 5


def test_every_subscriber_gets_the_same_string_object(hub: Hub) -> None:
    subscribers = [Recorder() for _ in range(3)]
    for subscriber in subscribers:
        hub.subscribe(subscriber, "orders", "orders", None, None)
    delivered = hub.publish(the_topic(hub, "orders"), Raw(b'{"x":1}'))
    assert delivered == 3
    first = subscribers[0].frames[0]
    assert isinstance(first, str)
    assert all(s.frames[0] is first for s in subscribers)
    # The history holds that very object too, so a resume replays it without re-encoding.
    kept = the_topic(hub, "orders").history[-1]
    assert kept.offset == 1 and kept.native_frame is first


def test_publish_without_subscribers_returns_zero(hub: Hub) -> None:
    hub.subscribe(Recorder(), "orders", "orders", None, None)
    topic = the_topic(hub, "orders")
    hub.unsubscribe(next(iter(topic.subscribers)), "orders")
    assert hub.publish(topic, Raw(b"{}")) == 0
    assert topic.offset == 1


def test_frame_shape(hub: Hub) -> None:
    recorder = Recorder()
    row_filter = parse_filter("status=eq.paid")
    sub = hub.subscribe(recorder, "orders", "orders", row_filter, None)
    body = b'{"op":"INSERT","new":{"id":1,"note":"caf\\u00e9 \\"q\\""}}'
    hub.publish(the_topic(hub, "orders"), Raw(body))
    frame = loads(recorder.frames[0])
    assert list(frame) == ["type", "topic", "offset", "epoch", "change"]
    assert frame == {
        "type": "event",
        "topic": "orders?status=eq.paid",
        "offset": 1,
        "epoch": sub.epoch,
        "change": {"op": "INSERT", "new": {"id": 1, "note": 'café "q"'}},
    }
    assert frame["topic"] == sub.topic


def test_topic_with_quotes_in_its_key_is_valid_json(hub: Hub) -> None:
    recorder = Recorder()
    row_filter = parse_filter('status=in.("a,\\",b)')
    sub = hub.subscribe(recorder, "orders", "orders", row_filter, None)
    hub.publish(the_topic(hub, "orders"), Raw(b"{}"))
    assert loads(recorder.frames[0])["topic"] == sub.topic


def test_history_is_bounded(hub: Hub) -> None:
    hub.subscribe(Recorder(), "orders", "orders", None, None)
    topic = the_topic(hub, "orders")
    publish_n(hub, topic, 12)
    assert [event.offset for event in topic.history] == [8, 9, 10, 11, 12]
    assert [loads(e.native_frame)["change"]["n"] for e in topic.history] == [8, 9, 10, 11, 12]


def test_zero_history_keeps_nothing() -> None:
    hub = Hub(history_size=0)
    hub.subscribe(Recorder(), "orders", "orders", None, None)
    topic = the_topic(hub, "orders")
    publish_n(hub, topic, 3)
    assert len(topic.history) == 0
    sub = hub.subscribe(Recorder(), "orders", "orders", None, Since(2, epoch_of(hub)))
    assert sub.recovered is False
    assert sub.backlog == ()


def test_resume_returns_exactly_the_missed_frames(hub: Hub) -> None:
    live = Recorder()
    hub.subscribe(live, "orders", "orders", None, None)
    topic = the_topic(hub, "orders")
    publish_n(hub, topic, 6)

    sub = hub.subscribe(Recorder(), "orders", "orders", None, Since(3, epoch_of(hub)))
    assert sub.recovered is True
    assert sub.offset == 6
    assert [event.offset for event in sub.backlog] == [4, 5, 6]
    backlog = [event.native_frame for event in sub.backlog]
    assert backlog == live.frames[3:]
    assert all(a is b for a, b in zip(backlog, live.frames[3:], strict=True))


def test_resume_from_the_oldest_kept_offset(hub: Hub) -> None:
    hub.subscribe(Recorder(), "orders", "orders", None, None)
    topic = the_topic(hub, "orders")
    publish_n(hub, topic, 8)  # history keeps 4..8
    sub = hub.subscribe(Recorder(), "orders", "orders", None, Since(3, epoch_of(hub)))
    assert sub.recovered is True
    assert [event.offset for event in sub.backlog] == [4, 5, 6, 7, 8]


def test_resume_from_zero_with_full_history(hub: Hub) -> None:
    hub.subscribe(Recorder(), "orders", "orders", None, None)
    publish_n(hub, the_topic(hub, "orders"), 2)
    sub = hub.subscribe(Recorder(), "orders", "orders", None, Since(0, epoch_of(hub)))
    assert sub.recovered is True
    assert [event.offset for event in sub.backlog] == [1, 2]


def test_resume_when_history_no_longer_reaches_back(hub: Hub) -> None:
    hub.subscribe(Recorder(), "orders", "orders", None, None)
    publish_n(hub, the_topic(hub, "orders"), 8)  # history keeps 4..8; 3 is the oldest resumable
    sub = hub.subscribe(Recorder(), "orders", "orders", None, Since(2, epoch_of(hub)))
    assert sub.recovered is False
    assert sub.backlog == ()
    assert sub.offset == 8


def test_resume_from_another_epoch(hub: Hub) -> None:
    hub.subscribe(Recorder(), "orders", "orders", None, None)
    publish_n(hub, the_topic(hub, "orders"), 3)
    sub = hub.subscribe(Recorder(), "orders", "orders", None, Since(1, "deadbeef"))
    assert sub.recovered is False
    assert sub.backlog == ()
    assert sub.offset == 3


def test_resume_from_an_offset_in_the_future(hub: Hub) -> None:
    hub.subscribe(Recorder(), "orders", "orders", None, None)
    publish_n(hub, the_topic(hub, "orders"), 3)
    sub = hub.subscribe(Recorder(), "orders", "orders", None, Since(4, epoch_of(hub)))
    assert sub.recovered is False
    assert sub.backlog == ()


def test_resume_at_the_current_offset(hub: Hub) -> None:
    hub.subscribe(Recorder(), "orders", "orders", None, None)
    publish_n(hub, the_topic(hub, "orders"), 9)  # far beyond history_size
    sub = hub.subscribe(Recorder(), "orders", "orders", None, Since(9, epoch_of(hub)))
    assert sub.recovered is True
    assert sub.backlog == ()
    assert sub.offset == 9


def test_resume_on_a_new_topic(hub: Hub) -> None:
    # A topic that did not exist has a fresh epoch: no client can claim to have followed it.
    sub = hub.subscribe(Recorder(), "orders", "orders", None, Since(0, "e0000000"))
    assert (sub.recovered, sub.backlog, sub.offset) == (False, (), 0)
    other = hub.subscribe(Recorder(), "other", "other", None, Since(5, "e0000000"))
    assert (other.recovered, other.backlog, other.offset) == (False, (), 0)


def test_backlog_is_not_delivered_by_the_hub(hub: Hub) -> None:
    hub.subscribe(Recorder(), "orders", "orders", None, None)
    publish_n(hub, the_topic(hub, "orders"), 2)
    late = Recorder()
    sub = hub.subscribe(late, "orders", "orders", None, Since(0, epoch_of(hub)))
    assert len(sub.backlog) == 2
    assert late.frames == []  # the caller delivers the backlog


def test_unsubscribe_removes_the_subscriber(hub: Hub) -> None:
    one, two = Recorder(), Recorder()
    hub.subscribe(one, "orders", "orders", None, None)
    hub.subscribe(two, "orders", "orders", None, None)
    topic = the_topic(hub, "orders")
    hub.unsubscribe(one, "orders")
    assert hub.publish(topic, Raw(b"{}")) == 1
    assert one.frames == []
    assert len(two.frames) == 1
    assert len(hub) == 1


def test_unsubscribe_unknown_is_harmless(hub: Hub) -> None:
    hub.unsubscribe(Recorder(), "nothing")
    subscriber = Recorder()
    hub.subscribe(subscriber, "orders", "orders", None, None)
    hub.unsubscribe(Recorder(), "orders")  # never subscribed
    assert hub.publish(the_topic(hub, "orders"), Raw(b"{}")) == 1
    assert len(subscriber.frames) == 1


def test_idle_topic_keeps_its_history_for_resume(hub: Hub) -> None:
    subscriber = Recorder()
    hub.subscribe(subscriber, "orders", "orders", None, None)
    topic = the_topic(hub, "orders")
    publish_n(hub, topic, 2)
    hub.unsubscribe(subscriber, "orders")
    publish_n(hub, topic, 2, start=3)  # the router still publishes to idle topics
    sub = hub.subscribe(subscriber, "orders", "orders", None, Since(2, epoch_of(hub)))
    assert sub.recovered is True
    assert [event.offset for event in sub.backlog] == [3, 4]


def test_idle_topics_beyond_the_limit_are_dropped(hub: Hub) -> None:
    subscriber = Recorder()
    epochs = {}
    for name in ("a", "b", "c"):
        epochs[name] = hub.subscribe(subscriber, "chan", f"chan:k={name}", None, None).epoch
        publish_n(hub, the_topic(hub, f"chan:k={name}"), 2)
    assert len(hub) == 3
    for name in ("a", "b", "c"):
        hub.unsubscribe(subscriber, f"chan:k={name}")
    # max_idle_topics=2: the oldest idle topic ("a") went away.
    assert len(hub) == 2
    assert list(hub.topics_for("chan:k=a")) == []
    assert sorted(hub.bases_of("chan")) == ["chan:k=b", "chan:k=c"]
    assert [t.offset for t in hub.topics_for("chan:k=b")] == [2]

    # A new subscription to the dropped topic starts from scratch.
    sub = hub.subscribe(subscriber, "chan", "chan:k=a", None, Since(2, epochs["a"]))
    assert sub.offset == 0 and sub.epoch != epochs["a"]
    assert sub.recovered is False
    assert len(hub) == 3


def test_resubscribing_makes_a_topic_busy_again(hub: Hub) -> None:
    subscriber = Recorder()
    for name in ("a", "b"):
        hub.subscribe(subscriber, "chan", f"chan:k={name}", None, None)
        hub.unsubscribe(subscriber, f"chan:k={name}")
    hub.subscribe(subscriber, "chan", "chan:k=a", None, None)  # "a" is no longer idle
    for name in ("c", "d"):
        hub.subscribe(subscriber, "chan", f"chan:k={name}", None, None)
        hub.unsubscribe(subscriber, f"chan:k={name}")
    # Idle, oldest first: b, c, d -> b is dropped; a (busy) survives.
    assert sorted(hub.bases_of("chan")) == ["chan:k=a", "chan:k=c", "chan:k=d"]


def test_zero_idle_topics_drops_on_last_unsubscribe() -> None:
    hub = Hub(max_idle_topics=0)
    one, two = Recorder(), Recorder()
    hub.subscribe(one, "orders", "orders", None, None)
    hub.subscribe(two, "orders", "orders", None, None)
    hub.unsubscribe(one, "orders")
    assert len(hub) == 1
    hub.unsubscribe(two, "orders")
    assert len(hub) == 0
    assert hub.bases_of("orders") == []
    assert list(hub.topics_for("orders")) == []


def test_bases_and_topics_after_drops() -> None:
    hub = Hub(max_idle_topics=0)
    subscriber = Recorder()
    paid = parse_filter("status=eq.paid")
    hub.subscribe(subscriber, "orders", "orders", None, None)
    hub.subscribe(subscriber, "orders", "orders", paid, None)
    hub.subscribe(subscriber, "notes", "notes:user_id=1", None, None)
    hub.subscribe(subscriber, "notes", "notes:user_id=2", None, None)
    assert sorted(t.key for t in hub.topics_for("orders")) == ["orders", "orders?status=eq.paid"]
    assert hub.bases_of("notes") == ["notes:user_id=1", "notes:user_id=2"]

    hub.unsubscribe(subscriber, "orders")
    # The base stays while one of its variants (the filtered topic) remains.
    assert [t.key for t in hub.topics_for("orders")] == ["orders?status=eq.paid"]
    assert hub.bases_of("orders") == ["orders"]
    hub.unsubscribe(subscriber, "orders?status=eq.paid")
    assert list(hub.topics_for("orders")) == []
    assert hub.bases_of("orders") == []

    hub.unsubscribe(subscriber, "notes:user_id=1")
    assert hub.bases_of("notes") == ["notes:user_id=2"]
    hub.unsubscribe(subscriber, "notes:user_id=2")
    assert hub.bases_of("notes") == []
    assert hub.bases_of("unknown") == []
    assert len(hub) == 0


def test_topics_for_is_a_snapshot(hub: Hub) -> None:
    subscriber = Recorder()
    hub.subscribe(subscriber, "orders", "orders", None, None)
    topics = hub.topics_for("orders")
    hub.subscribe(subscriber, "orders", "orders", parse_filter("id=eq.1"), None)
    assert [t.key for t in topics] == ["orders"]  # not disturbed by the new topic


def test_resume_after_the_topic_was_dropped_and_recreated_is_not_recovered() -> None:
    """A recreated topic restarts its offsets under a new epoch, so an old offset can never be
    mistaken for a position in the new stream."""
    hub = Hub(max_idle_topics=0)
    phone, laptop = Recorder(), Recorder()
    base = "my_notifications:user_id=alice"
    old = hub.subscribe(phone, "my_notifications", base, None, None)
    publish_n(hub, the_topic(hub, base), 5)
    hub.unsubscribe(phone, base)  # dropped: max_idle_topics=0
    hub.subscribe(laptop, "my_notifications", base, None, None)
    publish_n(hub, the_topic(hub, base), 7)
    sub = hub.subscribe(phone, "my_notifications", base, None, Since(5, old.epoch))
    assert sub.recovered is False and sub.backlog == ()


def test_gap_resets_the_channels_topics_and_tells_their_subscribers(hub: Hub) -> None:
    orders, other = Recorder(), Recorder()
    before = hub.subscribe(orders, "orders", "orders", None, None)
    hub.subscribe(other, "other", "other", None, None)
    publish_n(hub, the_topic(hub, "orders"), 3)
    assert hub.notify_gap(["orders"], "upstream reconnected without replay") == 1
    [notice] = orders.gaps
    assert notice.topic == "orders" and notice.reason == "upstream reconnected without replay"
    assert notice.epoch != before.epoch and other.gaps == []
    topic = the_topic(hub, "orders")
    assert (topic.offset, len(topic.history), topic.epoch) == (0, 0, notice.epoch)
    # A resume from before the gap cannot be recovered.
    late = hub.subscribe(Recorder(), "orders", "orders", None, Since(3, before.epoch))
    assert late.recovered is False
    assert hub.notify_gap(None, "everything") == 2


def test_history_is_bounded_in_total_across_topics() -> None:
    """With many partitions the per-topic bound is not enough: the oldest events across all
    topics go first, and a resume that needed them is not recovered."""
    hub = Hub(history_size=10, history_total=5)
    first = hub.subscribe(Recorder(), "chan", "chan:k=a", None, None)
    hub.subscribe(Recorder(), "chan", "chan:k=b", None, None)
    publish_n(hub, the_topic(hub, "chan:k=a"), 3)  # a: 1..3
    publish_n(hub, the_topic(hub, "chan:k=b"), 4)  # b: 1..4, evicting a:1 and a:2
    assert [e.offset for e in the_topic(hub, "chan:k=a").history] == [3]
    assert [e.offset for e in the_topic(hub, "chan:k=b").history] == [1, 2, 3, 4]
    late = hub.subscribe(Recorder(), "chan", "chan:k=a", None, Since(0, first.epoch))
    assert late.recovered is False
    recent = hub.subscribe(Recorder(), "chan", "chan:k=a", None, Since(2, first.epoch))
    assert recent.recovered is True and [e.offset for e in recent.backlog] == [3]
