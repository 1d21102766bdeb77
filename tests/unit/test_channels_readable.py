"""ChannelSet.readable: which rtgw channels a Supabase binding resolves to, for a token."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth import Claims
from gateway.changes import Op
from gateway.channels import Channel, ChannelSet
from gateway.errors import GatewayError
from gateway.phoenix import frames as phoenix


def _channel(name: str, table: str, scope: str) -> Channel:
    return Channel(name=name, schema="public", table=table, operations=frozenset(Op),
                   scopes=frozenset({scope}), columns=None, filterable=None, partition=None,
                   source="t.toml")


CHANNELS = ChannelSet([_channel("b-all", "a", "admin"), _channel("a-read", "a", "x"),
                       _channel("b-read", "b", "y")])


def _claims(*scopes: str) -> Claims:
    return Claims(raw={"sub": "u"}, subject="u", scopes=frozenset(scopes), expires_at=0.0,
                  role=None)


def _grants(binding: dict[str, Any], *scopes: str) -> list[str]:
    (parsed,) = phoenix.parse_join({"config": {"postgres_changes": [binding]}}).bindings
    granted = CHANNELS.readable(parsed.schema, parsed.table, _claims(*scopes))
    return [channel.name for channel, _ in granted]


def test_a_named_table_takes_the_first_channel_by_name_that_grants_it() -> None:
    assert _grants({"table": "a"}, "x") == ["a-read"]
    assert _grants({"table": "a"}, "x", "admin") == ["a-read"]  # a-read < b-all
    assert _grants({"table": "a"}, "admin") == ["b-all"]


def test_a_named_table_without_a_grant_is_refused() -> None:
    with pytest.raises(GatewayError) as refused:
        _grants({"table": "b"}, "x")
    assert refused.value.code == "forbidden"
    with pytest.raises(GatewayError) as unknown:
        _grants({"table": "c"}, "x")
    assert unknown.value.code == "unknown_table"


def test_a_wildcard_covers_what_the_token_may_read_and_refuses_when_nothing() -> None:
    assert _grants({"schema": "public"}, "x") == ["a-read"]
    assert sorted(_grants({"schema": "*", "table": "*"}, "x", "y")) == ["a-read", "b-read"]
    with pytest.raises(GatewayError) as refused:
        _grants({"schema": "public"})
    assert refused.value.code == "forbidden"
