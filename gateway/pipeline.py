"""Routing: decide, once per change, which topics receive it, and encode it once per channel."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.changes import Change, Op
from gateway.channels import Channel, ChannelSet
from gateway.encoding import dumps
from gateway.hub import Hub
from gateway.protocol.phoenix import postgres_changes_data

YIELD_EVERY = 128


class ChannelPayload:
    """A change as one channel shows it (projection applied), each shape encoded at most once."""

    __slots__ = ("change", "channel", "_native", "_supabase")
    native_key = b"change"

    def __init__(self, change: Change, channel: Channel) -> None:
        self.change = change
        self.channel = channel
        self._native: bytes | None = None
        self._supabase: bytes | None = None

    @property
    def op(self) -> str:
        return self.change.op.value

    @property
    def native_body(self) -> bytes:
        if self._native is None:
            self._native = dumps(self.channel.project(self.change))
        return self._native

    @property
    def supabase_data(self) -> bytes:
        if self._supabase is None:
            self._supabase = dumps(postgres_changes_data(self.change, self.channel))
        return self._supabase


@dataclass(slots=True)
class RouteStats:
    changes: int = 0
    deliveries: int = 0
    withheld: int = 0  # changes on partitioned channels whose partition value is unknown


class Router:
    """Matches changes against channels and publishes them to the hub's topics."""

    def __init__(self, channels: ChannelSet, hub: Hub) -> None:
        self._channels = channels
        self._hub = hub
        self.stats = RouteStats()

    async def __call__(self, changes: Sequence[Change]) -> None:
        """A ``ChangeSink``: the batch is handed on when this returns. Yields to the event loop
        every ``YIELD_EVERY`` changes so client writers drain while a large batch is routed."""
        for index, change in enumerate(changes, 1):
            self.route(change)
            if index % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    def route(self, change: Change) -> None:
        self.stats.changes += 1
        channels = self._channels.by_table.get((change.schema, change.table))
        if not channels:
            return
        hub = self._hub
        truncate = change.op is Op.TRUNCATE
        row = change.row or {}
        for channel in channels:
            if change.op not in channel.operations:
                continue
            if truncate:
                bases = hub.bases_of(channel.name)  # every partition lost its rows
            else:
                base = channel.topic_base_for(change.row)
                if base is None:
                    self.stats.withheld += 1
                    continue
                bases = [base]
            payload: ChannelPayload | None = None
            types: dict[str, str] | None = None
            for base in bases:
                for topic in hub.topics_for(base):
                    if topic.filter is not None and not truncate:
                        if types is None:
                            types = {c.name: c.type for c in change.columns}
                        if not topic.filter.matches(row, types):
                            continue
                    if payload is None:
                        payload = ChannelPayload(change, channel)
                    self.stats.deliveries += hub.publish(topic, payload)
