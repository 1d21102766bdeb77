"""The Supabase-compatible codec: a change as ``postgres_changes`` ``data``, encoded once per
payload (shared by its topics and clients). Each joined channel splices it into its own push
(its topic and binding ids, see ``JoinedChannel``)."""

from __future__ import annotations

from typing import Any

from gateway.changes import Change, Op
from gateway.channels import Channel
from gateway.encoding import dumps
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
            data = cache[self] = dumps(postgres_changes_data(payload.change, payload.channel))
        return data


CODEC = PhoenixCodec()


def postgres_changes_data(change: Change, channel: Channel) -> dict[str, Any]:
    """A change as Supabase's ``postgres_changes`` ``data``, with the channel's projection."""
    new, old = channel.project_rows(change)
    keep = channel.columns
    data: dict[str, Any] = {
        "schema": change.schema,
        "table": change.table,
        "commit_timestamp": change.commit_time,
        "type": change.op.value,
        "columns": [
            {"name": c.name, "type": c.type}
            for c in change.columns
            if keep is None or c.name in keep
        ],
        "errors": None,
    }
    if change.op is not Op.DELETE:
        data["record"] = new or {}
    if change.op is not Op.INSERT:
        data["old_record"] = old or {}
    return data
