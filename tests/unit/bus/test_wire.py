"""gateway.bus.wire: a publication survives bytes unchanged, as every codec sees it."""

from __future__ import annotations

from pathlib import Path

from gateway.bus import wire
from gateway.bus.base import Publication, Target
from gateway.changes import Change, ChangeId, Column, Op, RoleChange
from gateway.channels import ChannelSet, load_channels
from gateway.enrich import Enriched
from gateway.events import TopicEvent
from gateway.native.codec import CODEC as NATIVE
from gateway.phoenix.codec import CODEC as PHOENIX
from gateway.publish import MessagePayload
from gateway.router import ChannelPayload, Shape

CHANNELS = load_channels(Path(__file__).resolve().parents[3] / "channels")
COLUMNS = (Column("id", "int8"), Column("user_id", "text"), Column("title", "text"),
           Column("body", "text"), Column("read", "bool"), Column("spam_score", "float8"))


def note_change(op: Op = Op.UPDATE) -> Change:
    new = {"id": 2**62, "user_id": "u-1", "title": "héllo", "body": None, "read": True,
           "spam_score": 0.1 + 0.2}
    old = {**new, "user_id": "u-0", "read": False}
    return Change(ChangeId(0x16B374D848, 3), "public", "notifications", op,
                  1_700_000_000_123_456, COLUMNS, new, old, ("body",))


def roundtrip(publication: Publication) -> Publication:
    return wire.decode(wire.encode(publication), CHANNELS)


def encodings(target: Target) -> tuple[object, ...]:
    """What each protocol sends for the target (fresh events: no cached encodings)."""
    return (NATIVE.encode(TopicEvent("t", 1, "e", target.payload))[0],
            PHOENIX.encode(TopicEvent("t", 1, "e", target.payload)))


def test_a_change_in_every_shape_encodes_the_same_after_the_trip() -> None:
    channel = CHANNELS.get("my_notifications")
    change = note_change()
    targets = tuple(
        Target(channel.name, f"my_notifications:user_id=u-{n}", ChannelPayload(
            change, channel, shape, Enriched({"who": {"n": n}}, {}, ("scorer",)) if n else
            Enriched()))
        for n, shape in enumerate(Shape)
    )
    publication = Publication(change.id.position, 1_700_000_000.123456, targets)
    back = roundtrip(publication)
    assert (back.position, back.committed_at, back.note, back.receipt) == (
        publication.position, publication.committed_at, None, None)
    assert [(t.channel, t.base) for t in back.targets] == [(t.channel, t.base) for t in targets]
    for sent, received in zip(targets, back.targets, strict=True):
        assert encodings(received) == encodings(sent)


def test_truncates_messages_notes_and_receipts_come_through() -> None:
    channel = CHANNELS.get("orders")
    truncate = Change(ChangeId(5, 0), "public", "orders", Op.TRUNCATE, 1, ())
    body = b'{"id":"e-1","event":"hi","payload":{"n":[1,2.5,"x"]}}'
    publication = Publication(
        99, 2.0,
        (Target(channel.name, None, ChannelPayload(truncate, channel)),
         Target("orders", "orders", MessagePayload(body))),
        note=b'{"confirmed":1}', receipt="e-1",
    )
    back = roundtrip(publication)
    assert (back.note, back.receipt, back.targets[0].base) == (b'{"confirmed":1}', "e-1", None)
    message = back.targets[1].payload
    assert isinstance(message, MessagePayload) and message.body == body
    assert encodings(back.targets[0]) == encodings(publication.targets[0])


def test_a_channel_this_node_does_not_define_is_left_out() -> None:
    channel = CHANNELS.get("orders")
    change = Change(ChangeId(5, 1), "public", "orders", Op.INSERT, 1, (), {"id": 1})
    sent = wire.encode(Publication(7, 1.0, (Target("orders", "orders",
                                                   ChannelPayload(change, channel)),)))
    others = ChannelSet(c for c in CHANNELS if c.name != "orders")
    assert wire.decode(sent, others).targets == ()


def test_role_changes_come_through_in_order() -> None:
    roles = (RoleChange("u-1", "admin", False), RoleChange("u-2", "support", True),
             RoleChange(None, None, False))
    arrived = roundtrip(Publication(9, 2.0, roles=roles))
    assert arrived.roles == roles and arrived.position == 9 and arrived.targets == ()
    assert roundtrip(Publication(10, 2.0)).roles == ()
