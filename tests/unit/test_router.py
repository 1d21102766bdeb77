"""gateway.router.Router: changes -> publications -> topics, with the real channels, a memory
bus and a real Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.bus.memory import MemoryBus
from gateway.changes import Change, ChangeId, Column, Item, Op
from gateway.channels import Channel, ChannelSet, Partition, load_channels
from gateway.encoding import dumps, loads
from gateway.filters import Filter, parse_filter
from gateway.hub import Hub
from gateway.router import Router
from tests.unit.recorder import Recorder

CHANNELS = Path(__file__).resolve().parents[2] / "channels"

ORDER_COLUMNS = (
    Column("id", "int8"),
    Column("customer_id", "uuid"),
    Column("status", "text"),
    Column("total", "numeric"),
    Column("internal_note", "text"),
    Column("created_at", "timestamptz"),
    Column("updated_at", "timestamptz"),
)
NOTE_COLUMNS = (
    Column("id", "int8"),
    Column("user_id", "text"),
    Column("title", "text"),
    Column("body", "text"),
    Column("read", "bool"),
    Column("spam_score", "float8"),
    Column("created_at", "timestamptz"),
)


_seq = iter(range(1, 1_000_000))


def change(
    table: str,
    op: Op,
    new: dict[str, Any] | None = None,
    old: dict[str, Any] | None = None,
    schema: str = "public",
    unchanged: tuple[str, ...] = (),
) -> Change:
    columns = ORDER_COLUMNS if table == "orders" else NOTE_COLUMNS
    return Change(
        id=ChangeId(0x1000, next(_seq)),
        schema=schema,
        table=table,
        op=op,
        commit_time_us=1_700_000_000_000_000,
        columns=columns,
        new=new,
        old=old,
        unchanged=unchanged,
    )


def order(**values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 1,
        "customer_id": "c-1",
        "status": "open",
        "total": "10.50",
        "internal_note": "do not leak",
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
    }
    row.update(values)
    return row


def note(**values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 7,
        "user_id": "alice",
        "title": "hi",
        "body": "hello",
        "read": False,
        "spam_score": 0.5,
        "created_at": "2024-01-01T00:00:00Z",
    }
    row.update(values)
    return row


class Setup:
    """A router publishing on a memory bus to a real hub."""

    def __init__(self, channels: ChannelSet) -> None:
        self.channels = channels
        bus = MemoryBus()
        self.hub = Hub(interest=bus)
        bus.attach(self.hub)
        self.router = Router(channels, bus)

    def route(self, item: Item) -> None:
        """Route one item and apply it to the hub, as the bus does."""
        self.hub.receive([self.router.route(item)])

    def subscriber(self, channel: str, base: str, row_filter: str | None = None) -> Recorder:
        recorder = Recorder()
        parsed: Filter | None = None if row_filter is None else parse_filter(row_filter)
        self.hub.subscribe(recorder, channel, base, parsed, None)
        return recorder


@pytest.fixture
def real() -> Setup:
    return Setup(load_channels(CHANNELS))


# --- orders: an unpartitioned channel --------------------------------------------------------


def test_insert_reaches_the_orders_topic(real: Setup) -> None:
    everything = real.subscriber("orders", "orders")
    inserted = change("orders", Op.INSERT, new=order())
    real.route(inserted)
    [event] = everything.decoded()
    assert event["type"] == "event"
    assert event["topic"] == "orders"
    assert (event["offset"], event["epoch"]) == real.hub.offset_and_epoch(inserted.id.position)
    assert event["change"]["op"] == "INSERT"
    assert event["change"]["table"] == "orders"
    assert event["change"]["new"]["status"] == "open"
    assert real.router.stats.changes == 1
    assert real.hub.stats.deliveries == 1


def test_filtered_topic_only_when_the_filter_matches(real: Setup) -> None:
    everything = real.subscriber("orders", "orders")
    paid = real.subscriber("orders", "orders", "status=eq.paid")
    opened = real.subscriber("orders", "orders", "status=eq.open")
    real.route(change("orders", Op.INSERT, new=order(status="paid")))
    real.route(change("orders", Op.INSERT, new=order(id=2, status="open")))
    assert [e["change"]["new"]["id"] for e in everything.decoded()] == [1, 2]
    assert [e["change"]["new"]["id"] for e in paid.decoded()] == [1]
    assert [e["change"]["new"]["id"] for e in opened.decoded()] == [2]
    assert paid.decoded()[0]["topic"] == "orders?status=eq.paid"
    assert real.hub.stats.deliveries == 4


def test_update_is_filtered_on_the_new_row_and_a_row_leaving_a_filter_is_told(
    real: Setup,
) -> None:
    paid = real.subscriber("orders", "orders", "status=eq.paid")
    opened = real.subscriber("orders", "orders", "status=eq.open")
    shipped = real.subscriber("orders", "orders", "status=eq.shipped")
    real.route(
        change("orders", Op.UPDATE, new=order(status="paid"), old=order(status="open"))
    )
    [entered] = paid.decoded()
    assert entered["change"]["op"] == "UPDATE" and "moved" not in entered["change"]
    [left] = opened.decoded()  # the row left the filter: its view must drop it
    assert left["change"]["op"] == "DELETE" and left["change"]["moved"] == "out"
    assert left["change"]["new"] is None and left["change"]["old"]["status"] == "open"
    assert shipped.frames == []


def test_numeric_filter_uses_the_column_types(real: Setup) -> None:
    # "10.50" > "9" only numerically; lexicographically it is smaller.
    big = real.subscriber("orders", "orders", "total=gt.9")
    small = real.subscriber("orders", "orders", "total=lt.9")
    real.route(change("orders", Op.INSERT, new=order(total="10.50")))
    assert len(big.frames) == 1
    assert small.frames == []


def test_filter_on_a_null_column_does_not_match(real: Setup) -> None:
    not_paid = real.subscriber("orders", "orders", "status=neq.paid")
    real.route(change("orders", Op.INSERT, new=order(status=None)))
    assert not_paid.frames == []


def test_projection_hides_unlisted_columns(real: Setup) -> None:
    everything = real.subscriber("orders", "orders")
    real.route(
        change(
            "orders",
            Op.UPDATE,
            new=order(status="paid"),
            old=order(),
            unchanged=("internal_note", "status"),
        )
    )
    frame = everything.frames[0]
    assert "internal_note" not in frame
    assert "do not leak" not in frame
    body = loads(frame)["change"]
    expected = ["id", "customer_id", "status", "total", "created_at", "updated_at"]
    assert list(body["new"]) == expected
    assert list(body["old"]) == expected
    assert body["unchanged"] == ["status"]


def test_filtered_topic_still_gets_the_projection(real: Setup) -> None:
    paid = real.subscriber("orders", "orders", "status=eq.paid")
    real.route(change("orders", Op.INSERT, new=order(status="paid")))
    assert "internal_note" not in paid.decoded()[0]["change"]["new"]


def test_delete_reaches_the_orders_topic(real: Setup) -> None:
    everything = real.subscriber("orders", "orders")
    real.route(change("orders", Op.DELETE, old={"id": 1}))
    [event] = everything.decoded()
    assert event["change"]["op"] == "DELETE"
    assert event["change"]["new"] is None
    assert event["change"]["old"] == {"id": 1}
    assert real.router.stats.withheld == 0


# --- my_notifications: a partitioned channel -------------------------------------------------


def test_partitioned_insert_reaches_only_its_user(real: Setup) -> None:
    alice = real.subscriber("my_notifications", "my_notifications:user_id=alice")
    bob = real.subscriber("my_notifications", "my_notifications:user_id=bob")
    real.route(change("notifications", Op.INSERT, new=note(user_id="alice")))
    assert len(alice.frames) == 1
    assert bob.frames == []
    event = alice.decoded()[0]
    assert event["topic"] == "my_notifications:user_id=alice"
    assert event["change"]["new"]["user_id"] == "alice"
    assert "spam_score" not in event["change"]["new"]
    assert real.hub.stats.deliveries == 1


def test_partitioned_insert_for_a_user_without_subscribers(real: Setup) -> None:
    alice = real.subscriber("my_notifications", "my_notifications:user_id=alice")
    real.route(change("notifications", Op.INSERT, new=note(user_id="carol")))
    assert alice.frames == []
    assert real.hub.stats.deliveries == 0
    assert real.router.stats.withheld == 0


def test_partitioned_filtered_topic(real: Setup) -> None:
    alice, bob = "my_notifications:user_id=alice", "my_notifications:user_id=bob"
    unread = real.subscriber("my_notifications", alice, "read=eq.false")
    read = real.subscriber("my_notifications", alice, "read=eq.true")
    bob_unread = real.subscriber("my_notifications", bob, "read=eq.false")
    real.route(change("notifications", Op.INSERT, new=note(read=False)))
    assert len(unread.frames) == 1
    assert read.frames == []
    assert bob_unread.frames == []


def test_a_row_that_changes_hands_is_deleted_for_one_and_inserted_for_the_other(
    real: Setup,
) -> None:
    alice = real.subscriber("my_notifications", "my_notifications:user_id=alice")
    alice_unread = real.subscriber("my_notifications", "my_notifications:user_id=alice",
                                   "read=eq.false")
    bob = real.subscriber("my_notifications", "my_notifications:user_id=bob")
    real.route(
        change(
            "notifications",
            Op.UPDATE,
            new=note(user_id="bob", title="bob's now", body="for bob"),
            old=note(user_id="alice", title="alice's secret", body="private"),
        )
    )
    [gone] = alice.decoded()  # the previous owner's view drops the row
    assert gone["change"]["op"] == "DELETE" and gone["change"]["moved"] == "out"
    assert gone["change"]["new"] is None and gone["change"]["old"]["title"] == "alice's secret"
    assert "bob" not in alice.frames[0]
    assert alice_unread.decoded()[0]["change"]["moved"] == "out"
    [arrived] = bob.decoded()  # the new owner gets the row as it is now, nothing of before
    assert arrived["change"]["op"] == "INSERT" and arrived["change"]["moved"] == "in"
    assert arrived["change"]["old"] is None and arrived["change"]["new"]["body"] == "for bob"
    assert "alice" not in bob.frames[0] and "private" not in bob.frames[0]


def test_a_row_whose_partition_becomes_null_leaves_its_owner(real: Setup) -> None:
    alice = real.subscriber("my_notifications", "my_notifications:user_id=alice")
    real.route(change("notifications", Op.UPDATE, new=note(user_id=None),
                      old=note(user_id="alice")))
    [gone] = alice.decoded()
    assert (gone["change"]["op"], gone["change"]["moved"]) == ("DELETE", "out")
    assert real.router.stats.withheld == 0


def test_delete_with_the_partition_column_reaches_its_user(real: Setup) -> None:
    alice = real.subscriber("my_notifications", "my_notifications:user_id=alice")
    bob = real.subscriber("my_notifications", "my_notifications:user_id=bob")
    real.route(change("notifications", Op.DELETE, old=note(user_id="alice")))
    assert len(alice.frames) == 1
    assert bob.frames == []
    assert real.router.stats.withheld == 0


def test_delete_without_the_partition_column_is_withheld(real: Setup) -> None:
    alice = real.subscriber("my_notifications", "my_notifications:user_id=alice")
    everyone_else = real.subscriber("my_notifications", "my_notifications:user_id=bob")
    real.route(change("notifications", Op.DELETE, old={"id": 7}))
    real.route(change("notifications", Op.DELETE, old=None))
    assert alice.frames == []
    assert everyone_else.frames == []
    assert real.router.stats.withheld == 2
    assert real.hub.stats.deliveries == 0
    assert real.router.stats.changes == 2


def test_truncate_is_not_an_operation_of_my_notifications(real: Setup) -> None:
    alice = real.subscriber("my_notifications", "my_notifications:user_id=alice")
    real.route(change("notifications", Op.TRUNCATE))
    assert alice.frames == []
    assert real.router.stats.withheld == 0


# --- TRUNCATE --------------------------------------------------------------------------------


def test_truncate_reaches_plain_and_filtered_orders_topics(real: Setup) -> None:
    everything = real.subscriber("orders", "orders")
    paid = real.subscriber("orders", "orders", "status=eq.paid")
    big = real.subscriber("orders", "orders", "total=gt.1000")
    real.route(change("orders", Op.TRUNCATE))
    for recorder in (everything, paid, big):
        [event] = recorder.decoded()
        assert event["change"]["op"] == "TRUNCATE"
        assert event["change"]["new"] is None
        assert event["change"]["old"] is None
    assert real.hub.stats.deliveries == 3


def partitioned_with_truncate() -> Setup:
    notes = Channel(
        name="team_notes",
        schema="public",
        table="notifications",
        operations=frozenset(Op),
        scopes=frozenset(),
        columns=("id", "user_id", "read"),
        filterable=frozenset({"read"}),
        partition=Partition("user_id", "sub"),
        source="test",
    )
    return Setup(ChannelSet([notes]))


def test_truncate_reaches_every_partition_topic() -> None:
    setup = partitioned_with_truncate()
    alice = setup.subscriber("team_notes", "team_notes:user_id=alice")
    alice_unread = setup.subscriber("team_notes", "team_notes:user_id=alice", "read=eq.false")
    bob = setup.subscriber("team_notes", "team_notes:user_id=bob")
    setup.route(change("notifications", Op.TRUNCATE))
    for recorder in (alice, alice_unread, bob):
        assert [e["change"]["op"] for e in recorder.decoded()] == ["TRUNCATE"]
    assert setup.hub.stats.deliveries == 3
    assert setup.router.stats.withheld == 0


def test_truncate_without_any_topic_does_nothing() -> None:
    setup = partitioned_with_truncate()
    setup.route(change("notifications", Op.TRUNCATE))
    assert setup.hub.stats.deliveries == 0
    assert len(setup.hub) == 0


# --- tables and operations without channels ---------------------------------------------------


def test_table_without_channels_does_nothing(real: Setup) -> None:
    everything = real.subscriber("orders", "orders")
    real.route(change("invoices", Op.INSERT, new={"id": 1}))
    real.route(change("orders", Op.INSERT, new=order(), schema="archive"))
    assert everything.frames == []
    assert real.router.stats.changes == 2
    assert real.hub.stats.deliveries == 0
    assert real.router.stats.withheld == 0


def test_operation_not_in_the_channel_is_ignored() -> None:
    inserts_only = Channel(
        name="new_orders",
        schema="public",
        table="orders",
        operations=frozenset({Op.INSERT}),
        scopes=frozenset(),
        columns=None,
        filterable=None,
        partition=None,
        source="test",
    )
    setup = Setup(ChannelSet([inserts_only]))
    recorder = setup.subscriber("new_orders", "new_orders")
    setup.route(change("orders", Op.UPDATE, new=order(), old=order()))
    setup.route(change("orders", Op.DELETE, old=order()))
    setup.route(change("orders", Op.INSERT, new=order()))
    assert [e["change"]["op"] for e in recorder.decoded()] == ["INSERT"]


# --- encode once ----------------------------------------------------------------------------


@pytest.fixture
def dumps_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []

    def counting(value: Any) -> bytes:
        if isinstance(value, dict):  # a change body (topic names are encoded per topic)
            calls.append(value)
        return dumps(value)

    monkeypatch.setattr("gateway.native.codec.dumps", counting)
    return calls


def test_one_encoding_for_every_topic_of_a_channel(real: Setup, dumps_calls: list[Any]) -> None:
    recorders = [
        real.subscriber("orders", "orders"),
        real.subscriber("orders", "orders", "status=eq.open"),
        real.subscriber("orders", "orders", "total=gt.5"),
    ]
    real.route(change("orders", Op.INSERT, new=order()))
    assert len(dumps_calls) == 1
    assert all(len(r.frames) == 1 for r in recorders)
    bodies = {r.frames[0][r.frames[0].index(',"change":') :] for r in recorders}
    assert len(bodies) == 1  # the same encoded body inside every topic's frame


def test_no_encoding_when_nobody_listens(real: Setup, dumps_calls: list[Any]) -> None:
    real.subscriber("orders", "orders", "status=eq.paid")
    real.route(change("orders", Op.INSERT, new=order(status="open")))
    real.route(change("invoices", Op.INSERT, new={"id": 1}))
    assert dumps_calls == []


def test_one_encoding_per_channel(dumps_calls: list[Any]) -> None:
    def orders_channel(name: str, columns: tuple[str, ...]) -> Channel:
        return Channel(
            name=name,
            schema="public",
            table="orders",
            operations=frozenset(Op),
            scopes=frozenset(),
            columns=columns,
            filterable=None,
            partition=None,
            source="test",
        )

    setup = Setup(
        ChannelSet(
            [
                orders_channel("orders_full", ("id", "status", "internal_note")),
                orders_channel("orders_public", ("id", "status")),
            ]
        )
    )
    full = setup.subscriber("orders_full", "orders_full")
    full_open = setup.subscriber("orders_full", "orders_full", "status=eq.open")
    public = setup.subscriber("orders_public", "orders_public")
    public_open = setup.subscriber("orders_public", "orders_public", "status=eq.open")
    setup.route(change("orders", Op.INSERT, new=order()))

    assert len(dumps_calls) == 2  # once per channel, not once per topic
    assert sorted(call["new"].get("internal_note", "-") for call in dumps_calls) == [
        "-",
        "do not leak",
    ]
    for recorder in (full, full_open):
        assert recorder.decoded()[0]["change"]["new"]["internal_note"] == "do not leak"
    for recorder in (public, public_open):
        assert "internal_note" not in recorder.frames[0]
    assert setup.hub.stats.deliveries == 4


# --- the ChangeSink entry point --------------------------------------------------------------












