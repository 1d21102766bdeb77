"""History: the recent events of every channel, by position, for clients that resume.

Every event the router sees is kept, whether or not its topic has subscribers right now, so a
client can resume on a topic that did not exist while its events went by (after the gateway
restarted, for instance). Kept in memory and bounded three ways: events per topic base (a
partition), events in total, and age (by commit time, so a replay after a long stop does not
make old events young again). With the Postgres source the slot is never confirmed
beyond the oldest event kept here, so a restarted gateway rebuilds this history from the slot.

Resuming needs to know what was dropped, not only what is kept: each base has a *floor*, the
position up to which its events may be gone. Above the floor every event of the base is kept,
so a client resuming from a position at or above it is recovered, even when none of the base's
events is left (a quiet partition loses nothing by being quiet).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from gateway.changes import PLACE_BITS
from gateway.events import Payload


@dataclass(slots=True)
class Entry:
    position: int
    channel: str
    base: str | None  # None: every partition of the channel (a TRUNCATE)
    payload: Payload
    committed_at: float  # Unix seconds
    dropped: bool = False  # gone from its base (it may still wait in ``History._all``)


def _key(channel: str, base: str | None) -> str:
    # A base never contains NUL (partition values are percent-encoded), so this cannot collide.
    return base if base is not None else f"{channel}\0*"


class History:
    """Not thread-safe; runs on the event loop like the hub that owns it."""

    def __init__(
        self,
        per_base: int = 1000,
        total: int = 100_000,
        max_age_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._per_base, self._total, self._max_age_s = per_base, total, max_age_s
        self._clock = clock
        self.floor = -1  # events at or below this position may be gone, for every base
        self._all: deque[Entry] = deque()  # in position order; may hold entries already dropped
        self._by_key: dict[str, deque[Entry]] = {}  # never empty
        # Floors raised by dropping entries, oldest first; as many as events kept in total, the
        # oldest going into ``floor`` so this stays bounded.
        self._floors: OrderedDict[str, int] = OrderedDict()
        self._channel_floors: dict[str, int] = {}  # raised by gaps

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._by_key.values())

    def restart(self, after: int) -> None:
        """Forget everything: only events after ``after`` will be known."""
        self.floor = after
        self._all.clear()
        self._by_key.clear()
        self._floors.clear()
        self._channel_floors.clear()

    def keep(
        self, position: int, channel: str, base: str | None, payload: Payload, committed_at: float
    ) -> None:
        key = _key(channel, base)
        entries = self._by_key.get(key)
        if entries is None:
            entries = self._by_key[key] = deque()
        entry = Entry(position, channel, base, payload, committed_at)
        entries.append(entry)
        self._all.append(entry)
        if len(entries) > self._per_base:
            self._drop_oldest(key, entries)
        self._trim(self._clock())

    def oldest_needed(self) -> int | None:
        """The commit LSN of the oldest event kept (after dropping the expired ones)."""
        self._trim(self._clock())
        return self._all[0].position >> PLACE_BITS if self._all else None

    def reset(self, channels: Collection[str], position: int) -> None:
        """Events of ``channels`` up to ``position`` may have been lost (a gap upstream)."""
        for key in [k for k, entries in self._by_key.items() if entries[0].channel in channels]:
            for entry in self._by_key.pop(key):
                entry.dropped = True
        for channel in channels:
            self._channel_floors[channel] = position

    def after(self, channel: str, base: str, position: int) -> list[Entry] | None:
        """The kept events of ``base`` (TRUNCATEs of its channel included) after ``position``,
        oldest first; None when some of them may have been dropped."""
        truncates = _key(channel, None)
        floor = max(
            self.floor,
            self._channel_floors.get(channel, -1),
            self._floors.get(base, -1),
            self._floors.get(truncates, -1),
        )
        if position < floor:
            return None
        newer = _newer(self._by_key.get(base), position)
        truncated = _newer(self._by_key.get(truncates), position)
        if truncated:
            newer = sorted(newer + truncated, key=lambda entry: entry.position)
        return newer

    def snapshot(self) -> dict[str, Any]:
        """How far events were dropped: the floors, for ``restore`` in the next process."""
        return {"floor": self.floor, "floors": dict(self._floors),
                "channels": dict(self._channel_floors)}

    def restore(self, snapshot: dict[str, Any], started_after: int) -> bool:
        """Take back the floors a stopped process recorded when this one started at the very
        position that process had confirmed (the caller checks): every event above them was
        then kept, so it was replayed. Floors raised since (by this replay's own drops) stay.
        False when history has already given up more than the replay's start."""
        if self.floor != started_after:
            return False  # floors were evicted into the global one meanwhile
        self.floor = int(snapshot["floor"])
        restored: OrderedDict[str, int] = OrderedDict(
            (str(key), int(position)) for key, position in snapshot["floors"].items()
        )
        for key, position in self._floors.items():
            restored[key] = max(position, restored.get(key, position))
            restored.move_to_end(key)
        self._floors = restored
        while len(self._floors) > self._total:
            _, position = self._floors.popitem(last=False)
            self.floor = max(self.floor, position)
        for channel, position in snapshot["channels"].items():
            current = self._channel_floors.get(str(channel), int(position))
            self._channel_floors[str(channel)] = max(current, int(position))
        return True

    def _trim(self, now: float) -> None:
        """Drop what is over the bounds, and entries already dropped from their base (so they
        hold nothing back in the slot)."""
        kept, expired = self._all, now - self._max_age_s
        while kept:
            entry = kept[0]
            if not entry.dropped:  # then it is the oldest of its base (``_all`` is in order)
                if len(kept) <= self._total and entry.committed_at >= expired:
                    return
                key = _key(entry.channel, entry.base)
                self._drop_oldest(key, self._by_key[key])
            kept.popleft()

    def _drop_oldest(self, key: str, entries: deque[Entry]) -> None:
        dropped = entries.popleft()
        dropped.dropped = True
        if not entries:
            del self._by_key[key]
        floors = self._floors
        floors[key] = dropped.position
        floors.move_to_end(key)
        if len(floors) > self._total:
            _, position = floors.popitem(last=False)
            self.floor = max(self.floor, position)


def _newer(entries: deque[Entry] | None, position: int) -> list[Entry]:
    if entries is None:
        return []
    found: list[Entry] = []
    for entry in reversed(entries):
        if entry.position <= position:
            break
        found.append(entry)
    found.reverse()
    return found
