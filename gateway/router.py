"""Routing: decide, once per source item, which channels and topic bases receive it, and hand
the result to the bus. Nothing here encodes: codecs do, once per payload and topic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.bus.base import Bus, Publication, Target
from gateway.changes import Change, HistoryNote, Item, Op, Published
from gateway.channels import Channel, ChannelSet
from gateway.events import Codec
from gateway.filters import Filter
from gateway.publish import Envelope, MessagePayload

YIELD_EVERY = 128
log = logging.getLogger("rtgw.router")


class ChannelPayload:
    """A change as one channel shows it. Codecs read ``change`` and ``channel`` (whose
    projection applies) and cache their encoding in ``encodings``."""

    __slots__ = ("change", "channel", "encodings", "_types")

    def __init__(self, change: Change, channel: Channel) -> None:
        self.change = change
        self.channel = channel
        self.encodings: dict[Codec, Any] = {}
        self._types: dict[str, str] | None = None

    @property
    def op(self) -> str:
        return self.change.op.value

    def passes(self, row_filter: Filter) -> bool:
        change = self.change
        if change.op is Op.TRUNCATE:
            return True  # every row is gone, the filtered ones too
        if self._types is None:
            self._types = {column.name: column.type for column in change.columns}
        return row_filter.matches(change.row or {}, self._types)


@dataclass(slots=True)
class RouteStats:
    changes: int = 0
    withheld: int = 0  # changes on partitioned channels whose partition value is unknown
    by_table: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (schema, table, op)


class Router:
    """A ``ChangeSink``: matches items against channels and publishes them on the bus."""

    def __init__(self, channels: ChannelSet, bus: Bus) -> None:
        self._channels = channels
        self._bus = bus
        self.stats = RouteStats()

    async def __call__(self, items: Sequence[Item]) -> None:
        """The batch is handed on when this returns. Publishes every ``YIELD_EVERY`` items and
        yields to the event loop, so client writers drain while a large batch is routed."""
        batch: list[Publication] = []
        for item in items:
            batch.append(self.route(item))
            if len(batch) == YIELD_EVERY:
                await self._bus.publish(batch)
                batch = []
                await asyncio.sleep(0)
        if batch:
            await self._bus.publish(batch)

    def route(self, item: Item) -> Publication:
        position, committed_at = item.id.position, item.commit_time_us / 1e6
        if isinstance(item, Published):
            return self._route_published(item, position, committed_at)
        if isinstance(item, HistoryNote):
            return Publication(position, committed_at, note=item.content)
        change = item
        stats = self.stats
        stats.changes += 1
        counted = (change.schema, change.table, change.op.value)
        stats.by_table[counted] = stats.by_table.get(counted, 0) + 1
        targets = []
        for channel in self._channels.by_table.get((change.schema, change.table), ()):
            if change.op not in channel.operations:
                continue
            base = None  # a TRUNCATE: every partition lost its rows
            if change.op is not Op.TRUNCATE:
                base = channel.topic_base_for(change.row)
                if base is None:
                    self.stats.withheld += 1
                    continue
            targets.append(Target(channel.name, base, ChannelPayload(change, channel)))
        return Publication(position, committed_at, tuple(targets))

    def _route_published(
        self, item: Published, position: int, committed_at: float
    ) -> Publication:
        envelope = Envelope.decode(item.content)
        if envelope is None or envelope.channel not in self._channels.by_name:
            log.warning("skipped a published event that names no channel: %.200r", item.content)
            return Publication(position, committed_at)
        target = Target(envelope.channel, envelope.base, MessagePayload(envelope.message))
        return Publication(position, committed_at, (target,), receipt=envelope.id)
