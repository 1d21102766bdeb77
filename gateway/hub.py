"""The hub: topics, their subscribers, positions and resume.

A topic is a channel, narrowed by a partition value and optionally by a row filter
(``orders``, ``my_notifications:user_id=42``, ``orders?status=eq.paid``). Routing looks topics
up by their base in a dict, so publishing costs O(matching topics + their subscribers).
Each event is encoded once per topic; every subscriber gets the same ``TopicEvent``.

Events are numbered by their position in the source's stream (``ChangeId.position``: the commit
LSN and the change's place in its transaction), not by a counter of this process. So numbers
survive a restart: the slot replays what the history held, and the same events come back with
the same numbers. A client sees a position as (``epoch``, ``offset``): the epoch names the
stream (the database system and timeline) and a window of 2**52 positions, the offset is the
position within it, so every offset is exact in JavaScript. Offsets increase along a topic but
are not consecutive (other topics' events sit between them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.bus.base import ROLES, Archive, Publication
from gateway.changes import PLACE_BITS, RoleChange
from gateway.encoding import loads
from gateway.errors import GatewayError
from gateway.events import GapNotice, Payload, TopicEvent
from gateway.filters import Filter
from gateway.history import Entry, History
from gateway.publish import Receipt, Receipts
from gateway.writes import HELD

OFFSET_BITS = 52
OFFSET_MASK = (1 << OFFSET_BITS) - 1
STREAM_ID_LENGTH = 8
UNKNOWN_STREAM = "00000000"  # before the first start: no subscriber can hold its positions
CATCH_UP_WAIT_S = 30.0  # how long a subscription waits for the replay after a start
AHEAD_WAIT_S = 2.0  # how long a ``since`` ahead of this gateway waits for the stream to reach it
log = logging.getLogger("rtgw.hub")


class RoleSink(Protocol):
    """Told of the stream's role changes (``gateway.roles.Roles``)."""

    def apply(self, changes: Sequence[RoleChange]) -> None:
        """Role changes at their place in the stream."""

    def forget(self) -> None:
        """Role changes may have been lost: read the roles again."""


class Interest(Protocol):
    """Told which topic bases have subscribers here (the bus: ``Bus.want``/``unwant``)."""

    def want(self, base: str) -> None: ...

    def unwant(self, base: str) -> None: ...


@dataclass(slots=True)
class HubStats:
    deliveries: int = 0  # events handed to subscribers (counted once per publish per topic)
    replayed: int = 0  # items already published before a source reconnect, dropped


class Subscriber(Protocol):
    """A topic's subscriber. One that has a ``lane`` attribute (not None) may be handed its
    events through that lane, together with the lane's other subscribers of the topic."""

    def deliver(self, event: TopicEvent) -> None:
        """Queue an event. Must not block and must not raise."""

    def gap(self, notice: GapNotice) -> None:
        """Events of a subscribed topic may have been lost. Must not block or raise."""


class Lane(Protocol):
    """Subscribers that take each event together: what each ``deliver`` would do, with the
    work they share (rendering the event's frame) done once for all of them."""

    def deliver(self, event: TopicEvent, members: Collection[Subscriber]) -> None:
        """Hand ``event`` to every member, as each member's ``deliver`` would. Must not block
        and must not raise."""


@dataclass(slots=True)
class Topic:
    key: str
    channel: str
    base: str
    filter: Filter | None
    subscribers: dict[Subscriber, None] = field(default_factory=dict)
    # ``in_lane`` counts subscribers known to have ``lane`` (never more than have it; the lane
    # changes only while the count is 0): when it counts them all, the lane takes each event.
    lane: Lane | None = None
    in_lane: int = 0

    def add(self, subscriber: Subscriber) -> None:
        if subscriber in self.subscribers:
            return
        self.subscribers[subscriber] = None
        lane = getattr(subscriber, "lane", None)
        if lane is not None and (lane is self.lane or not self.in_lane):
            self.lane = lane
            self.in_lane += 1

    def remove(self, subscriber: Subscriber) -> None:
        if subscriber not in self.subscribers:
            return
        del self.subscribers[subscriber]
        if self.in_lane and getattr(subscriber, "lane", None) is self.lane:
            self.in_lane -= 1

    def deliver(self, event: TopicEvent) -> None:
        """Hand ``event`` to every subscriber: through their lane when they all share one."""
        subscribers = self.subscribers
        if self.lane is not None and self.in_lane == len(subscribers):
            self.lane.deliver(event, subscribers)
            return
        for subscriber in subscribers:
            subscriber.deliver(event)


@dataclass(frozen=True, slots=True)
class Since:
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Recall:
    """What the archive held of a topic base before subscribing (``entries`` None: some of
    it may be gone); see ``Hub.recall``."""

    entries: list[Entry] | None


@dataclass(frozen=True, slots=True)
class Subscription:
    topic: str
    offset: int  # where the subscriber stands: resume from here when nothing arrived
    epoch: str
    recovered: bool | None  # None: no ``since`` was given
    backlog: tuple[TopicEvent, ...]  # missed since ``since``: deliver them before returning


def topic_key(base: str, row_filter: Filter | None) -> str:
    return base if row_filter is None else f"{base}?{row_filter.key}"


class Hub:
    """Topic registry, and a node's ``Receiver`` of the bus. Not thread-safe; every method runs
    on the event loop without awaiting, so a subscribe (history replay + registration) is
    atomic with respect to publishing."""

    def __init__(
        self,
        history: History | None = None,
        stream: str = UNKNOWN_STREAM,
        receipts: Receipts | None = None,
        interest: Interest | None = None,
        roles: RoleSink | None = None,
        archive: Archive | None = None,
    ) -> None:
        self.history = history if history is not None else History()
        self.archive = archive  # history kept by the bus for every node: resume reads it
        self.receipts = receipts if receipts is not None else Receipts()
        self.stats = HubStats()
        self._interest = interest
        self._roles = roles  # told of role changes at their place in the stream
        self.position = 0  # the last position published (or the start of the stream)
        self._started_after = -1  # where history last started over
        self._stream = stream
        self._epochs: dict[int, str] = {}
        self._topics: dict[str, Topic] = {}
        self._by_base: dict[str, dict[str, Topic]] = {}
        self._bases_by_channel: dict[str, dict[str, None]] = {}
        # Cleared by a node until its source has replayed what the slot held at start: until
        # then history is incomplete and "live" events would be old ones.
        self.caught_up = asyncio.Event()
        self.caught_up.set()
        self._reaching: list[tuple[int, asyncio.Future[None]]] = []  # see ``reach``

    def __len__(self) -> int:
        return len(self._topics)

    # -- the bus's receiver ------------------------------------------------------------------

    def receive(self, batch: Sequence[Publication]) -> None:
        """Apply publications in order; one already published (a replay) is dropped. Role
        changes go to ``roles`` at their place, so a revocation ends subscriptions before
        any later change reaches them. Transports hold a batch's frames and write them
        together at its end (``gateway.writes``): one write per socket, not per event."""
        holding = len(batch) > 1 and HELD.hold()
        try:
            self._receive(batch)
        finally:
            if holding:
                HELD.release()

    def _receive(self, batch: Sequence[Publication]) -> None:
        for publication in batch:
            position = publication.position
            if not self.advance(position):
                self.stats.replayed += 1
                continue
            if publication.note is not None:
                self._restore(publication.note)
            if publication.roles and self._roles is not None:
                self._roles.apply(publication.roles)  # before anything later is delivered
            waiting = publication.receipt is not None and self.receipts.waits_for(
                publication.receipt
            )
            delivered = 0
            topics: list[str] = []
            for target in publication.targets:
                if waiting and target.base is not None:
                    topics.extend(topic.key for topic in self.topics_for(target.base))
                delivered += self.publish(
                    target.channel, target.base, target.payload, position,
                    publication.committed_at,
                )
            if waiting:
                assert publication.receipt is not None
                offset, epoch = self.offset_and_epoch(position)
                self.receipts.arrived(
                    publication.receipt, Receipt(offset, epoch, tuple(topics), delivered)
                )

    def gap(self, channels: Collection[str] | None, reason: str) -> None:
        if channels is None or ROLES in channels:
            if self._roles is not None:
                self._roles.forget()
            if channels is not None:
                channels = [channel for channel in channels if channel != ROLES]
        told = self.notify_gap(channels, reason)
        log.warning("gap on %d topics: %s", told, reason)

    def _restore(self, note: bytes) -> None:
        try:
            data = loads(note)
            restored = self.restore_history(int(data["confirmed"]), data["history"])
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("skipped a history note that cannot be read: %.200r", note)
            return
        if restored:
            log.info("history floors restored from the last stop: quiet partitions resume")

    def start(self, stream: str, after: int) -> bool:
        """The source streams ``stream`` from after ``after``. In the same stream that continues
        what was published (positions it replays are dropped by ``advance``; changes it lost
        it reports as a gap itself). Returns False for another stream (a failover or restore
        changed the database's timeline, or another gateway took over a Supabase upstream):
        history starts over, and subscribers get a gap (unless no stream was known before)."""
        if stream == self._stream:
            self.position = max(self.position, after)
            return True
        known = self._stream != UNKNOWN_STREAM
        self._stream, self._epochs = stream, {}
        self.position = max(after, 0)
        self._started_after = after
        self.history.restart(after)
        if known:
            self.gap(None, "stream_changed: the stream started over (the database failed over "
                     "or was restored, or another gateway took over an upstream that cannot "
                     "replay)")
        return False

    def rejoin(self, stream: str, after: int) -> None:
        """The bus (re)connected (see ``Receiver.rejoin``): the stream continues after
        ``after``, history starts over there, and any subscriber left is told of a gap."""
        if stream != self._stream:
            self.start(stream, after)
            return
        self.position = after
        self.history.restart(after)
        if self._topics:
            self.gap(None, "bus_reconnected: events may have been missed while the bus was away")
        elif self._roles is not None:
            self._roles.forget()  # role changes may have gone by too

    def restore_history(self, confirmed_lsn: int, snapshot: dict[str, Any]) -> bool:
        """Take back the floors of the process that stopped with the slot confirmed at
        ``confirmed_lsn``, if this history started exactly there."""
        if self._started_after != (confirmed_lsn << PLACE_BITS) - 1:
            return False
        return self.history.restore(snapshot, self._started_after)

    async def wait_caught_up(self) -> None:
        """Wait (bounded) until subscribing is safe; ``not_ready`` if it does not become so."""
        if self.caught_up.is_set():
            return
        try:
            async with asyncio.timeout(CATCH_UP_WAIT_S):
                await self.caught_up.wait()
        except TimeoutError:
            raise GatewayError(
                "not_ready", "the gateway is still replaying its history after a start; retry"
            ) from None

    async def reach(self, since: Since) -> None:
        """Wait (at most ``AHEAD_WAIT_S``) until the stream has reached ``since``, when it names
        a position of this stream that is not published yet: a client that moves from another
        gateway on the same database may be a little ahead of this one."""
        position = self.position_of(since)
        if position is None or position <= self.position:
            return
        reached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (position, reached)
        self._reaching.append(waiter)
        try:
            async with asyncio.timeout(AHEAD_WAIT_S):
                await reached
        except TimeoutError:
            pass  # ``subscribe`` then answers recovered: false
        finally:
            if waiter in self._reaching:
                self._reaching.remove(waiter)

    async def recall(self, channel: str, base: str, since: Since | None) -> Recall | None:
        """With an archive (a bus that keeps history for every node), run before ``subscribe``
        and hand it the result without awaiting in between: it makes sure ``base``'s events
        reach this hub from now on and reads what the archive kept after ``since``. None
        without an archive (resume reads this hub's history)."""
        if self.archive is None:
            return None
        after = None if since is None else self.position_of(since)
        if since is not None and after is None:
            await self.archive.recall(channel, base, None)
            return Recall(None)  # another stream's position: nothing to recall
        return Recall(await self.archive.recall(channel, base, after))

    def advance(self, position: int) -> bool:
        """Move to ``position``; False when it was already published (a replay)."""
        if position <= self.position:
            return False
        self.position = position
        if self._reaching:
            self._wake_reached(position)
        return True

    def _wake_reached(self, position: int) -> None:
        waiting = []
        for wanted, reached in self._reaching:
            if wanted > position:
                waiting.append((wanted, reached))
            elif not reached.done():
                reached.set_result(None)
        self._reaching = waiting

    def offset_and_epoch(self, position: int) -> tuple[int, str]:
        """How clients see ``position``."""
        window = position >> OFFSET_BITS
        epoch = self._epochs.get(window)
        if epoch is None:
            epoch = self._epochs[window] = f"{self._stream}{window:x}"
        return position & OFFSET_MASK, epoch

    def topics_for(self, base: str) -> Iterator[Topic]:
        variants = self._by_base.get(base)
        return iter(()) if variants is None else iter(list(variants.values()))

    def subscribe(
        self,
        subscriber: Subscriber,
        channel: str,
        base: str,
        row_filter: Filter | None,
        since: Since | None,
        recall: Recall | None = None,
    ) -> Subscription:
        key = topic_key(base, row_filter)
        topic = self._topics.get(key)
        if topic is None:
            topic = Topic(key=key, channel=channel, base=base, filter=row_filter)
            self._topics[key] = topic
            variants = self._by_base.get(base)
            if variants is None:
                variants = self._by_base[base] = {}
                if self._interest is not None:
                    self._interest.want(base)
            variants[key] = topic
            self._bases_by_channel.setdefault(channel, {})[base] = None
        recovered, backlog = self._replay(topic, since, recall)
        topic.add(subscriber)
        offset, epoch = self.offset_and_epoch(self.position)
        return Subscription(key, offset, epoch, recovered, backlog)

    def unsubscribe(self, subscriber: Subscriber, key: str) -> None:
        topic = self._topics.get(key)
        if topic is None:
            return
        topic.remove(subscriber)
        if not topic.subscribers:
            self._drop(topic)

    def publish(
        self, channel: str, base: str | None, payload: Payload, position: int, committed_at: float
    ) -> int:
        """Keep the event at ``position`` (committed at ``committed_at``, Unix seconds) in
        history and hand it to every topic of ``base`` (every base of the channel when None: a
        TRUNCATE), as each topic's filter shows it. Returns how many subscribers received it."""
        self.history.keep(position, channel, base, payload, committed_at)
        bases = (base,) if base is not None else self._bases_by_channel.get(channel, ())
        offset, epoch = self.offset_and_epoch(position)
        delivered = 0
        for each in bases:
            variants = self._by_base.get(each)
            if variants is None:
                continue
            for topic in variants.values():
                shown = payload if topic.filter is None else payload.view(topic.filter)
                if shown is None:
                    continue
                topic.deliver(TopicEvent(topic.key, offset, epoch, shown))
                delivered += len(topic.subscribers)
        self.stats.deliveries += delivered
        return delivered

    def notify_gap(self, channels: Collection[str] | None, reason: str) -> int:
        """Tell every subscriber of the channels' topics (all topics when ``channels`` is None)
        that their events up to now may have been lost; history forgets them too.
        Returns how many topics were told."""
        wanted = None if channels is None else set(channels)
        if wanted is None:
            self.history.restart(self.position)
        else:
            self.history.reset(wanted, self.position)
        offset, epoch = self.offset_and_epoch(self.position)
        told = 0
        for topic in list(self._topics.values()):
            if wanted is not None and topic.channel not in wanted:
                continue
            notice = GapNotice(topic.key, offset, epoch, reason)
            for subscriber in list(topic.subscribers):
                subscriber.gap(notice)
            told += 1
        return told

    def position_of(self, since: Since) -> int | None:
        """The stream position ``since`` names, or None when it is not one of this stream's."""
        epoch = since.epoch
        if len(epoch) <= STREAM_ID_LENGTH or not epoch.startswith(self._stream):
            return None
        try:
            window = int(epoch[STREAM_ID_LENGTH:], 16)
        except ValueError:
            return None
        return (window << OFFSET_BITS) | since.offset

    def _replay(
        self, topic: Topic, since: Since | None, recall: Recall | None
    ) -> tuple[bool | None, tuple[TopicEvent, ...]]:
        if since is None:
            return None, ()
        position = self.position_of(since)
        if position is None or position > self.position:
            return False, ()
        entries = self.history.after(topic.channel, topic.base, position)
        if recall is not None:
            entries = self._recalled(recall, entries or [], position)
        if entries is None:
            return False, ()
        row_filter = topic.filter
        events = []
        for entry in entries:
            shown = entry.payload if row_filter is None else entry.payload.view(row_filter)
            if shown is not None:
                events.append(
                    TopicEvent(topic.key, *self.offset_and_epoch(entry.position), shown)
                )
        return True, tuple(events)

    def _recalled(self, recall: Recall, kept: list[Entry], after: int) -> list[Entry] | None:
        """The archive decides what is recovered; events this hub received after the archive
        was read fill in, and events read that have not reached this hub yet are left to
        arrive live."""
        if recall.entries is None:
            return None
        found = {e.position: e for e in recall.entries if after < e.position <= self.position}
        for entry in kept:
            found.setdefault(entry.position, entry)
        return [found[position] for position in sorted(found)]

    def _drop(self, topic: Topic) -> None:
        del self._topics[topic.key]
        variants = self._by_base[topic.base]
        del variants[topic.key]
        if not variants:
            del self._by_base[topic.base]
            if self._interest is not None:
                self._interest.unwant(topic.base)
            bases = self._bases_by_channel[topic.channel]
            del bases[topic.base]
            if not bases:
                del self._bases_by_channel[topic.channel]
