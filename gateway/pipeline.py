"""Routing: decide, once per change, which topics receive it, and encode it once per channel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.changes import Change, HistoryNote, Item, Op, Published
from gateway.channels import Channel, ChannelSet
from gateway.encoding import dumps, loads
from gateway.hub import Hub
from gateway.protocol.filters import Filter
from gateway.protocol.phoenix import postgres_changes_data
from gateway.publish import Envelope, MessagePayload, Receipt, Receipts

YIELD_EVERY = 128
log = logging.getLogger("rtgw.router")


class ChannelPayload:
    """A change as one channel shows it (projection applied), each shape encoded at most once."""

    __slots__ = ("change", "channel", "_native", "_supabase", "_types")
    native_key = b"change"

    def __init__(self, change: Change, channel: Channel) -> None:
        self.change = change
        self.channel = channel
        self._native: bytes | None = None
        self._supabase: bytes | None = None
        self._types: dict[str, str] | None = None

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
    deliveries: int = 0
    withheld: int = 0  # changes on partitioned channels whose partition value is unknown
    replayed: int = 0  # items already published before a source reconnect, dropped


class Router:
    """Matches changes against channels and publishes them to the hub's topics."""

    def __init__(self, channels: ChannelSet, hub: Hub, receipts: Receipts | None = None) -> None:
        self._channels = channels
        self._hub = hub
        self.receipts = receipts if receipts is not None else Receipts()
        self.stats = RouteStats()

    async def __call__(self, items: Sequence[Item]) -> None:
        """A ``ChangeSink``: the batch is handed on when this returns. Yields to the event loop
        every ``YIELD_EVERY`` items so client writers drain while a large batch is routed."""
        for index, item in enumerate(items, 1):
            self.route(item)
            if index % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    def route(self, item: Item) -> None:
        position = item.id.position
        if not self._hub.advance(position):
            self.stats.replayed += 1
            return
        if isinstance(item, Published):
            self._route_published(item, position)
            return
        if isinstance(item, HistoryNote):
            self._restore(item)
            return
        change = item
        self.stats.changes += 1
        channels = self._channels.by_table.get((change.schema, change.table))
        if not channels:
            return
        hub = self._hub
        for channel in channels:
            if change.op not in channel.operations:
                continue
            base = None  # a TRUNCATE: every partition lost its rows
            if change.op is not Op.TRUNCATE:
                base = channel.topic_base_for(change.row)
                if base is None:
                    self.stats.withheld += 1
                    continue
            payload = ChannelPayload(change, channel)
            self.stats.deliveries += hub.publish(
                channel.name, base, payload, position, change.commit_time_us / 1e6
            )

    def _restore(self, note: HistoryNote) -> None:
        try:
            data = loads(note.content)
            restored = self._hub.restore_history(int(data["confirmed"]), data["history"])
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("skipped a history note that cannot be read: %.200r", note.content)
            return
        if restored:
            log.info("history floors restored from the last stop: quiet partitions resume")

    def _route_published(self, item: Published, position: int) -> None:
        envelope = Envelope.decode(item.content)
        if envelope is None or envelope.channel not in self._channels.by_name:
            log.warning("skipped a published event that names no channel: %.200r", item.content)
            return
        topics: tuple[str, ...] = ()
        if self.receipts.waits_for(envelope.id):
            topics = tuple(topic.key for topic in self._hub.topics_for(envelope.base))
        delivered = self._hub.publish(
            envelope.channel, envelope.base, MessagePayload(envelope.message), position,
            item.commit_time_us / 1e6,
        )
        self.stats.deliveries += delivered
        self.receipts.arrived(envelope.id, Receipt(position, topics, delivered))
