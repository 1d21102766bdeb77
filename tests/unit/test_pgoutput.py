"""pgoutput v1 decoding: hand-built payloads in, exact Changes and values out."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from gateway.changes import POSTGRES_EPOCH_MICROS, Change, ChangeId, Column, Item, Op, Published
from gateway.sources.pgoutput import (
    TYPE_QUERY,
    UNCHANGED,
    Begin,
    Commit,
    DecodeError,
    Decoder,
    DeleteMessage,
    InsertMessage,
    LogicalMessage,
    PgType,
    Relation,
    RelationColumn,
    TruncateMessage,
    TupleData,
    TypeMessage,
    TypeRegistry,
    UpdateMessage,
    parse_message,
)

# 2024-01-02T03:04:05.123456Z
UNIX_US = 1_704_164_645_123_456
PG_US = UNIX_US - POSTGRES_EPOCH_MICROS

MOOD, MOOD_ARRAY, POSINT, POSINT_ARRAY, EVEN_POSINT, INTS, CITEXT = (
    16490,
    16489,
    16496,
    16495,
    16500,
    16510,
    16385,
)
USER_TYPES = [
    PgType(MOOD, "mood", "e", 0, 0),
    PgType(MOOD_ARRAY, "_mood", "b", MOOD, 0),
    PgType(POSINT, "posint", "d", 0, 23),
    PgType(POSINT_ARRAY, "_posint", "b", POSINT, 0),
    PgType(EVEN_POSINT, "even_posint", "d", 0, POSINT),  # a domain over a domain
    PgType(INTS, "ints", "d", 0, 1007),  # a domain over int4[]
    PgType(CITEXT, "citext", "b", 0, 0),
]


# --- payload builders -------------------------------------------------------------------------


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def begin(final_lsn: int, pg_time_us: int = PG_US, xid: int = 730) -> bytes:
    return b"B" + struct.pack(">QqI", final_lsn, pg_time_us, xid)


def commit(commit_lsn: int, end_lsn: int, pg_time_us: int = PG_US) -> bytes:
    return b"C" + struct.pack(">BQQq", 0, commit_lsn, end_lsn, pg_time_us)


def relation(
    oid: int,
    table: str,
    columns: list[tuple[str, int, bool]],
    *,
    schema: str = "public",
    identity: bytes = b"d",
) -> bytes:
    body = b"".join(
        bytes([1 if key else 0]) + cstr(name) + struct.pack(">Ii", type_oid, -1)
        for name, type_oid, key in columns
    )
    return (
        b"R"
        + struct.pack(">I", oid)
        + cstr(schema)
        + cstr(table)
        + identity
        + struct.pack(">h", len(columns))
        + body
    )


def tup(*values: Any) -> bytes:
    out = [struct.pack(">h", len(values))]
    for value in values:
        if value is None:
            out.append(b"n")
        elif value is UNCHANGED:
            out.append(b"u")
        elif isinstance(value, bytes):
            out.append(b"b" + struct.pack(">i", len(value)) + value)
        else:
            raw = str(value).encode()
            out.append(b"t" + struct.pack(">i", len(raw)) + raw)
    return b"".join(out)


def insert(oid: int, *values: Any) -> bytes:
    return b"I" + struct.pack(">I", oid) + b"N" + tup(*values)


def update(
    oid: int, new: tuple[Any, ...], old: tuple[Any, ...] | None = None, kind: bytes = b"O"
) -> bytes:
    head = b"U" + struct.pack(">I", oid)
    if old is not None:
        head += kind + tup(*old)
    return head + b"N" + tup(*new)


def delete(oid: int, old: tuple[Any, ...], kind: bytes = b"K") -> bytes:
    return b"D" + struct.pack(">I", oid) + kind + tup(*old)


def truncate(oids: list[int], options: int = 0) -> bytes:
    return b"T" + struct.pack(">IB", len(oids), options) + struct.pack(f">{len(oids)}I", *oids)


# --- fixtures ---------------------------------------------------------------------------------

ACCOUNTS = 16498  # id int8 key, email text, bio text (TOASTable), score float8
ACCOUNT_COLUMNS = [
    ("id", 20, True),
    ("email", 25, False),
    ("bio", 25, False),
    ("score", 701, False),
]
ORDERS = 16510
LSN = 0x15CE7D8


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


# --- parse_message ----------------------------------------------------------------------------


def test_parse_begin_converts_commit_time_to_unix_micros() -> None:
    assert parse_message(begin(LSN, PG_US, 0xFFFFFFFF)) == Begin(LSN, UNIX_US, 0xFFFFFFFF)
    assert parse_message(begin(1, 0, 1)) == Begin(1, POSTGRES_EPOCH_MICROS, 1)
    assert parse_message(begin(1, -1_000_000, 1)) == Begin(1, 946_684_799_000_000, 1)


def test_parse_commit() -> None:
    parsed = parse_message(commit(0x15CE7D8, 0x15CE808, PG_US))
    assert parsed == Commit(commit_lsn=0x15CE7D8, end_lsn=0x15CE808, commit_time_us=UNIX_US)


def test_parse_relation() -> None:
    payload = relation(ACCOUNTS, "accounts", ACCOUNT_COLUMNS, schema="app", identity=b"f").replace(
        struct.pack(">Ii", 25, -1), struct.pack(">Ii", 25, 36), 1
    )
    assert parse_message(payload) == Relation(
        ACCOUNTS,
        "app",
        "accounts",
        "f",
        (
            RelationColumn("id", 20, -1, True),
            RelationColumn("email", 25, 36, False),
            RelationColumn("bio", 25, -1, False),
            RelationColumn("score", 701, -1, False),
        ),
    )


def test_parse_relation_with_non_ascii_names() -> None:
    parsed = parse_message(relation(7, "bestellungen_ä", [("größe", 23, True)], schema="shop"))
    assert parsed == Relation(
        7, "shop", "bestellungen_ä", "d", (RelationColumn("größe", 23, -1, True),)
    )


def test_parse_type_message() -> None:
    payload = b"Y" + struct.pack(">I", MOOD) + cstr("public") + cstr("mood")
    assert parse_message(payload) == TypeMessage(MOOD, "public", "mood")
    # Postgres sends a domain's oid with the *base* type's name, in schema "" (pg_catalog).
    payload = b"Y" + struct.pack(">I", POSINT) + cstr("") + cstr("int4")
    assert parse_message(payload) == TypeMessage(POSINT, "", "int4")


def logical_message(prefix: str, content: bytes, transactional: bool = True) -> bytes:
    flags = b"\x01" if transactional else b"\x00"
    return (b"M" + flags + struct.pack(">Q", 0x99) + cstr(prefix)
            + struct.pack(">i", len(content)) + content)


def test_origin_messages_are_ignored() -> None:
    assert parse_message(b"O" + struct.pack(">Q", 0x1234) + cstr("node_a")) is None


def test_parse_logical_message() -> None:
    expected = LogicalMessage(True, 0x99, "rtgw", b"hi")
    assert parse_message(logical_message("rtgw", b"hi")) == expected
    assert parse_message(logical_message("x", b"", False)) == LogicalMessage(False, 0x99, "x", b"")
    with pytest.raises(DecodeError):
        parse_message(logical_message("rtgw", b"hi")[:-1])  # content shorter than its length


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


def test_parse_insert_with_every_tuple_kind() -> None:
    parsed = parse_message(insert(ACCOUNTS, "1", None, UNCHANGED, b"\x00\xff"))
    assert parsed == InsertMessage(
        ACCOUNTS, TupleData(("1", None, UNCHANGED, b"\x00\xff"), plain=False)
    )
    parsed = parse_message(insert(ACCOUNTS, "1", None, "", "ü"))
    assert parsed == InsertMessage(ACCOUNTS, TupleData(("1", None, "", "ü"), plain=True))


def test_parse_update_variants() -> None:
    assert parse_message(update(ACCOUNTS, ("1", "a"))) == UpdateMessage(
        ACCOUNTS, None, False, TupleData(("1", "a"), True)
    )
    assert parse_message(update(ACCOUNTS, ("2", "a"), ("1", None), b"K")) == UpdateMessage(
        ACCOUNTS, TupleData(("1", None), True), True, TupleData(("2", "a"), True)
    )
    assert parse_message(update(ACCOUNTS, ("1", UNCHANGED), ("1", "x"), b"O")) == UpdateMessage(
        ACCOUNTS, TupleData(("1", "x"), True), False, TupleData(("1", UNCHANGED), False)
    )


def test_parse_delete_variants() -> None:
    assert parse_message(delete(ACCOUNTS, ("4", None), b"K")) == DeleteMessage(
        ACCOUNTS, TupleData(("4", None), True), True
    )
    assert parse_message(delete(ACCOUNTS, ("4", "a@b"), b"O")) == DeleteMessage(
        ACCOUNTS, TupleData(("4", "a@b"), True), False
    )


def test_parse_truncate() -> None:
    assert parse_message(truncate([16498, 16510, 7], 3)) == TruncateMessage(
        (16498, 16510, 7), cascade=True, restart_identity=True
    )
    assert parse_message(truncate([16498], 2)) == TruncateMessage((16498,), False, True)
    assert parse_message(truncate([16498], 0)) == TruncateMessage((16498,), False, False)


def test_parse_accepts_bytearray_and_memoryview() -> None:
    payload = b"xx" + begin(LSN)
    assert parse_message(memoryview(payload)[2:]) == Begin(LSN, UNIX_US, 730)
    assert parse_message(bytearray(begin(LSN))) == Begin(LSN, UNIX_US, 730)


def test_parse_real_postgres15_toast_update() -> None:
    # Captured from PG 15 (REPLICA IDENTITY FULL, `big` stored EXTERNAL, `other` updated).
    big = b"t\x00\x00\x13\x88" + b"y" * 5000
    payload = (
        b"U\x00\x00@\x87O\x00\x03t\x00\x00\x00\x011"
        + big
        + b"t\x00\x00\x00\x012N\x00\x03t\x00\x00\x00\x011ut\x00\x00\x00\x013"
    )
    assert parse_message(payload) == UpdateMessage(
        16519,
        TupleData(("1", "y" * 5000, "2"), True),
        False,
        TupleData(("1", UNCHANGED, "3"), False),
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty"),
        (b"X\x00", "unknown pgoutput message type 'X'"),
        (b"S\x00\x00\x00\x01\x01", "unknown pgoutput message type 'S'"),  # v2 Stream Start
        (b"\x00garbage", "unknown pgoutput message type"),
        (begin(LSN)[:-1], "malformed pgoutput 'B'"),
        (begin(LSN) + b"\x00", "trailing bytes"),
        (commit(1, 2)[:10], "malformed pgoutput 'C'"),
        (b"R\x00\x00\x00\x01public", "malformed pgoutput 'R'"),  # no NUL terminator
        (relation(1, "t", [("a", 23, True)])[:-3], "malformed pgoutput 'R'"),
        (b"Y\x00\x00\x00\x01\xff\xfe\x00x\x00", "malformed pgoutput 'Y'"),  # bad UTF-8
        (insert(1, "abc")[:-1], "past the end"),
        (insert(1, "abc") + b"t", "trailing bytes"),
        (b"I\x00\x00\x00\x01N\x00\x01x", "unknown tuple value kind 'x'"),
        (b"I\x00\x00\x00\x01K" + tup("1"), "expected 'N' in Insert"),
        (update(1, ("1",)).replace(b"N", b"Q", 1), "expected 'N' in Update"),
        (update(1, ("1",), ("0",), b"K")[:-7], "malformed pgoutput 'U'"),
        (b"D\x00\x00\x00\x01N" + tup("1"), "expected 'K' or 'O' in Delete"),
        (truncate([1, 2])[:-1], "trailing bytes"),
        (b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x02\xc3\x28", "malformed pgoutput 'I'"),
    ],
)
def test_garbage_raises_decode_error(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        parse_message(payload)
    assert issubclass(DecodeError, ValueError)


# --- Decoder: transactions, ids, relations ----------------------------------------------------


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


# --- Decoder: old tuples and TOAST ------------------------------------------------------------


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


# --- value conversion -------------------------------------------------------------------------


def convert(type_oid: int, text: str) -> Any:
    return TypeRegistry(USER_TYPES).converter(type_oid)(text)


@pytest.mark.parametrize(
    ("type_oid", "text", "expected"),
    [
        (16, "t", True),
        (16, "f", False),
        (21, "-32768", -32768),
        (23, "2147483647", 2147483647),
        (20, "-9223372036854775808", -9223372036854775808),
        (26, "4294967295", 4294967295),
        (701, "1.5", 1.5),
        (701, "-0.1", -0.1),
        (701, "1e+300", 1e300),
        (701, "NaN", "NaN"),
        (701, "Infinity", "Infinity"),
        (701, "-Infinity", "-Infinity"),
        (700, "1.1", 1.1),
        (700, "NaN", "NaN"),
        (700, "-Infinity", "-Infinity"),
        (
            1700,
            "123456789012345678901234567890.123456789",
            "123456789012345678901234567890.123456789",
        ),
        (1700, "0.10", "0.10"),
        (1700, "NaN", "NaN"),
        (1700, "Infinity", "Infinity"),
        (114, '{"a": [1, 2.5, null], "b": "x\\"y"}', {"a": [1, 2.5, None], "b": 'x"y'}),
        (3802, '{"b": {"c": true}}', {"b": {"c": True}}),
        (3802, "[]", []),
        (3802, '"str"', "str"),
        (3802, "12", 12),
        (25, "hello, world", "hello, world"),
        (1043, "", ""),
        (1042, "ab  ", "ab  "),
        (19, "pg_class", "pg_class"),
        (2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        (869, "10.0.0.1/8", "10.0.0.1/8"),
        (17, "\\x0102ff", "\\x0102ff"),
        (1082, "2024-01-02", "2024-01-02"),
        (1082, "infinity", "infinity"),
        (1083, "03:04:05.5", "03:04:05.5"),
        (1266, "03:04:05+02", "03:04:05+02"),
        (1186, "P1Y2M3DT4H5M6.5S", "P1Y2M3DT4H5M6.5S"),
        (1186, "-P1D", "-P1D"),
        (3904, "[1,5)", "[1,5)"),
        (MOOD, "sad", "sad"),
        (CITEXT, "MiXed", "MiXed"),
        (POSINT, "5", 5),
        (EVEN_POSINT, "6", 6),
        (99999, "whatever it is", "whatever it is"),
    ],
)
def test_scalar_conversion(type_oid: int, text: str, expected: Any) -> None:
    value = convert(type_oid, text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02 03:04:05.123456+00", "2024-01-02T03:04:05.123456+00:00"),
        ("2024-01-02 03:04:05+00", "2024-01-02T03:04:05+00:00"),
        ("2024-01-02 03:04:05.5+05:30", "2024-01-02T03:04:05.5+05:30"),
        ("2024-01-02 03:04:05-08", "2024-01-02T03:04:05-08:00"),
        ("12345-01-02 03:04:05+00", "12345-01-02T03:04:05+00:00"),
        ("infinity", "infinity"),
        ("-infinity", "-infinity"),
        ("0044-03-15 12:00:00+00 BC", "0044-03-15 12:00:00+00 BC"),
    ],
)
def test_timestamptz_conversion(text: str, expected: str) -> None:
    assert convert(1184, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02 03:04:05.123456", "2024-01-02T03:04:05.123456"),
        ("2024-01-02 03:04:05", "2024-01-02T03:04:05"),
        ("12345-01-02 03:04:05", "12345-01-02T03:04:05"),
        ("infinity", "infinity"),
        ("-infinity", "-infinity"),
        ("0044-03-15 12:00:00 BC", "0044-03-15 12:00:00 BC"),
    ],
)
def test_timestamp_conversion(text: str, expected: str) -> None:
    assert convert(1114, text) == expected


@pytest.mark.parametrize(
    ("type_oid", "text", "expected"),
    [
        (1007, "{}", []),
        (1007, "{1,NULL,3}", [1, None, 3]),
        (1007, "{{1,2},{3,NULL}}", [[1, 2], [3, None]]),
        (1007, "[0:1][1:2]={{1,2},{3,NULL}}", [[1, 2], [3, None]]),
        (1007, "[5:6]={7,8}", [7, 8]),
        (1007, "{{{1},{2}},{{NULL},{4}}}", [[[1], [2]], [[None], [4]]]),
        (1016, "{-9223372036854775808}", [-9223372036854775808]),
        (1000, "{t,f,NULL}", [True, False, None]),
        (1022, "{1.5,NaN,Infinity,-Infinity,NULL}", [1.5, "NaN", "Infinity", "-Infinity", None]),
        (1231, "{1.10,NaN,NULL}", ["1.10", "NaN", None]),
        (
            1009,
            '{"a,b","q\\"uote","back\\\\slash","NULL",""," sp",NULL,plain}',
            ["a,b", 'q"uote', "back\\slash", "NULL", "", " sp", None, "plain"],
        ),
        (1009, '{{"x,1",NULL},{"{braces}","y\\\\"}}', [["x,1", None], ["{braces}", "y\\"]]),
        (1009, '{"multi\nline"}', ["multi\nline"]),
        (1015, '{"é ü",日本}', ["é ü", "日本"]),
        (1020, "{(1,1),(0,0);(2,2),(1,1)}", ["(1,1),(0,0)", "(2,2),(1,1)"]),
        (1020, "{(1,1),(0,0)}", ["(1,1),(0,0)"]),
        (
            1185,
            '{"2024-01-02 03:04:05+00",infinity,NULL}',
            ["2024-01-02T03:04:05+00:00", "infinity", None],
        ),
        (1115, '{"2024-01-02 03:04:05"}', ["2024-01-02T03:04:05"]),
        (
            3807,
            '{"{\\"a\\": 1}","[1, \\"x,y\\"]",NULL}',
            [{"a": 1}, [1, "x,y"], None],
        ),
        (199, '{"{\\"k\\": null}"}', [{"k": None}]),
        (1001, '{"\\\\x0102",NULL}', ["\\x0102", None]),
        (1187, "{P1D,PT1H}", ["P1D", "PT1H"]),
        (2951, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
        (MOOD_ARRAY, "{happy,sad,NULL}", ["happy", "sad", None]),
        (POSINT_ARRAY, "{1,2,NULL}", [1, 2, None]),
        (INTS, "{{1},{2}}", [[1], [2]]),
        # Not white space to array_out, so unquoted: data, not padding (found by hypothesis).
        (1009, "{{\xa0},{a\x1f}}", [["\xa0"], ["a\x1f"]]),
    ],
)
def test_array_conversion(type_oid: int, text: str, expected: Any) -> None:
    assert convert(type_oid, text) == expected


@pytest.mark.parametrize("text", ["{1,2", "1,2", '{"open}', "{1}}", "[1:2]{1,2}", "{{1},{2}"])
def test_malformed_arrays_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        convert(1007, text)


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


# --- TypeRegistry -----------------------------------------------------------------------------


def test_registry_names_and_knowledge() -> None:
    registry = TypeRegistry()
    assert registry.knows(23) and registry.name(23) == "int4"
    assert registry.name(1009) == "_text"
    assert registry.name(3802) == "jsonb"
    assert registry.name(1020) == "_box"
    assert not registry.knows(MOOD)
    assert registry.name(MOOD) == str(MOOD)
    registry.update(USER_TYPES)
    assert registry.knows(MOOD) and registry.name(MOOD) == "mood"
    assert registry.get(POSINT) == PgType(POSINT, "posint", "d", 0, 23, ",")


def test_registry_caches_converters_and_update_invalidates() -> None:
    registry = TypeRegistry()
    assert registry.converter(1007) is registry.converter(1007)
    assert registry.converter(POSINT)("5") == "5"  # unknown: text
    registry.update([PgType(POSINT, "posint", "d", 0, 23)])
    assert registry.converter(POSINT)("5") == 5


def test_registry_uses_the_element_types_delimiter() -> None:
    registry = TypeRegistry(
        [PgType(60000, "semi", "b", 0, 0, ";"), PgType(60001, "_semi", "b", 60000, 0)]
    )
    assert registry.converter(60001)("{a,b;c}") == ["a,b", "c"]


def test_registry_from_type_query_rows() -> None:
    assert "pg_catalog.pg_type" in TYPE_QUERY
    for column in (
        "oid::int8",
        "typname",
        "typtype",
        "typelem::int8",
        "typbasetype::int8",
        "typdelim",
    ):
        assert column in TYPE_QUERY
    rows = [(16490, "mood", "e", 0, 0, ","), (16489, "_mood", "b", 16490, 0, ",")]
    registry = TypeRegistry(PgType(*row) for row in rows)
    assert registry.converter(16489)("{happy}") == ["happy"]
