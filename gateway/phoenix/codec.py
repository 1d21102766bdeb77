"""The Supabase-compatible codec: a change as ``postgres_changes`` ``data``, encoded once per
payload (shared by its topics and clients). Each joined channel splices it into its own push
(its topic and binding ids, see ``JoinedChannel``).

Values are those of native events (docs/types.md), except ``numeric``: Supabase Realtime sends
rows as jsonb, where a numeric is a JSON number, so here it is one too, with its exact digits
(no float rounding); NaN and infinities, which JSON numbers cannot carry, stay strings."""

from __future__ import annotations

import re
from typing import Any

from gateway.encoding import dumps, raw_json
from gateway.events import TopicEvent
from gateway.publish import MessagePayload
from gateway.router import ChannelPayload


class PhoenixCodec:
    def encode(self, event: TopicEvent) -> bytes:
        payload = event.payload
        if isinstance(payload, MessagePayload):
            return payload.body  # never sent: bindings take row operations only
        cache = payload.encodings
        data: bytes | None = cache.get(self)
        if data is None:
            assert isinstance(payload, ChannelPayload), payload
            data = cache[self] = dumps(postgres_changes_data(payload))
        return data


CODEC = PhoenixCodec()


def postgres_changes_data(payload: ChannelPayload) -> dict[str, Any]:
    """A change as Supabase's ``postgres_changes`` ``data``, in the payload's shape (a row that
    changed hands is an INSERT for its new partition and a DELETE of the previous values for
    the old one, so ``old_record`` never carries another partition's values), with the
    channel's projection."""
    change, keep = payload.change, payload.channel.columns
    new, old = payload.rows()
    numeric = [c.name for c in change.columns if c.type in NUMERIC_TYPES]
    if numeric:
        new, old = _numbers(new, numeric), _numbers(old, numeric)
    data: dict[str, Any] = {
        "schema": change.schema,
        "table": change.table,
        "commit_timestamp": change.commit_time,
        "type": payload.op,
        "columns": [
            {"name": c.name, "type": c.type}
            for c in change.columns
            if keep is None or c.name in keep
        ],
        "errors": None,
    }
    if payload.enriched.failed:  # Supabase's own field for what went wrong with a change
        data["errors"] = [f"enrichment failed: {name}" for name in payload.enriched.failed]
    if payload.op != "DELETE":
        data["record"] = new or {}
    if payload.op != "INSERT":
        data["old_record"] = old or {}
    return data


NUMERIC_TYPES = frozenset({"numeric", "_numeric"})
_DIGITS = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def _numbers(row: dict[str, Any] | None, columns: list[str]) -> dict[str, Any] | None:
    """``row`` with its numeric columns' digits as JSON numbers (arrays element by element)."""
    if row is None:
        return None
    converted = dict(row)
    for name in columns:
        if name in converted:
            converted[name] = _number(converted[name])
    return converted


def _number(value: Any) -> Any:
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return raw_json(value)
    if isinstance(value, list):
        return [_number(item) for item in value]
    return value  # NULL, NaN, Infinity
