"""pgoutput v1 messages: hand-built payloads in, exact message values out."""

from __future__ import annotations

import struct

import pytest

from gateway.changes import POSTGRES_EPOCH_MICROS
from gateway.sources.postgres.messages import (
    UNCHANGED,
    Begin,
    Commit,
    DecodeError,
    DeleteMessage,
    InsertMessage,
    LogicalMessage,
    Relation,
    RelationColumn,
    TruncateMessage,
    TupleData,
    TypeMessage,
    UpdateMessage,
    parse_message,
)
from tests.unit.sources.postgres.payloads import (
    ACCOUNT_COLUMNS,
    ACCOUNTS,
    LSN,
    MOOD,
    PG_US,
    POSINT,
    UNIX_US,
    begin,
    commit,
    cstr,
    delete,
    insert,
    logical_message,
    relation,
    truncate,
    tup,
    update,
)


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


def test_origin_messages_are_ignored() -> None:
    assert parse_message(b"O" + struct.pack(">Q", 0x1234) + cstr("node_a")) is None


def test_parse_logical_message() -> None:
    expected = LogicalMessage(True, 0x99, "rtgw", b"hi")
    assert parse_message(logical_message("rtgw", b"hi")) == expected
    assert parse_message(logical_message("x", b"", False)) == LogicalMessage(False, 0x99, "x", b"")
    with pytest.raises(DecodeError):
        parse_message(logical_message("rtgw", b"hi")[:-1])  # content shorter than its length


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
