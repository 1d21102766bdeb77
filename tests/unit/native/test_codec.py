"""gateway.router.change_body: the native ``change`` body; only the channel's columns leave."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.changes import Change, ChangeId, Column, Op
from gateway.channels import Channel, ChannelSet, load_channels
from gateway.router import ChannelPayload, change_body
from tests.unit.test_channels import CHANNELS, make_channel


def body_of(channel: Channel, source: Change) -> dict[str, Any]:
    return change_body(ChannelPayload(source, channel))


@pytest.fixture(scope="module")
def real() -> ChannelSet:
    return load_channels(CHANNELS)


def change(**overrides: Any) -> Change:
    values: dict[str, Any] = {
        "id": ChangeId(0x16B3748, 3),
        "schema": "public",
        "table": "orders",
        "op": Op.UPDATE,
        "commit_time_us": 1_700_000_000_123_000,
        "columns": (Column("id", "int8"), Column("secret", "text")),
        "new": {"id": 1, "status": "paid", "secret": "s3", "total": "9.50"},
        "old": {"id": 1, "status": "open", "secret": "s2"},
    }
    values.update(overrides)
    return Change(**values)


def test_project_keeps_only_listed_columns(real: ChannelSet) -> None:
    body = body_of(real.get("orders"), change())
    assert body == {
        "id": "00000000016B3748:000003",
        "schema": "public",
        "table": "orders",
        "op": "UPDATE",
        "commit_time": "2023-11-14T22:13:20.123Z",
        "new": {"id": 1, "status": "paid", "total": "9.50"},
        "old": {"id": 1, "status": "open"},
    }
    assert list(body["new"]) == ["id", "status", "total"]  # the channel's column order


def test_project_missing_rows_stay_none(real: ChannelSet) -> None:
    body = body_of(real.get("orders"), change(op=Op.INSERT, old=None))
    assert body["old"] is None
    assert body["new"] == {"id": 1, "status": "paid", "total": "9.50"}
    body = body_of(real.get("orders"), change(op=Op.TRUNCATE, new=None, old=None))
    assert body["new"] is None and body["old"] is None
    assert body["op"] == "TRUNCATE"


def test_project_filters_unchanged(real: ChannelSet) -> None:
    body = body_of(real.get("orders"), change(unchanged=("secret", "status", "notes")))
    assert body["unchanged"] == ["status"]
    assert "unchanged" not in body_of(real.get("orders"), change())


def test_project_unchanged_may_become_empty(real: ChannelSet) -> None:
    body = body_of(real.get("orders"), change(unchanged=("secret",)))
    assert body["unchanged"] == []
    assert "secret" not in str(body)


def test_project_without_columns_keeps_everything() -> None:
    source = change(unchanged=("secret",))
    body = body_of(make_channel(), source)
    assert body["new"] == source.new
    assert body["old"] == source.old
    assert body["unchanged"] == ["secret"]
