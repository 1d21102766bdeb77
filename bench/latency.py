"""Latency figures: the ``ts=`` stamp a row carries (see ``bench.writer``), percentiles, and a
histogram that stays small over millions of deliveries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MARK = b"ts="


def stamp(message: bytes) -> float | None:
    """The ``ts=<epoch seconds>`` stamp inside an encoded event, or None."""
    at = message.find(MARK)
    if at < 0:
        return None
    end = message.find(b'"', at)
    return float(message[at + 3 : end])


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of sorted values (nearest rank, rounding down), or None."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Histogram:
    """Milliseconds counted in buckets of 0.1 ms below 100 ms and of 1 ms above; mergeable
    across processes as a plain dict."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def add(self, ms: float) -> None:
        key = int(ms * 10) if ms < 100 else int(ms) * 10
        self.counts[key] = self.counts.get(key, 0) + 1

    def merge(self, counts: Mapping[str | int, int]) -> None:
        for key, count in counts.items():
            self.counts[int(key)] = self.counts.get(int(key), 0) + count

    def __len__(self) -> int:
        return sum(self.counts.values())

    def percentile(self, q: float) -> float | None:
        """The bucket (its lower edge, ms) that holds the ``q`` quantile, or None."""
        total = len(self)
        if not total:
            return None
        rank, seen = min(total - 1, int(q * total)), 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen > rank:
                return key / 10
        raise AssertionError("unreachable")

    def summary(self) -> dict[str, Any]:
        """p50, p99 and max (ms) and the counts themselves, for a controller to merge."""
        return {
            "p50_ms": self.percentile(0.50),
            "p99_ms": self.percentile(0.99),
            "max_ms": self.percentile(1.0),
            "histogram": {str(key): count for key, count in self.counts.items()},
        }
