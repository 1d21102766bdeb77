"""The single-process bus: publications go straight to the attached receivers, in the
publishing task. Every receiver gets every target, so interest is only counted."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from gateway.bus.base import Archive, Publication, Receiver


class MemoryBus:
    archive: Archive | None = None
    connected = True

    def __init__(self) -> None:
        self._receivers: list[Receiver] = []
        self.wanted: dict[str, int] = {}  # base -> how many times it is wanted

    def attach(self, receiver: Receiver) -> None:
        self._receivers.append(receiver)

    def watch(self, changed: Callable[[bool], None]) -> None:
        pass  # never disconnected

    def want(self, base: str) -> None:
        self.wanted[base] = self.wanted.get(base, 0) + 1

    def unwant(self, base: str) -> None:
        count = self.wanted.get(base, 0) - 1
        if count > 0:
            self.wanted[base] = count
        else:
            self.wanted.pop(base, None)

    async def settle(self) -> None:
        return None

    async def publish(self, batch: Sequence[Publication]) -> None:
        for receiver in self._receivers:
            receiver.receive(batch)

    def gap(self, channels: Collection[str] | None, reason: str) -> None:
        for receiver in self._receivers:
            receiver.gap(channels, reason)

    def start(self, stream: str, after: int) -> None:
        for receiver in self._receivers:
            receiver.start(stream, after)

    async def __aenter__(self) -> MemoryBus:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None
