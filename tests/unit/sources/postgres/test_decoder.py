"""The pgoutput decoder: parsed messages in, exact Changes (and published events) out."""

from __future__ import annotations

import pytest

from gateway.changes import Change, ChangeId, Column, Item, Op, Published
from gateway.sources.postgres.decoder import Decoder
from gateway.sources.postgres.messages import (
    UNCHANGED,
    DecodeError,
    Relation,
    TypeMessage,
    parse_message,
)
from gateway.sources.postgres.types import PgType, TypeRegistry
from tests.unit.sources.postgres.payloads import (
    ACCOUNT_COLUMNS,
    ACCOUNTS,
    LSN,
    MOOD,
    MOOD_ARRAY,
    ORDERS,
    PG_US,
    POSINT,
    UNIX_US,
    USER_TYPES,
    begin,
    commit,
    delete,
    insert,
    logical_message,
    relation,
    truncate,
    update,
)


def decoder(*preload: bytes) -> Decoder:
    dec = Decoder(TypeRegistry(USER_TYPES))
    for payload in preload:
        assert dec.feed(parse_message(payload)) == []
    return dec


def feed(dec: Decoder, *payloads: bytes) -> list[Change]:
    changes: list[Change] = []
    for payload in payloads:
        changes.extend(dec.feed(parse_message(payload)))
    return changes


def one(dec: Decoder, payload: bytes) -> Change:
    changes = dec.feed(parse_message(payload))
    assert len(changes) == 1
    return changes[0]


def accounts_txn(identity: bytes = b"d") -> Decoder:
    return decoder(relation(ACCOUNTS, "accounts", ACCOUNT_COLUMNS, identity=identity), begin(LSN))


# --- transactions, ids, relations ------------------------------------------------------------


def test_insert_change_ids_seq_and_commit_time() -> None:
    dec = decoder(relation(ACCOUNTS, "accounts", ACCOUNT_COLUMNS))
    assert not dec.in_transaction
    assert feed(dec, begin(LSN)) == []
    assert dec.in_transaction
    first = one(dec, insert(ACCOUNTS, "1", "a@x.org", "hi", "1.5"))
    second = one(dec, insert(ACCOUNTS, "2", None, None, None))
    assert feed(dec, commit(LSN, LSN + 0x30)) == []
    assert not dec.in_transaction

    columns = (
        Column("id", "int8"),
        Column("email", "text"),
        Column("bio", "text"),
        Column("score", "float8"),
    )
    assert first == Change(
        id=ChangeId(LSN, 0),
        schema="public",
        table="accounts",
        op=Op.INSERT,
        commit_time_us=UNIX_US,
        columns=columns,
        new={"id": 1, "email": "a@x.org", "bio": "hi", "score": 1.5},
    )
    assert second.id == ChangeId(LSN, 1)
    assert second.new == {"id": 2, "email": None, "bio": None, "score": None}
    assert second.old is None and second.unchanged == ()
    assert first.commit_time == "2024-01-02T03:04:05.123Z"
    assert str(second.id) == "00000000015CE7D8:000001"
    # The columns tuple is built once per Relation and shared by every change.
    assert first.columns is second.columns

    # The next transaction numbers from 0 again under its own LSN and time.
    later = PG_US + 2_000_000
    changes = feed(dec, begin(LSN + 0x100, later), insert(ACCOUNTS, "3", "c", "d", "-2"))
    assert [c.id for c in changes] == [ChangeId(LSN + 0x100, 0)]
    assert changes[0].commit_time_us == UNIX_US + 2_000_000
    assert changes[0].columns is first.columns


def test_relation_message_replaces_columns() -> None:
    dec = accounts_txn()
    before = one(dec, insert(ACCOUNTS, "1", "a", "b", "0"))
    feed(dec, relation(ACCOUNTS, "accounts", [*ACCOUNT_COLUMNS, ("tags", 1009, False)]))
    after = one(dec, insert(ACCOUNTS, "1", "a", "b", "0", "{x,y}"))
    assert before.columns == tuple(after.columns[:4])
    assert after.columns[4] == Column("tags", "_text")
    assert after.new == {"id": 1, "email": "a", "bio": "b", "score": 0.0, "tags": ["x", "y"]}
    assert after.id == ChangeId(LSN, 1)


def test_relation_and_type_messages_produce_nothing() -> None:
    dec = decoder()
    assert dec.feed(parse_message(relation(1, "t", [("a", 23, True)]))) == []
    assert dec.feed(TypeMessage(MOOD, "public", "mood")) == []
    assert dec.feed(None) == []


def test_change_before_relation_or_outside_transaction_raises() -> None:
    dec = decoder(begin(LSN))
    with pytest.raises(DecodeError, match="before its Relation"):
        dec.feed(parse_message(insert(ACCOUNTS, "1", "a", "b", "0")))
    dec = decoder(relation(ACCOUNTS, "accounts", ACCOUNT_COLUMNS))
    with pytest.raises(DecodeError, match="outside a transaction"):
        dec.feed(parse_message(insert(ACCOUNTS, "1", "a", "b", "0")))


def test_tuple_width_must_match_relation() -> None:
    dec = accounts_txn()
    with pytest.raises(DecodeError, match="tuple has 3 columns, relation public.accounts has 4"):
        dec.feed(parse_message(insert(ACCOUNTS, "1", "a", "b")))


def test_missing_types() -> None:
    rel = parse_message(
        relation(
            9,
            "t",
            [
                ("a", 23, True),
                ("m", 50001, False),
                ("ms", 50002, False),
                ("again", 50001, False),
                ("tags", 1009, False),
            ],
        )
    )
    assert isinstance(rel, Relation)
    registry = TypeRegistry()
    dec = Decoder(registry)
    assert dec.missing_types(rel) == [50001, 50002]
    # The array type is known but its element is not: the element is missing.
    registry.update([PgType(50002, "_thing", "b", 50003, 0)])
    assert dec.missing_types(rel) == [50001, 50003]
    registry.update([PgType(50001, "dom", "d", 0, 50004)])
    assert dec.missing_types(rel) == [50004, 50003]
    registry.update([PgType(50003, "thing", "e", 0, 0), PgType(50004, "x", "b", 0, 0)])
    assert dec.missing_types(rel) == []


def test_rtgw_messages_are_published_events_numbered_with_the_changes() -> None:
    dec = accounts_txn()
    row = ("1", "ada@example.com", "bio", "1.5")
    items: list[Item] = []
    for payload in (
        insert(ACCOUNTS, *row),
        logical_message("rtgw", b'{"x":1}'),
        logical_message("someone_else", b"ignored"),
        logical_message("rtgw", b"not transactional", transactional=False),
        insert(ACCOUNTS, *row),
        commit(LSN, LSN + 0x30),
    ):
        items.extend(dec.feed(parse_message(payload)))
    assert [item.id for item in items] == [ChangeId(LSN, 0), ChangeId(LSN, 1), ChangeId(LSN, 2)]
    published = items[1]
    assert isinstance(published, Published)
    assert published.content == b'{"x":1}'
    assert published.commit_time_us == items[0].commit_time_us


# --- old tuples and TOAST --------------------------------------------------------------------


def test_update_without_old_tuple() -> None:
    change = one(accounts_txn(), update(ACCOUNTS, ("1", "a@x", "bio", "2.5")))
    assert change.op is Op.UPDATE
    assert change.new == {"id": 1, "email": "a@x", "bio": "bio", "score": 2.5}
    assert change.old is None
    assert change.unchanged == ()


def test_update_with_key_tuple_keeps_only_key_columns() -> None:
    change = one(
        accounts_txn(), update(ACCOUNTS, ("2", "a@x", "bio", "1"), ("1", None, None, None), b"K")
    )
    assert change.old == {"id": 1}
    assert change.new == {"id": 2, "email": "a@x", "bio": "bio", "score": 1.0}


def test_update_with_full_old_row() -> None:
    change = one(
        accounts_txn(b"f"),
        update(ACCOUNTS, ("1", "new@x", None, "1"), ("1", "old@x", "bio", "NaN"), b"O"),
    )
    assert change.old == {"id": 1, "email": "old@x", "bio": "bio", "score": "NaN"}
    assert change.new == {"id": 1, "email": "new@x", "bio": None, "score": 1.0}
    assert change.unchanged == ()


def test_toast_unchanged_without_old_row_is_left_out_and_listed() -> None:
    change = one(accounts_txn(), update(ACCOUNTS, ("1", UNCHANGED, UNCHANGED, "3")))
    assert change.new == {"id": 1, "score": 3.0}
    assert change.unchanged == ("email", "bio")
    assert change.old is None


def test_toast_unchanged_is_merged_from_full_old_row() -> None:
    change = one(
        accounts_txn(b"f"),
        update(ACCOUNTS, ("1", "e", UNCHANGED, "3"), ("1", "e", "long bio", "2"), b"O"),
    )
    assert change.new == {"id": 1, "email": "e", "bio": "long bio", "score": 3.0}
    assert list(change.new) == ["id", "email", "bio", "score"]  # column order is kept
    assert change.unchanged == ()
    assert change.old == {"id": 1, "email": "e", "bio": "long bio", "score": 2.0}


def test_toast_unchanged_with_key_tuple_is_listed() -> None:
    change = one(
        accounts_txn(),
        update(ACCOUNTS, ("2", "e", UNCHANGED, "3"), ("1", None, None, None), b"K"),
    )
    assert change.old == {"id": 1}
    assert change.new == {"id": 2, "email": "e", "score": 3.0}
    assert change.unchanged == ("bio",)


def test_toast_unchanged_in_old_row_too_is_listed() -> None:
    change = one(
        accounts_txn(b"f"),
        update(ACCOUNTS, ("1", "e", UNCHANGED, "3"), ("1", "e", UNCHANGED, "2"), b"O"),
    )
    assert change.old == {"id": 1, "email": "e", "score": 2.0}
    assert change.new == {"id": 1, "email": "e", "score": 3.0}
    assert change.unchanged == ("bio",)


def test_delete_with_key_and_full_old_tuples() -> None:
    dec = accounts_txn()
    by_key = one(dec, delete(ACCOUNTS, ("4", None, None, None), b"K"))
    full = one(dec, delete(ACCOUNTS, ("5", "x@y", None, "-Infinity"), b"O"))
    assert by_key.op is Op.DELETE and by_key.new is None
    assert by_key.old == {"id": 4}
    assert full.old == {"id": 5, "email": "x@y", "bio": None, "score": "-Infinity"}
    assert [by_key.id, full.id] == [ChangeId(LSN, 0), ChangeId(LSN, 1)]
    assert full.row == full.old


def test_truncate_of_several_relations() -> None:
    dec = decoder(
        relation(ACCOUNTS, "accounts", ACCOUNT_COLUMNS),
        relation(ORDERS, "orders", [("id", 23, True)], schema="shop"),
        begin(LSN),
    )
    first = one(dec, insert(ORDERS, "7"))
    changes = feed(dec, truncate([ACCOUNTS, ORDERS], 1), commit(LSN, LSN + 8))
    assert [(c.id, c.schema, c.table, c.op, c.new, c.old) for c in changes] == [
        (ChangeId(LSN, 1), "public", "accounts", Op.TRUNCATE, None, None),
        (ChangeId(LSN, 2), "shop", "orders", Op.TRUNCATE, None, None),
    ]
    assert changes[1].columns is first.columns
    assert all(c.commit_time_us == UNIX_US for c in changes)


def test_binary_values_become_hex_strings() -> None:
    change = one(accounts_txn(), insert(ACCOUNTS, "1", b"\x01\xab", b"", None))
    assert change.new == {"id": 1, "email": "\\x01ab", "bio": "\\x", "score": None}


def test_unreadable_value_passes_through_as_text() -> None:
    dec = decoder(relation(3, "t", [("n", 23, True), ("b", 16, False), ("j", 3802, False)]))
    feed(dec, begin(LSN))
    change = one(dec, insert(3, "12", "maybe", "{not json"))
    assert change.new == {"n": 12, "b": "maybe", "j": "{not json"}


# --- values in a row -------------------------------------------------------------------------


def test_malformed_array_passes_through_in_a_change() -> None:
    dec = decoder(relation(3, "t", [("a", 1007, True)]), begin(LSN))
    assert one(dec, insert(3, "{1,2")).new == {"a": "{1,2"}


def test_every_value_kind_in_one_row() -> None:
    columns = [
        ("id", 20, True),
        ("m", MOOD, False),
        ("p", POSINT, False),
        ("ms", MOOD_ARRAY, False),
        ("a2", 1007, False),
        ("tz", 1184, False),
        ("j", 3802, False),
        ("n", 1700, False),
        ("f", 700, False),
    ]
    dec = decoder(relation(5, "kinds", columns), begin(LSN))
    change = one(
        dec,
        insert(
            5,
            "1",
            "happy",
            "3",
            "{sad}",
            "[0:1]={{1,NULL},{3,4}}",
            "2024-01-02 03:04:05.123456+00",
            '{"k": [true]}',
            "1e-5",
            "NaN",
        ),
    )
    assert change.columns == (
        Column("id", "int8"),
        Column("m", "mood"),
        Column("p", "posint"),
        Column("ms", "_mood"),
        Column("a2", "_int4"),
        Column("tz", "timestamptz"),
        Column("j", "jsonb"),
        Column("n", "numeric"),
        Column("f", "float4"),
    )
    assert change.new == {
        "id": 1,
        "m": "happy",
        "p": 3,
        "ms": ["sad"],
        "a2": [[1, None], [3, 4]],
        "tz": "2024-01-02T03:04:05.123456+00:00",
        "j": {"k": [True]},
        "n": "1e-5",
        "f": "NaN",
    }


# --- an Insert decoded straight from its payload ---------------------------------------------

_KINDS = [("id", 20, True), ("t", 25, False), ("b", 16, False), ("j", 3802, False),
          ("tz", 1184, False), ("a", 1007, False), ("m", MOOD_ARRAY, False)]


@pytest.mark.parametrize(
    "payload",
    [
        insert(5, "1", "text ä", "t", '{"k": [1]}', "2024-01-02 03:04:05.1+00", "{1,2}", "{sad}"),
        insert(5, "2", None, None, None, None, None, None),  # NULLs
        insert(5, "3", b"\x01", "f", "1", "-infinity", "{}", "{}"),  # a binary value
        insert(5, "4", "x", "maybe", "{not json", "x", "{1,2", "{"),  # values that do not convert
        insert(5, "5", UNCHANGED, "t", "1", "x", "{}", "{}"),  # an unchanged marker
    ],
)
def test_insert_from_its_payload_equals_parse_then_feed(payload: bytes) -> None:
    straight, careful = (decoder(relation(5, "kinds", _KINDS), begin(LSN)) for _ in range(2))
    assert straight.insert(payload) == careful.feed(parse_message(payload))


@pytest.mark.parametrize(
    ("preload", "payload", "error"),
    [
        ((relation(5, "kinds", _KINDS),), insert(5, "1"), "tuple has 1 columns"),
        ((begin(LSN),), insert(5, *["1"] * 7), "before its Relation"),
        ((relation(5, "kinds", _KINDS),), insert(5, *["1"] * 7), "outside a transaction"),
        ((relation(5, "kinds", _KINDS), begin(LSN)), insert(5, *["1"] * 7)[:-1], "past the end"),
        ((relation(5, "kinds", _KINDS), begin(LSN)), insert(5, *["1"] * 7) + b"x", "trailing"),
        ((relation(5, "kinds", _KINDS), begin(LSN)), b"I\0\0", "malformed"),
    ],
)
def test_insert_from_its_payload_refuses_what_parse_refuses(
    preload: tuple[bytes, ...], payload: bytes, error: str
) -> None:
    with pytest.raises(DecodeError, match=error):
        decoder(*preload).feed(parse_message(payload))
    with pytest.raises(DecodeError, match=error):
        decoder(*preload).insert(payload)
