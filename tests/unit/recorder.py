"""A fake hub subscriber for unit tests: it records what it is handed."""

from __future__ import annotations

from typing import Any

from gateway.encoding import loads
from gateway.events import GapNotice, TopicEvent
from gateway.native.codec import CODEC


class Recorder:
    def __init__(self) -> None:
        self.frames: list[str] = []
        self.gaps: list[GapNotice] = []

    def deliver(self, event: TopicEvent) -> None:
        self.frames.append(event.encoded(CODEC)[0])

    def gap(self, notice: GapNotice) -> None:
        self.gaps.append(notice)

    def decoded(self) -> list[dict[str, Any]]:
        return [loads(frame) for frame in self.frames]
