"""The Redis relay that carries a standby's published events to the lease holder
(gateway/relay.py), on a real Redis: in arrival order, each taken by one session only (a new
holder does not publish again what the last one took), nothing older than the publish wait, and
a stream of bounded length."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from gateway.errors import GatewayError
from gateway.relay import RedisRelay
from tests.conftest import eventually
from tests.redis_server import forget


@pytest.fixture
def relay_key(redis_url: str) -> Iterator[str]:
    slot = f"relay_{secrets.token_hex(4)}"
    yield f"rtgw:{slot}:relay"
    forget(redis_url, f"rtgw:{slot}")


@contextlib.asynccontextmanager
async def taking(relay: RedisRelay, taken: list[bytes]) -> AsyncIterator[None]:
    """A holder's session: ``relay.take`` appends what it emits to ``taken``."""

    async def emit(content: bytes) -> None:
        taken.append(content)

    task = asyncio.create_task(relay.take(emit))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def length(redis_url: str, key: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.xlen(key))
    finally:
        client.close()


async def test_events_are_taken_in_order_once_across_sessions(
    redis_url: str, relay_key: str
) -> None:
    standby = RedisRelay(redis_url, relay_key, expire_s=5.0, block_s=0.2)
    holder, next_holder = (RedisRelay(redis_url, relay_key, 5.0, block_s=0.2) for _ in "ab")
    try:
        await standby.send(b"before any holder")  # waits for one, within the publish wait
        first: list[bytes] = []
        async with taking(holder, first):
            await eventually(lambda: len(first) == 1)
            for n in range(3):
                await standby.send(b"%d" % n)
            await standby.send(b"batch a", b"batch b")  # one round trip, an entry each
            await eventually(lambda: len(first) == 6)
        assert first == [b"before any holder", b"0", b"1", b"2", b"batch a", b"batch b"]
        assert length(redis_url, relay_key) == 0  # taken means deleted

        await standby.send(b"between holders")
        second: list[bytes] = []
        async with taking(next_holder, second):
            await eventually(lambda: len(second) == 1)
            await standby.send(b"3")
            await eventually(lambda: len(second) == 2)
            await asyncio.sleep(0.5)  # anything taken twice would have arrived by now
        assert second == [b"between holders", b"3"]
    finally:
        await standby.close()


async def test_two_sessions_reading_at_once_never_both_take_an_event(
    redis_url: str, relay_key: str
) -> None:
    standby = RedisRelay(redis_url, relay_key, expire_s=5.0, block_s=0.2)
    first: list[bytes] = []
    second: list[bytes] = []
    try:
        async with (
            taking(RedisRelay(redis_url, relay_key, 5.0, block_s=0.2), first),
            taking(RedisRelay(redis_url, relay_key, 5.0, block_s=0.2), second),
        ):
            sent = [b"%d" % n for n in range(200)]
            for content in sent:
                await standby.send(content)
            await eventually(lambda: len(first) + len(second) >= len(sent), 10.0)
            await asyncio.sleep(0.5)  # anything taken twice would have arrived by now
        assert sorted(first + second) == sorted(sent)
        assert first == sorted(first, key=sent.index)  # each in arrival order
        assert second == sorted(second, key=sent.index)
    finally:
        await standby.close()


async def test_a_new_holder_skips_events_older_than_the_publish_wait(
    redis_url: str, relay_key: str
) -> None:
    standby = RedisRelay(redis_url, relay_key, expire_s=0.3, block_s=0.2)
    try:
        await standby.send(b"given up")
        await asyncio.sleep(0.6)  # its request has failed by now
        await standby.send(b"waiting")
        taken: list[bytes] = []
        async with taking(RedisRelay(redis_url, relay_key, 0.3, block_s=0.2), taken):
            await eventually(lambda: len(taken) == 1)
            await asyncio.sleep(0.3)
        assert taken == [b"waiting"]
    finally:
        await standby.close()


async def test_the_stream_is_bounded_and_an_absent_redis_is_not_ready(
    redis_url: str, relay_key: str
) -> None:
    standby = RedisRelay(redis_url, relay_key, expire_s=5.0, max_len=10)
    try:
        for n in range(500):
            await standby.send(b"%d" % n)
        assert length(redis_url, relay_key) < 500  # trimmed (approximately) to max_len
    finally:
        await standby.close()
    away = RedisRelay("redis://127.0.0.1:1/0", relay_key, expire_s=5.0, block_s=0.2)
    with pytest.raises(GatewayError) as refused:
        await away.send(b"x")
    assert refused.value.code == "not_ready"
    await away.close()
