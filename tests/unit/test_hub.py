"""gateway.hub and gateway.history: topics, positions, shared frames, bounded history, resume."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from gateway.bus.base import ROLES, Publication, Target
from gateway.bus.memory import MemoryBus
from gateway.changes import PLACE_BITS, ChangeId, RoleChange
from gateway.encoding import dumps, loads
from gateway.filters import Filter, parse_filter
from gateway.history import History
from gateway.hub import OFFSET_BITS, Hub, Since, topic_key
from gateway.native.codec import CODEC
from gateway.publish import MessagePayload
from tests.unit.recorder import Recorder

STREAM = "5eed0001"


class Row(MessagePayload):
    """A payload for a row: filters test its values; clients see it as a message whose body is
    the row itself."""

    op = "INSERT"

    def __init__(self, **row: Any) -> None:
        super().__init__(dumps(row))
        self.row = row

    def view(self, row_filter: Filter) -> Row | None:
        return self if row_filter.matches(self.row, {}) else None


class Truncate(Row):
    op = "TRUNCATE"

    def view(self, row_filter: Filter) -> Row:
        return self


NOW = 1_800_000_000.0  # Unix seconds: when the tests' events were committed


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def position(lsn: int, seq: int = 0) -> int:
    return ChangeId(lsn, seq).position


class Stream:
    """Publishes rows at increasing positions, one transaction per row unless told otherwise."""

    def __init__(self, hub: Hub, lsn: int = 0x1000) -> None:
        self.hub, self.lsn = hub, lsn
        self.committed_at = NOW

    def publish(self, channel: str, base: str | None, payload: Row, same_txn: bool = False) -> int:
        if not same_txn:
            self.lsn += 0x40
        at = max(position(self.lsn), self.hub.position + 1) if same_txn else position(self.lsn)
        assert self.hub.advance(at)
        self.hub.publish(channel, base, payload, at, self.committed_at)
        return at

    def rows(self, base: str, count: int, channel: str = "orders") -> list[int]:
        return [self.publish(channel, base, Row(n=n)) for n in range(count)]


def make_hub(**history: Any) -> Hub:
    hub = Hub(History(clock=Clock(), **history))
    hub.start(STREAM, position(0x1000) - 1)
    return hub


def since(hub: Hub, at: int) -> Since:
    offset, epoch = hub.offset_and_epoch(at)
    return Since(offset, epoch)


def ns(recorder: Recorder) -> list[int]:
    return [frame["message"]["n"] for frame in recorder.decoded()]


@pytest.fixture
def hub() -> Hub:
    return make_hub(per_base=5, total=100, max_age_s=60)


def test_topic_key() -> None:
    assert topic_key("orders", None) == "orders"
    assert topic_key("orders", parse_filter("total=gt.5,status=eq.paid")) == (
        "orders?status=eq.paid,total=gt.5"
    )


def test_a_subscription_starts_where_the_stream_is(hub: Hub) -> None:
    sub = hub.subscribe(Recorder(), "orders", "orders", None, None)
    assert (sub.topic, sub.recovered, sub.backlog) == ("orders", None, ())
    assert (sub.offset, sub.epoch) == (position(0x1000) - 1, STREAM + "0")
    at = Stream(hub).rows("other", 1, channel="other")[0]
    later = hub.subscribe(Recorder(), "orders", "orders", parse_filter("n=eq.1"), None)
    assert later.offset == at  # other topics' events move every topic's position
    assert len(hub) == 2


def test_offsets_are_stream_positions_shared_by_every_topic(hub: Hub) -> None:
    orders, notes = Recorder(), Recorder()
    hub.subscribe(orders, "orders", "orders", None, None)
    hub.subscribe(notes, "notes", "notes:user_id=1", None, None)
    stream = Stream(hub)
    first = stream.publish("orders", "orders", Row(n=0))
    second = stream.publish("notes", "notes:user_id=1", Row(n=1))
    third = stream.publish("orders", "orders", Row(n=2), same_txn=True)
    assert [f["offset"] for f in orders.decoded()] == [first, third]
    assert [f["offset"] for f in notes.decoded()] == [second]
    assert first < second < third  # increasing, not consecutive


def test_epochs_name_the_stream_and_a_window_of_positions(hub: Hub) -> None:
    assert hub.offset_and_epoch(5) == (5, STREAM + "0")
    assert hub.offset_and_epoch((3 << OFFSET_BITS) + 7) == (7, STREAM + "3")
    top = (1 << OFFSET_BITS) - 1
    assert hub.offset_and_epoch(top)[0] < 2**53  # exact in JavaScript


def test_every_subscriber_gets_the_same_string_object(hub: Hub) -> None:
    subscribers = [Recorder() for _ in range(3)]
    for subscriber in subscribers:
        hub.subscribe(subscriber, "orders", "orders", None, None)
    assert hub.publish("orders", "orders", Row(x=1), position(0x2000), NOW) == 3
    first = subscribers[0].frames[0]
    assert isinstance(first, str)
    assert all(s.frames[0] is first for s in subscribers)


def test_frame_shape(hub: Hub) -> None:
    recorder = Recorder()
    sub = hub.subscribe(recorder, "orders", "orders", parse_filter("status=eq.paid"), None)
    body = {"status": "paid", "note": 'café "q"'}
    at = position(0x2000, 3)
    hub.publish("orders", "orders", Row(**body), at, NOW)
    frame = loads(recorder.frames[0])
    assert list(frame) == ["type", "topic", "offset", "epoch", "message"]
    assert frame == {"type": "event", "topic": sub.topic, "offset": at, "epoch": STREAM + "0",
                     "message": body}


def test_topic_with_quotes_in_its_key_is_valid_json(hub: Hub) -> None:
    recorder = Recorder()
    sub = hub.subscribe(recorder, "orders", "orders", parse_filter('n=in.("a,\\",b)'), None)
    hub.publish("orders", "orders", Truncate(), position(0x2000), NOW)
    assert loads(recorder.frames[0])["topic"] == sub.topic


def test_filters_choose_what_a_topic_receives(hub: Hub) -> None:
    paid, everything = Recorder(), Recorder()
    hub.subscribe(paid, "orders", "orders", parse_filter("status=eq.paid"), None)
    hub.subscribe(everything, "orders", "orders", None, None)
    stream = Stream(hub)
    stream.publish("orders", "orders", Row(n=0, status="open"))
    stream.publish("orders", "orders", Row(n=1, status="paid"))
    assert (ns(paid), ns(everything)) == ([1], [0, 1])


def test_a_truncate_reaches_every_partition_of_its_channel(hub: Hub) -> None:
    alice, bob, other = Recorder(), Recorder(), Recorder()
    hub.subscribe(alice, "notes", "notes:user_id=alice", parse_filter("n=eq.9"), None)
    hub.subscribe(bob, "notes", "notes:user_id=bob", None, None)
    hub.subscribe(other, "orders", "orders", None, None)
    assert hub.publish("notes", None, Truncate(n=0), position(0x2000), NOW) == 2
    assert (ns(alice), ns(bob), other.frames) == ([0], [0], [])


def test_unsubscribing_the_last_subscriber_drops_the_topic(hub: Hub) -> None:
    one, two = Recorder(), Recorder()
    hub.subscribe(one, "orders", "orders", None, None)
    hub.subscribe(two, "orders", "orders", None, None)
    hub.unsubscribe(one, "orders")
    hub.unsubscribe(Recorder(), "orders")  # never subscribed: harmless
    hub.unsubscribe(Recorder(), "nothing")
    assert hub.publish("orders", "orders", Row(n=1), position(0x2000), NOW) == 1
    assert one.frames == [] and len(two.frames) == 1
    hub.unsubscribe(two, "orders")
    assert len(hub) == 0 and list(hub.topics_for("orders")) == []
    assert hub.publish("orders", None, Truncate(n=2), position(0x2100), NOW) == 0


# --- resume ------------------------------------------------------------------------------------


def test_resume_returns_exactly_the_missed_events(hub: Hub) -> None:
    phone = Recorder()
    hub.subscribe(phone, "orders", "orders", None, None)
    stream = Stream(hub)
    seen = stream.rows("orders", 2)
    hub.unsubscribe(phone, "orders")
    missed = stream.rows("orders", 3)
    sub = hub.subscribe(Recorder(), "orders", "orders", None, since(hub, seen[-1]))
    assert sub.recovered is True
    assert [event.offset for event in sub.backlog] == missed
    assert [loads(e.encoded(CODEC)[0])["message"]["n"] for e in sub.backlog] == [0, 1, 2]
    assert (sub.offset, sub.epoch) == hub.offset_and_epoch(missed[-1])


def test_resume_on_a_topic_that_had_no_subscribers(hub: Hub) -> None:
    """History keeps every event, so a topic created after its events went by still resumes
    (this is what a restarted gateway relies on)."""
    start = hub.position
    Stream(hub).rows("orders", 2)
    sub = hub.subscribe(Recorder(), "orders", "orders", None, since(hub, start))
    assert sub.recovered is True and len(sub.backlog) == 2


def test_resume_of_a_filtered_topic_sees_what_it_would_have_seen(hub: Hub) -> None:
    start = hub.position
    stream = Stream(hub)
    for n, status in enumerate(["paid", "open", "paid"]):
        stream.publish("orders", "orders", Row(n=n, status=status))
    stream.publish("orders", None, Truncate(n=3))
    sub = hub.subscribe(Recorder(), "orders", "orders", parse_filter("status=eq.paid"),
                        since(hub, start))
    assert [loads(e.encoded(CODEC)[0])["message"]["n"] for e in sub.backlog] == [0, 2, 3]


def test_resume_merges_partition_events_with_channel_truncates(hub: Hub) -> None:
    start = hub.position
    stream = Stream(hub)
    stream.publish("notes", "notes:user_id=a", Row(n=0))
    stream.publish("notes", None, Truncate(n=1))
    stream.publish("notes", "notes:user_id=b", Row(n=2))
    stream.publish("notes", "notes:user_id=a", Row(n=3))
    sub = hub.subscribe(Recorder(), "notes", "notes:user_id=a", None, since(hub, start))
    assert [loads(e.encoded(CODEC)[0])["message"]["n"] for e in sub.backlog] == [0, 1, 3]


def test_resume_at_the_current_position_is_recovered_and_empty(hub: Hub) -> None:
    Stream(hub).rows("orders", 9)  # far beyond per_base=5
    sub = hub.subscribe(Recorder(), "orders", "orders", None, since(hub, hub.position))
    assert (sub.recovered, sub.backlog) == (True, ())


def test_resume_when_history_no_longer_reaches_back(hub: Hub) -> None:
    stream = Stream(hub)
    kept = stream.rows("orders", 9)[-5:]  # per_base=5: the first 4 were dropped
    for lost in (hub.position - 10**9, kept[0] - 1 - 0x40 * 2**PLACE_BITS):
        sub = hub.subscribe(Recorder(), "orders", "orders", None, since(hub, lost))
        assert (sub.recovered, sub.backlog) == (False, ())
    dropped_last = kept[0] - (0x40 << PLACE_BITS)
    sub = hub.subscribe(Recorder(), "orders", "orders", None, since(hub, dropped_last))
    assert sub.recovered is True  # the last dropped event was seen: nothing is missing
    assert [event.offset for event in sub.backlog] == kept


def test_resume_that_cannot_be_placed_is_not_recovered(hub: Hub) -> None:
    Stream(hub).rows("orders", 2)
    offset, epoch = hub.offset_and_epoch(hub.position)
    for wrong in (
        Since(offset + 1, epoch),  # in the future
        Since(offset, "0badbad0" + "0"),  # another stream (another database or timeline)
        Since(offset, STREAM),  # no window
        Since(offset, STREAM + "zz"),
    ):
        sub = hub.subscribe(Recorder(), "orders", "orders", None, wrong)
        assert (sub.recovered, sub.backlog) == (False, ()), wrong


def test_resume_across_an_epoch_window(hub: Hub) -> None:
    """Epochs change every 2**52 positions; a cursor from the previous window still resumes."""
    edge = (1 << OFFSET_BITS) - 2
    hub.start(STREAM, edge - 1)
    hub.advance(edge)
    hub.publish("orders", "orders", Row(n=0), edge, NOW)
    hub.advance(edge + 5)
    hub.publish("orders", "orders", Row(n=1), edge + 5, NOW)
    sub = hub.subscribe(Recorder(), "orders", "orders", None, since(hub, edge))
    assert sub.recovered is True
    [event] = sub.backlog
    assert (event.offset, event.epoch) == (3, STREAM + "1")


def test_the_backlog_is_left_to_the_caller(hub: Hub) -> None:
    start = hub.position
    Stream(hub).rows("orders", 2)
    late = Recorder()
    sub = hub.subscribe(late, "orders", "orders", None, since(hub, start))
    assert len(sub.backlog) == 2 and late.frames == []


# --- history bounds ----------------------------------------------------------------------------


def test_a_quiet_partition_resumes_after_its_events_aged_out() -> None:
    """Bounded in total: the oldest events go first, but each base remembers how far its own
    events were dropped, so a partition that was quiet since loses nothing."""
    hub = make_hub(per_base=10, total=3)
    stream = Stream(hub)
    [a] = stream.rows("chan:k=a", 1, channel="chan")
    b = stream.rows("chan:k=b", 4, channel="chan")  # pushes a's event out
    assert len(hub.history) == 3
    quiet = hub.subscribe(Recorder(), "chan", "chan:k=a", None, since(hub, a))
    assert (quiet.recovered, quiet.backlog) == (True, ())
    before_a = hub.subscribe(Recorder(), "chan", "chan:k=a", None, since(hub, a - 1))
    assert before_a.recovered is False
    tail = hub.subscribe(Recorder(), "chan", "chan:k=b", None, since(hub, b[0]))
    assert [event.offset for event in tail.backlog] == b[1:]


def test_events_dropped_from_their_base_leave_history_without_taking_newer_ones() -> None:
    """Events a base dropped (over its own bound, or lost in a gap) still wait in the order of
    all events; when they reach its front they go, and only then does the total bound drop the
    oldest event kept."""
    history = History(per_base=2, total=3, max_age_s=300, clock=lambda: 1_000.0)
    at = [n << PLACE_BITS for n in range(8)]
    for position in at[1:4]:  # the base's first event is dropped over its bound of 2
        history.keep(position, "c", "c:k=a", MessagePayload(b"{}"), 1_000.0)
    history.reset({"c"}, at[3])  # a gap: the base's kept events are lost too
    for position in at[4:8]:  # 7 waiting, 3 of them dropped: then at[4] is over the total
        history.keep(position, "c", "c:k=a" if position < at[6] else "c:k=b",
                     MessagePayload(b"{}"), 1_000.0)
    assert len(history) == 3
    assert [e.position for e in history.after("c", "c:k=a", at[4]) or []] == [at[5]]
    assert history.after("c", "c:k=a", at[3]) is None  # at[4] was dropped
    assert [e.position for e in history.after("c", "c:k=b", at[3]) or []] == at[6:8]
    assert history.oldest_needed() == 5  # at[5]'s LSN: nothing dropped holds the slot back


def test_history_is_bounded_in_age() -> None:
    clock = Clock()
    hub = Hub(History(per_base=100, total=100, max_age_s=10, clock=clock))
    hub.start(STREAM, 0)
    stream = Stream(hub)
    old = stream.rows("orders", 2)
    clock.now += 11
    stream.committed_at = clock.now
    new = stream.rows("orders", 1)
    sub = hub.subscribe(Recorder(), "orders", "orders", None, since(hub, 0))
    assert sub.recovered is False
    sub = hub.subscribe(Recorder(), "orders", "orders", None, since(hub, old[-1]))
    assert [event.offset for event in sub.backlog] == new


def test_age_is_counted_from_the_commit_not_from_the_replay() -> None:
    """A restart after a long stop replays old transactions: they are not young again."""
    clock = Clock()
    hub = Hub(History(per_base=100, total=100, max_age_s=10, clock=clock))
    hub.start(STREAM, 0)
    stream = Stream(hub)
    stream.committed_at = clock.now - 3600
    stream.rows("orders", 2)
    assert len(hub.history) == 0 and hub.history.oldest_needed() is None


def test_oldest_needed_is_the_commit_of_the_oldest_kept_event() -> None:
    clock = Clock()
    hub = Hub(History(per_base=100, total=2, max_age_s=10, clock=clock))
    hub.start(STREAM, 0)
    assert hub.history.oldest_needed() is None
    stream = Stream(hub, lsn=0x1000)
    stream.rows("orders", 3)  # at 0x1040, 0x1080, 0x10C0; total=2 keeps the last two
    assert hub.history.oldest_needed() == 0x1080
    clock.now += 11  # everything expired: the slot may move on
    assert hub.history.oldest_needed() is None


def test_zero_history_keeps_nothing_and_recovers_only_the_present() -> None:
    hub = make_hub(per_base=0)
    start = hub.position
    Stream(hub).rows("orders", 1)
    assert len(hub.history) == 0
    sub = hub.subscribe(Recorder(), "orders", "orders", None, since(hub, start))
    assert sub.recovered is False
    sub = hub.subscribe(Recorder(), "orders", "orders", None, since(hub, hub.position))
    assert sub.recovered is True


# --- the stream: starts, replays and gaps --------------------------------------------------------


def test_advance_drops_positions_already_published(hub: Hub) -> None:
    assert hub.advance(position(0x2000))
    assert not hub.advance(position(0x2000))
    assert not hub.advance(position(0x1F00))
    assert hub.advance(position(0x2000, 1))


def test_a_reconnect_on_the_same_stream_keeps_history(hub: Hub) -> None:
    start = hub.position
    seen = Stream(hub).rows("orders", 2)
    assert hub.start(STREAM, seen[0] - 1) is True  # the slot replays from before
    assert hub.position == seen[-1]
    sub = hub.subscribe(Recorder(), "orders", "orders", None, since(hub, start))
    assert sub.recovered is True and len(sub.backlog) == 2


def test_a_restart_beyond_the_last_position_continues(hub: Hub) -> None:
    """The slot can be confirmed past the last change published (an idle keepalive): nothing
    was skipped, so the stream continues."""
    start = hub.position
    seen = Stream(hub).rows("orders", 2)
    assert hub.start(STREAM, seen[-1] + (0x100 << PLACE_BITS)) is True
    assert hub.position == seen[-1] + (0x100 << PLACE_BITS)
    assert hub.subscribe(Recorder(), "orders", "orders", None, since(hub, start)).recovered


def test_another_stream_starts_history_over(hub: Hub) -> None:
    start = hub.position
    Stream(hub).rows("orders", 2)
    assert hub.start("0ther000", 5) is False
    assert len(hub.history) == 0
    assert hub.offset_and_epoch(hub.position) == (5, "0ther0000")
    old = Since(start & ((1 << OFFSET_BITS) - 1), STREAM + "0")
    assert hub.subscribe(Recorder(), "orders", "orders", None, old).recovered is False


def test_a_rejoin_after_losing_the_bus_takes_positions_again_from_where_the_bus_stands(
    hub: Hub,
) -> None:
    """A node that lost its bus forgets what it kept (it may have holes) and takes what the
    bus sends after ``after``, even positions it had received before."""
    left = Recorder()
    hub.subscribe(left, "orders", "orders", None, None)
    seen = Stream(hub).rows("orders", 3)
    hub.rejoin(STREAM, seen[0])
    assert hub.position == seen[0] and len(hub.history) == 0
    assert [gap.reason.split(":")[0] for gap in left.gaps] == ["bus_reconnected"]
    assert hub.advance(seen[1])  # sent again by the bus: taken
    hub.rejoin("0ther000", 7)  # another stream: as a start
    assert hub.offset_and_epoch(hub.position) == (7, "0ther0000")


def test_a_gap_tells_the_channels_subscribers_and_keeps_numbering(hub: Hub) -> None:
    orders, other = Recorder(), Recorder()
    hub.subscribe(orders, "orders", "orders", None, None)
    hub.subscribe(other, "other", "other", None, None)
    stream = Stream(hub)
    before = stream.rows("orders", 3)
    assert hub.notify_gap(["orders"], "upstream reconnected without replay") == 1
    [notice] = orders.gaps
    assert (notice.topic, notice.reason) == ("orders", "upstream reconnected without replay")
    assert (notice.offset, notice.epoch) == hub.offset_and_epoch(before[-1])
    assert other.gaps == []
    lost = hub.subscribe(Recorder(), "orders", "orders", None, since(hub, before[0]))
    assert lost.recovered is False
    after = stream.rows("orders", 1)
    resumed = hub.subscribe(Recorder(), "orders", "orders", None,
                            Since(notice.offset, notice.epoch))
    assert resumed.recovered is True and [e.offset for e in resumed.backlog] == after
    assert hub.notify_gap(None, "everything") == 2








# --- history notes: floors kept across a clean stop ----------------------------------------------


def quiet_partition_history() -> tuple[Hub, int, list[int]]:
    """A hub whose total bound pushed the quiet partition's only event out."""
    hub = make_hub(per_base=10, total=3)
    stream = Stream(hub)
    [quiet] = stream.rows("chan:k=quiet", 1, channel="chan")
    busy = stream.rows("chan:k=busy", 4, channel="chan")
    return hub, quiet, busy


def replay(first: Hub, after: int, per_base: int = 10) -> Hub:
    """What a restart does: a new process replays what the first still held."""
    hub = Hub(History(per_base=per_base, total=3, clock=Clock()))
    hub.start(STREAM, after)
    for entry in first.history.after("chan", "chan:k=busy", after) or []:
        hub.advance(entry.position)
        hub.publish(entry.channel, entry.base, entry.payload, entry.position, NOW)
    return hub


def test_a_note_lets_a_quiet_partition_resume_after_a_restart() -> None:
    first, quiet, busy = quiet_partition_history()
    confirmed = first.history.oldest_needed()
    assert confirmed is not None
    note = first.history.snapshot()
    after = (confirmed << PLACE_BITS) - 1

    without = replay(first, after)
    assert without.subscribe(Recorder(), "chan", "chan:k=quiet", None,
                             since(without, quiet)).recovered is False

    restarted = replay(first, after)
    assert restarted.restore_history(confirmed, note) is True
    resumed = restarted.subscribe(Recorder(), "chan", "chan:k=quiet", None,
                                  since(restarted, quiet))
    assert (resumed.recovered, resumed.backlog) == (True, ())
    older = restarted.subscribe(Recorder(), "chan", "chan:k=quiet", None,
                                since(restarted, quiet - 1))
    assert older.recovered is False
    busy_tail = restarted.subscribe(Recorder(), "chan", "chan:k=busy", None,
                                    since(restarted, busy[0]))
    assert [event.offset for event in busy_tail.backlog] == busy[1:]


def test_a_note_from_another_slot_position_is_ignored() -> None:
    first, quiet, _ = quiet_partition_history()
    confirmed = first.history.oldest_needed()
    assert confirmed is not None
    restarted = replay(first, ((confirmed + 0x40) << PLACE_BITS) - 1)  # the slot moved on
    assert restarted.restore_history(confirmed, first.history.snapshot()) is False
    assert restarted.subscribe(Recorder(), "chan", "chan:k=quiet", None,
                               since(restarted, quiet)).recovered is False


def test_a_note_keeps_the_floors_the_replay_raised() -> None:
    first, _, busy = quiet_partition_history()
    confirmed = first.history.oldest_needed()
    assert confirmed is not None
    # This replay keeps one event per partition: it drops busy's older ones itself.
    restarted = replay(first, (confirmed << PLACE_BITS) - 1, per_base=1)
    assert restarted.restore_history(confirmed, first.history.snapshot()) is True
    stale = restarted.subscribe(Recorder(), "chan", "chan:k=busy", None,
                                since(restarted, busy[1]))
    assert stale.recovered is False  # busy[2] was dropped by this process, not the first


def test_the_hub_tells_the_bus_which_bases_it_wants() -> None:
    bus = MemoryBus()
    hub = Hub(interest=bus)
    plain, filtered = Recorder(), Recorder()
    hub.subscribe(plain, "orders", "orders", None, None)
    hub.subscribe(filtered, "orders", "orders", parse_filter("n=eq.1"), None)
    assert bus.wanted == {"orders": 1}  # one base, however many variants
    hub.unsubscribe(plain, "orders")
    assert bus.wanted == {"orders": 1}
    hub.unsubscribe(filtered, "orders?n=eq.1")
    assert bus.wanted == {}


class Roles:
    """A fake ``RoleSink``: records what the hub hands it; a revocation unsubscribes."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.hub: Hub | None = None
        self.applied: list[tuple[RoleChange, ...]] = []
        self.forgotten = 0

    def apply(self, changes: Sequence[RoleChange]) -> None:
        self.applied.append(tuple(changes))
        assert self.hub is not None
        self.hub.unsubscribe(self.recorder, "orders")

    def forget(self) -> None:
        self.forgotten += 1


def roles_hub() -> tuple[Hub, Roles, Recorder]:
    recorder = Recorder()
    roles = Roles(recorder)
    hub = roles.hub = Hub(History(clock=Clock()), roles=roles)
    hub.start(STREAM, position(0x1000) - 1)
    hub.subscribe(recorder, "orders", "orders", None, None)
    return hub, roles, recorder


def test_role_changes_are_applied_at_their_place_before_anything_later() -> None:
    """A revocation that ends a subscription (here the fake unsubscribes) is applied before
    the publications after it in the same batch are delivered."""
    hub, roles, recorder = roles_hub()
    revoked = (RoleChange("u", "support", False),)
    hub.receive([
        Publication(position(0x1040), NOW, (Target("orders", "orders", Row(n=1)),)),
        Publication(position(0x1080), NOW, roles=revoked),
        Publication(position(0x10C0), NOW, (Target("orders", "orders", Row(n=2)),)),
    ])
    assert ns(recorder) == [1] and roles.applied == [revoked]
    hub.receive([Publication(position(0x1080), NOW, roles=revoked)])  # a replay: dropped
    assert roles.applied == [revoked]


def test_a_gap_on_the_roles_table_or_on_everything_makes_the_roles_read_again() -> None:
    hub, roles, recorder = roles_hub()
    hub.gap(["my_notifications"], "lost")
    assert roles.forgotten == 0
    hub.gap([ROLES], "lost")
    assert roles.forgotten == 1 and recorder.gaps == []  # no channel is named so
    hub.gap(None, "lost")
    assert roles.forgotten == 2 and [g.topic for g in recorder.gaps] == ["orders"]
