"""Routing: decide, once per source item, which channels and topic bases receive it, and hand
the result to the bus. Nothing here encodes: codecs do, once per payload and topic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.bus.base import Bus, Publication, Target
from gateway.changes import Change, HistoryNote, Item, Op, Published, Row
from gateway.channels import Channel, ChannelSet, Task
from gateway.enrich import Enriched, Enrichment
from gateway.events import Codec
from gateway.filters import Filter
from gateway.publish import Envelope, MessagePayload

YIELD_EVERY = 128
UNENRICHED = Enriched()
log = logging.getLogger("rtgw.router")


class Shape(StrEnum):
    """How a change looks to one topic. A row that changes hands (its partition value changes)
    or leaves a filter must keep every subscriber's view true without showing anyone values
    that were not theirs, as shapes do in ElectricSQL."""

    CHANGE = "change"  # as it happened
    ENTERED = "entered"  # the row moved into this partition: insert-shaped, no previous values
    LEFT = "left"  # the row moved out of this partition: delete-shaped, the previous values
    FILTERED_OUT = "filtered_out"  # an UPDATE took the row out of a filter: delete-shaped


_SHAPED_OPS = {Shape.ENTERED: "INSERT", Shape.LEFT: "DELETE", Shape.FILTERED_OUT: "DELETE"}
_SHOWN = {  # which of (new, old) a shape shows
    Shape.CHANGE: (True, True),
    Shape.ENTERED: (True, False),
    Shape.LEFT: (False, True),
    Shape.FILTERED_OUT: (False, True),
}
_MOVED = {Shape.ENTERED: "in", Shape.LEFT: "out", Shape.FILTERED_OUT: "out"}
# Looked up once: reading an enum member off its class costs about 80 ns per use in 3.11.
_TRUNCATE, _UPDATE = Op.TRUNCATE, Op.UPDATE


class ChannelPayload:
    """A change as one channel shows it, in one ``Shape``. Codecs read ``rows()`` (projected)
    and ``op``, and cache their encoding in ``encodings``."""

    __slots__ = ("change", "channel", "shape", "enriched", "encodings", "_types", "_filtered_out")

    def __init__(
        self,
        change: Change,
        channel: Channel,
        shape: Shape = Shape.CHANGE,
        enriched: Enriched = UNENRICHED,
    ) -> None:
        self.change = change
        self.channel = channel
        self.shape = shape
        self.enriched = enriched  # what the channel's lookups and enrichers added
        self.encodings: dict[Codec, Any] = {}
        self._types: dict[str, str] | None = None
        self._filtered_out: ChannelPayload | None = None

    @property
    def op(self) -> str:
        return _SHAPED_OPS.get(self.shape) or self.change.op  # an ``Op`` is its value

    def rows(self) -> tuple[Row | None, Row | None]:
        """``new`` and ``old`` as this shape shows them, with the channel's projection and its
        looked-up objects."""
        change, project = self.change, self.channel.project
        show_new, show_old = _SHOWN[self.shape]
        new = project(change.new) if show_new else None
        old = project(change.old) if show_old else None
        enriched = self.enriched
        if new is not None and enriched.new:
            new = {**new, **enriched.new}
        if old is not None and enriched.old:
            old = {**old, **enriched.old}
        return new, old

    def view(self, row_filter: Filter) -> ChannelPayload | None:
        """What a topic narrowed by ``row_filter`` receives: this payload when its row passes;
        for an UPDATE whose new row fails the filter while its old row passed, a delete-shaped
        ``FILTERED_OUT`` copy (the row left the topic); otherwise nothing."""
        change = self.change
        if change.op is Op.TRUNCATE:
            return self  # every row is gone, the filtered ones too
        if self._types is None:
            self._types = {column.name: column.type for column in change.columns}
        if self.shape is Shape.LEFT or self.shape is Shape.FILTERED_OUT:
            return self if row_filter.matches(change.old or {}, self._types) else None
        if row_filter.matches(change.row or {}, self._types):
            return self
        if (
            self.shape is Shape.CHANGE and change.op is Op.UPDATE and change.old is not None
            and row_filter.matches(change.old, self._types)
        ):
            if self._filtered_out is None:
                self._filtered_out = ChannelPayload(
                    change, self.channel, Shape.FILTERED_OUT, self.enriched
                )
            return self._filtered_out
        return None


def change_body(payload: ChannelPayload) -> dict[str, Any]:
    """The change as a JSON object, in the payload's shape, with the channel's projection: the
    native protocol's ``change`` and what a channel's tasks receive. A row that moved into the
    topic (its partition) arrives as an INSERT marked ``"moved": "in"``; one that moved out of
    it, or out of the topic's filter, as a DELETE of its previous values marked
    ``"moved": "out"``. An event a custom enricher failed on is marked ``"enriched": false``
    with the enrichers' names in ``failed``."""
    change, keep = payload.change, payload.channel.columns
    new, old = payload.rows()
    body: dict[str, Any] = {
        "id": str(change.id),
        "schema": change.schema,
        "table": change.table,
        "op": payload.op,
        "commit_time": change.commit_time,
        "new": new,
        "old": old,
    }
    moved = _MOVED.get(payload.shape)
    if moved is not None:
        body["moved"] = moved
    if payload.enriched.failed:  # a custom enricher raised or timed out: its value is null
        body["enriched"] = False
        body["failed"] = list(payload.enriched.failed)
    unchanged = change.unchanged
    if unchanged and new is not None:
        body["unchanged"] = [c for c in unchanged if keep is None or c in keep]
    return body


@dataclass(frozen=True, slots=True)
class Work:
    """One task to run for one change: the change as the task's channel shows it."""

    task: Task
    payload: ChannelPayload

    @property
    def position(self) -> int:
        return self.payload.change.id.position


# Takes a source batch's work before the batch is confirmed (gateway/tasks/base.py).
WorkSink = Callable[[Sequence[Work]], Awaitable[None]]


@dataclass(slots=True)
class RouteStats:
    changes: int = 0
    withheld: int = 0  # changes on partitioned channels whose partition value is unknown
    by_table: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (schema, table, op)


class Router:
    """A ``ChangeSink``: matches items against channels and publishes them on the bus, and
    hands the channels' tasks to ``enqueue``."""

    def __init__(
        self, channels: ChannelSet, bus: Bus, enrichment: Enrichment | None = None,
        enqueue: WorkSink | None = None,
        published: Callable[[Sequence[Item]], None] | None = None,
    ) -> None:
        self._channels = channels
        self._bus = bus
        self._enrichment = enrichment
        self._enqueue = enqueue
        self._published = published  # told of each batch once it is published
        self.stats = RouteStats()

    async def __call__(self, items: Sequence[Item]) -> None:
        """The batch is handed on when this returns. Publishes every ``YIELD_EVERY`` items and
        yields to the event loop, so client writers drain while a large batch is routed; then,
        the batch published (fan-out never waits for tasks) and ``published`` told, hands its
        tasks to ``enqueue`` in one call and returns once they are taken (before the source
        confirms the batch)."""
        if self._enrichment is not None:
            await self._enrichment.prepare(items)
        batch: list[Publication] = []
        work: list[Work] | None = [] if self._enqueue is not None else None
        for item in items:
            batch.append(self.route(item, work))
            if len(batch) == YIELD_EVERY:
                await self._bus.publish(batch)
                batch = []
                await asyncio.sleep(0)
        if batch:
            await self._bus.publish(batch)
        if self._published is not None:
            self._published(items)
        if work and self._enqueue is not None:
            await self._enqueue(work)

    def route(self, item: Item, work: list[Work] | None = None) -> Publication:
        """The item's publication; appends the tasks it triggers to ``work`` when given."""
        position, committed_at = item.id.position, item.commit_time_us / 1e6
        if isinstance(item, Published):
            return self._route_published(item, position, committed_at)
        if isinstance(item, HistoryNote):
            return Publication(position, committed_at, note=item.content)
        change = item
        stats = self.stats
        stats.changes += 1
        op = change.op
        counted = (change.schema, change.table, op)
        stats.by_table[counted] = stats.by_table.get(counted, 0) + 1
        targets = []
        for channel in self._channels.by_table.get((change.schema, change.table), ()):
            if op not in channel.operations:
                continue
            if op is _TRUNCATE:  # every partition lost its rows
                targets.append(Target(channel.name, None, ChannelPayload(change, channel)))
                if work is not None and channel.tasks:
                    work.extend(_tasks_for(change, channel, UNENRICHED))
                continue
            enriched = UNENRICHED
            if self._enrichment is not None and (channel.lookups or channel.enrichers):
                enriched = self._enrichment.enrich(channel, change)
                if enriched.failed and channel.drop_unenriched:
                    self._enrichment.stats.dropped += 1
                    continue
            if work is not None and channel.tasks:
                work.extend(_tasks_for(change, channel, enriched))
            base = channel.topic_base_for(change.row)
            previous = None
            if op is _UPDATE and channel.partition is not None:
                previous = channel.topic_base_for(change.old)
            if previous is not None and previous != base:  # the row changed hands
                left = ChannelPayload(change, channel, Shape.LEFT, enriched)
                targets.append(Target(channel.name, previous, left))
                if base is not None:
                    entered = ChannelPayload(change, channel, Shape.ENTERED, enriched)
                    targets.append(Target(channel.name, base, entered))
            elif base is None:
                stats.withheld += 1
            else:
                payload = ChannelPayload(change, channel, enriched=enriched)
                targets.append(Target(channel.name, base, payload))
        roles = self._channels.roles
        if roles is not None and change.table == roles.table and change.schema == roles.schema:
            return Publication(position, committed_at, tuple(targets), roles=roles.changes(change))
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


def _tasks_for(change: Change, channel: Channel, enriched: Enriched) -> list[Work]:
    """The channel's tasks that ``change`` triggers: its operation is one of the task's, and
    its row (``new``, or ``old`` for a DELETE) passes the task's filter."""
    found: list[Work] = []
    types: dict[str, str] | None = None
    payload: ChannelPayload | None = None
    for task in channel.tasks:
        if change.op not in task.operations:
            continue
        if task.filter is not None:
            if types is None:
                types = {column.name: column.type for column in change.columns}
            if not task.filter.matches(change.row or {}, types):
                continue
        if payload is None:
            payload = ChannelPayload(change, channel, Shape.CHANGE, enriched)
        found.append(Work(task, payload))
    return found
