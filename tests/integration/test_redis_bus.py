"""The Redis bus between several buses in one process, on a real Redis: fencing, replays that
cannot duplicate, history any node resumes from (bounded by length, age and gaps), and the
loss of Redis."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Any

import pytest
import redis.asyncio as redis

from gateway.bus.base import BusUnavailable, Publication, Target
from gateway.bus.redis import RedisBus, RedisBusConfig
from gateway.channels import load_channels
from gateway.hub import Hub, Since
from gateway.publish import MessagePayload
from tests.conftest import REPO, eventually
from tests.redis_server import RedisServer, forget
from tests.unit.recorder import Recorder

STREAM = "c0ffee00"
CHANNELS = load_channels(REPO / "channels")
Buses = Callable[..., contextlib.AbstractAsyncContextManager[RedisBus]]


@pytest.fixture
async def buses(redis_url: str) -> AsyncIterator[Buses]:
    """Buses of one namespace (one database's gateways), entered."""
    namespace = f"rtgw:test_{secrets.token_hex(6)}"

    @contextlib.asynccontextmanager
    async def bus(url: str = redis_url, **config: Any) -> AsyncIterator[RedisBus]:
        async with RedisBus(RedisBusConfig(url, namespace, **config), CHANNELS) as entered:
            yield entered

    try:
        yield bus
    finally:
        forget(redis_url, namespace)


def message(position: int, committed_at: float | None = None) -> Publication:
    """An event for topic base ``orders``, committed now (or at ``committed_at``)."""
    body = b'{"n":%d}' % position
    at = time.time() if committed_at is None else committed_at
    return Publication(position, at, (Target("orders", "orders", MessagePayload(body)),))


def subscribed_hub(bus: RedisBus) -> tuple[Hub, Recorder]:
    hub = Hub(interest=bus, archive=bus)
    bus.attach(hub)
    recorder = Recorder()
    hub.subscribe(recorder, "orders", "orders", None, None)
    return hub, recorder


async def resume(hub: Hub, offset: int, epoch: str) -> tuple[bool | None, list[int]]:
    """Subscribe a new client to ``orders`` from (offset, epoch): recovered, and the ``n`` of
    the events it got back."""
    since = Since(offset, epoch)
    recall = await hub.recall("orders", "orders", since)
    recorder = Recorder()
    sub = hub.subscribe(recorder, "orders", "orders", None, since, recall)
    for event in sub.backlog:
        recorder.deliver(event)
    return sub.recovered, [event["message"]["n"] for event in recorder.decoded()]


async def test_a_deposed_publisher_cannot_publish(buses: Buses) -> None:
    async with buses() as first, buses() as second, buses() as watcher:
        hub, recorder = subscribed_hub(watcher)
        first.start(STREAM, 0)
        await watcher.settle()
        await first.publish([message(1)])
        second.start(STREAM, 0)  # took the slot: a new token
        await second.publish([message(2)])
        with pytest.raises(BusUnavailable):
            await first.publish([message(3)])
        assert not first.owner
        await second.publish([message(4)])
        await watcher.settle()
        assert [event["message"]["n"] for event in recorder.decoded()] == [1, 2, 4]


async def test_a_new_owner_replaying_the_slot_writes_and_publishes_nothing_twice(
    buses: Buses, redis_url: str
) -> None:
    async with buses() as first, buses() as second, buses() as watcher:
        hub, recorder = subscribed_hub(watcher)
        first.start(STREAM, 0)
        await watcher.settle()
        await first.publish([message(n) for n in (1, 2, 3)])
        second.start(STREAM, 0)
        await second.publish([message(n) for n in (1, 2, 3, 4)])
        await watcher.settle()
        assert [event["message"]["n"] for event in recorder.decoded()] == [1, 2, 3, 4]
        client = redis.Redis.from_url(redis_url)
        assert await client.xlen(f"{watcher.config.namespace}:h:orders") == 4
        await client.aclose()


async def test_any_node_resumes_a_client_from_the_history_in_redis(buses: Buses) -> None:
    async with buses() as owner, buses() as other:
        fresh = Hub(interest=other, archive=other)  # a node whose hub never wanted orders
        other.attach(fresh)
        owner.start(STREAM, 0)
        await owner.publish([message(n) for n in (10, 20, 30)])
        await other.settle()
        epoch = fresh.offset_and_epoch(10)[1]
        assert epoch.startswith(STREAM)
        assert await resume(fresh, 10, epoch) == (True, [20, 30])
        assert await resume(fresh, 0, epoch) == (True, [10, 20, 30])
        assert await resume(fresh, 5, "someother0") == (False, [])


class Batches:
    """A second receiver on the bus: the size of each batch it is handed."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def receive(self, batch: Sequence[Publication]) -> None:
        self.sizes.append(len(batch))

    def gap(self, channels: Collection[str] | None, reason: str) -> None:
        pass

    def start(self, stream: str, after: int) -> bool:
        return True

    def rejoin(self, stream: str, after: int) -> None:
        pass


async def test_what_one_read_of_the_bus_brings_reaches_every_subscriber_as_one_batch(
    buses: Buses,
) -> None:
    async with buses() as owner, buses() as node:
        hub, first = subscribed_hub(node)
        second = Recorder()
        hub.subscribe(second, "orders", "orders", None, None)
        batches = Batches()
        node.attach(batches)
        owner.start(STREAM, 0)
        await node.settle()
        await owner.publish([message(n) for n in range(1, 201)])
        owner.gap({"orders"}, "slot_invalidated")  # after the batch, in order
        await owner.publish([message(201)])
        await node.settle()
        for recorder in (first, second):
            assert [event["message"]["n"] for event in recorder.decoded()] == [*range(1, 202)]
            assert len(recorder.gaps) == 1
            assert recorder.gaps[0].offset == 200  # told after 200, before 201
        # every publication once (each batch's tick repeats its last position: dropped), and
        # most of them handed on together
        assert sum(batches.sizes) == 201 and max(batches.sizes) > 100


async def test_history_is_bounded_by_length_age_and_gaps(buses: Buses) -> None:
    async with buses(history_size=2) as owner:
        owner.start(STREAM, 0)
        hub, _ = subscribed_hub(owner)
        await owner.settle()
        await owner.publish([message(n) for n in (1, 2, 3)])
        await owner.settle()
        epoch = hub.offset_and_epoch(1)[1]
        assert await resume(hub, 0, epoch) == (False, [])  # 1 was trimmed
        assert await resume(hub, 1, epoch) == (True, [2, 3])
        owner.gap({"orders"}, "slot_invalidated")
        await owner.publish([message(4)])
        await owner.settle()
        assert (await resume(hub, 2, epoch))[0] is False  # the gap came after 3
        assert await resume(hub, 4, epoch) == (True, [])
    async with buses(history_age_s=0) as owner:
        owner.start(STREAM, 100)
        hub, _ = subscribed_hub(owner)
        await owner.settle()
        await owner.publish([message(101, time.time() - 60)])
        await owner.settle()
        assert (await resume(hub, 100, hub.offset_and_epoch(100)[1]))[0] is False  # too old


async def test_losing_redis_is_reported_and_so_is_its_return(buses: Buses) -> None:
    server = RedisServer()
    server.start()
    try:
        async with buses(server.url) as bus:
            heard: list[bool] = []
            bus.watch(heard.append)
            bus.start(STREAM, 0)
            await eventually(lambda: bus.connected, 10)
            server.kill()
            await eventually(lambda: not bus.connected, 10)
            with pytest.raises(BusUnavailable):
                await bus.publish([message(1)])
            server.start()  # empty: a publisher starts the stream again (its source would)
            bus.start(STREAM, 0)
            await eventually(lambda: heard[-1:] == [True] and len(heard) >= 3, 10)
            assert heard[:2] == [True, False]
    finally:
        server.close()
