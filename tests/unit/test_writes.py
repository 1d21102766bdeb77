"""gateway.writes: the hub holds transports' writes while it hands out a batch of several
publications, and releases every holder once, in order, when the batch is handed out."""

from __future__ import annotations

from pathlib import Path

from gateway.auth import AuthConfig, Verifier
from gateway.bus.base import Publication, Target
from gateway.channels import load_channels
from gateway.connection import Connection
from gateway.encoding import loads
from gateway.events import TopicEvent
from gateway.history import History
from gateway.hub import Hub, Since
from gateway.limits import Limits
from gateway.native.session import RENDERER, NativeSession
from gateway.publish import MessagePayload
from gateway.session import Send, Subscribe
from gateway.writes import HELD, HeldWrites
from tests.unit.recorder import Recorder

CHANNELS = load_channels(Path(__file__).resolve().parents[2] / "channels")


class Holding(Recorder):
    """A subscriber that holds what it is handed while ``HELD`` holds, as a transport does."""

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name, self.log, self.held = name, log, 0

    def deliver(self, event: TopicEvent) -> None:
        super().deliver(event)
        if HELD.holding:
            if not self.held:
                HELD.held(self)
            self.held += 1

    def release(self) -> None:
        self.log.append(f"{self.name}:{self.held}")
        self.held = 0


def batch(*offsets: int) -> list[Publication]:
    return [Publication(offset, 0.0, (Target("orders", "orders",
                                              MessagePayload(b'{"n":%d}' % offset)),))
            for offset in offsets]


def test_a_batch_is_held_and_each_holder_released_once_at_its_end() -> None:
    hub, log = Hub(), []
    first, second = Holding("first", log), Holding("second", log)
    hub.subscribe(first, "orders", "orders", None, None)
    hub.subscribe(second, "orders", "orders", None, None)
    hub.receive(batch(1, 2, 3))
    assert log == ["first:3", "second:3"]
    assert not HELD.holding
    assert [frame["offset"] for frame in first.decoded()] == [1, 2, 3]


def test_a_batch_of_one_is_written_as_it_goes() -> None:
    hub, log = Hub(), []
    subscriber = Holding("only", log)
    hub.subscribe(subscriber, "orders", "orders", None, None)
    hub.receive(batch(1))
    assert log == [] and subscriber.held == 0 and len(subscriber.frames) == 1


class FakeTransport:
    """A fake of the direct socket's holding: what it is sent while ``HELD`` holds, it holds
    until released; ``writes`` are what reached the socket, one list per write."""

    def __init__(self) -> None:
        self.writes: list[list[str]] = []
        self.held: list[str] | None = None

    def send_now(self, frame: str, wire: bytes | None = None) -> bool:
        if not HELD.holding:
            self.writes.append([frame])
        elif self.held is None:
            self.held = [frame]
            HELD.held(self)
        else:
            self.held.append(frame)
        return True

    def release(self) -> None:
        assert self.held is not None
        self.writes.append(self.held)
        self.held = None

    async def send_text(self, frame: str) -> None:
        raise AssertionError("every frame fits: none is queued")

    async def close(self, code: int, reason: str) -> None:
        raise AssertionError("not closed")


def test_a_resume_writes_its_answer_and_backlog_at_once_before_live_events() -> None:
    hub, transport = Hub(History(clock=lambda: 0.0)), FakeTransport()  # kept as of time 0
    hub.receive(batch(1, 2, 3))
    limits = Limits()
    connection = Connection(
        NativeSession(CHANNELS, limits, "c"), transport, limits, hub,
        Verifier(AuthConfig(hs256_secret="x" * 32)), "c",
    )
    since = Since(*hub.offset_and_epoch(1))
    connection._subscribe(Subscribe(  # noqa: SLF001 - what a subscribe frame with since leads to
        "orders", "orders", "orders", None, since, RENDERER, lambda _: [Send('{"answer":1}')]
    ))
    hub.receive(batch(4))
    assert not HELD.holding
    assert [[loads(frame).get("offset") for frame in write] for write in transport.writes] == [
        [None, 2, 3], [4]
    ]


def test_a_hold_inside_a_hold_leaves_the_release_to_the_outer_one() -> None:
    held, log = HeldWrites(), []
    holder = Holding("h", log)
    assert held.hold()
    assert not held.hold()
    held.held(holder)
    assert held.holding and log == []
    held.release()
    assert not held.holding and log == ["h:0"]
