"""The hub: topics, their subscribers, offsets and bounded history.

A topic is a channel, narrowed by a partition value and optionally by a row filter
(``orders``, ``my_notifications:user_id=42``, ``orders?status=eq.paid``). Routing looks topics
up by their base in a dict, so publishing costs O(matching topics + their subscribers).
Each event is encoded once per topic; every subscriber gets the same ``TopicEvent``.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from gateway.events import GapNotice, Payload, TopicEvent
from gateway.protocol.filters import Filter


class Subscriber(Protocol):
    def deliver(self, event: TopicEvent) -> None:
        """Queue an event. Must not block and must not raise."""

    def gap(self, notice: GapNotice) -> None:
        """Events of a subscribed topic may have been lost. Must not block or raise."""


def _new_epoch() -> str:
    return secrets.token_hex(4)


@dataclass(slots=True)
class Topic:
    key: str
    channel: str
    base: str
    filter: Filter | None
    epoch: str = field(default_factory=_new_epoch)
    offset: int = 0
    subscribers: dict[Subscriber, None] = field(default_factory=dict)
    history: deque[TopicEvent] = field(default_factory=deque)


@dataclass(frozen=True, slots=True)
class Since:
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Subscription:
    topic: str
    offset: int
    epoch: str
    recovered: bool | None  # None: no ``since`` was given
    backlog: tuple[TopicEvent, ...]  # missed since ``since``: deliver them before returning


def topic_key(base: str, row_filter: Filter | None) -> str:
    return base if row_filter is None else f"{base}?{row_filter.key}"


class Hub:
    """Topic registry. Not thread-safe; every method runs on the event loop without awaiting,
    so a subscribe (history replay + registration) is atomic with respect to publishing."""

    def __init__(
        self, history_size: int = 1000, max_idle_topics: int = 10_000, history_total: int = 100_000
    ) -> None:
        self._history_size = history_size  # events kept per topic
        self._history_total = history_total  # events kept across all topics, oldest go first
        self._max_idle_topics = max_idle_topics
        # Every kept event in publish order, to evict the oldest across topics. Entries whose
        # event already left its topic (per-topic bound, gap, dropped topic) are skipped.
        self._kept: deque[tuple[Topic, TopicEvent]] = deque()
        self._topics: dict[str, Topic] = {}
        self._by_base: dict[str, dict[str, Topic]] = {}
        self._bases_by_channel: dict[str, dict[str, None]] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._topics)

    def topics_for(self, base: str) -> Iterator[Topic]:
        variants = self._by_base.get(base)
        return iter(()) if variants is None else iter(list(variants.values()))

    def bases_of(self, channel: str) -> list[str]:
        """Every topic base of a channel (one per partition value) that has topics."""
        return list(self._bases_by_channel.get(channel, ()))

    def subscribe(
        self,
        subscriber: Subscriber,
        channel: str,
        base: str,
        row_filter: Filter | None,
        since: Since | None,
    ) -> Subscription:
        key = topic_key(base, row_filter)
        topic = self._topics.get(key)
        if topic is None:
            topic = Topic(key=key, channel=channel, base=base, filter=row_filter)
            self._topics[key] = topic
            self._by_base.setdefault(base, {})[key] = topic
            self._bases_by_channel.setdefault(channel, {})[base] = None
        self._idle.pop(key, None)
        recovered, backlog = self._replay(topic, since)
        topic.subscribers[subscriber] = None
        return Subscription(key, topic.offset, topic.epoch, recovered, backlog)

    def unsubscribe(self, subscriber: Subscriber, key: str) -> None:
        topic = self._topics.get(key)
        if topic is None:
            return
        topic.subscribers.pop(subscriber, None)
        if not topic.subscribers:
            self._idle[key] = None
            while len(self._idle) > self._max_idle_topics:
                self._drop(self._idle.popitem(last=False)[0])

    def publish(self, topic: Topic, payload: Payload) -> int:
        """Number the event, keep it in history, hand the same event to every subscriber.
        Returns how many subscribers received it."""
        topic.offset += 1
        event = TopicEvent(topic.key, topic.offset, topic.epoch, payload)
        history = topic.history
        history.append(event)
        if len(history) > self._history_size:
            history.popleft()
        kept = self._kept
        kept.append((topic, event))
        while len(kept) > self._history_total:
            oldest_topic, oldest = kept.popleft()
            if oldest_topic.history and oldest_topic.history[0] is oldest:
                oldest_topic.history.popleft()
        for subscriber in topic.subscribers:
            subscriber.deliver(event)
        return len(topic.subscribers)

    def notify_gap(self, channels: Iterable[str] | None, reason: str) -> int:
        """Tell every subscriber of the channels' topics (all topics when ``channels`` is None)
        that events may have been lost: the topic restarts under a new epoch with no history.
        Returns how many topics were reset."""
        wanted = None if channels is None else set(channels)
        reset = 0
        for topic in self._topics.values():
            if wanted is not None and topic.channel not in wanted:
                continue
            topic.epoch, topic.offset = _new_epoch(), 0
            topic.history.clear()
            notice = GapNotice(topic.key, topic.epoch, reason)
            for subscriber in topic.subscribers:
                subscriber.gap(notice)
            reset += 1
        return reset

    def _replay(
        self, topic: Topic, since: Since | None
    ) -> tuple[bool | None, tuple[TopicEvent, ...]]:
        if since is None:
            return None, ()
        if since.epoch != topic.epoch or since.offset > topic.offset:
            return False, ()
        if since.offset == topic.offset:
            return True, ()
        history = topic.history
        if not history or history[0].offset > since.offset + 1:
            return False, ()
        return True, tuple(event for event in history if event.offset > since.offset)

    def _drop(self, key: str) -> None:
        topic = self._topics.pop(key)
        variants = self._by_base[topic.base]
        del variants[key]
        if not variants:
            del self._by_base[topic.base]
            bases = self._bases_by_channel[topic.channel]
            del bases[topic.base]
            if not bases:
                del self._bases_by_channel[topic.channel]
