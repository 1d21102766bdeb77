"""The Redis lease that elects a Supabase source's reader (gateway/lease.py), on a real Redis:
one holder at a time, a release hands over at once, and a holder that cannot renew (its key
taken, or Redis not answering) ends its session before its lease could expire."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable

import pytest
import redis

from gateway.lease import RedisLease
from gateway.sources.base import NotElected
from tests.redis_server import RedisServer


class Session:
    """A source's session stand-in: it runs until cancelled, says whether it is running, and
    calls ``on_end`` as it ends."""

    def __init__(self, on_end: Callable[[], None] = lambda: None) -> None:
        self.running = asyncio.Event()
        self.ended = False
        self._on_end = on_end

    async def __call__(self) -> None:
        self.running.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.ended = True
            self._on_end()


@contextlib.asynccontextmanager
async def holding(lease: RedisLease, session: Session) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(lease.hold(session))
    try:
        async with asyncio.timeout(10):
            await session.running.wait()
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, NotElected):
            await task


def lease_key() -> str:
    return f"rtgw:lease_{secrets.token_hex(4)}:lease"


async def test_one_holder_at_a_time_and_a_release_hands_over_at_once(redis_url: str) -> None:
    key = lease_key()
    first, second = RedisLease(redis_url, key, 3.0), RedisLease(redis_url, key, 3.0)
    session = Session()
    async with holding(first, session):
        with pytest.raises(NotElected, match="another gateway holds the lease"):
            await second.hold(Session())
    assert session.ended
    taken = Session()
    async with holding(second, taken):  # released when the first session ended
        assert taken.running.is_set()
    with redis.Redis.from_url(redis_url) as client:
        assert client.exists(key) == 0


async def test_a_holder_whose_key_was_taken_ends_its_session(redis_url: str) -> None:
    key = lease_key()
    session = Session()
    async with holding(RedisLease(redis_url, key, 3.0), session) as task:
        with redis.Redis.from_url(redis_url) as client:
            client.set(key, "another", px=10_000)
        with pytest.raises(NotElected, match="another gateway holds the lease"):
            await task
        assert session.ended
        with redis.Redis.from_url(redis_url) as client:
            assert client.get(key) == b"another"  # a release never deletes another's lease
            client.delete(key)


async def test_a_holder_that_cannot_renew_ends_its_session_before_the_lease_expires(
    private_redis: RedisServer,
) -> None:
    """Redis takes no writes for longer than the lease: the holder's renewals go unanswered,
    and its session has ended while Redis still counts the lease down."""
    key = lease_key()
    with redis.Redis.from_url(private_redis.url) as client:
        left: list[int] = []  # the lease's time to live in Redis as the session ended
        session = Session(lambda: left.append(client.pttl(key)))
        async with holding(RedisLease(private_redis.url, key, 3.0), session) as task:
            client.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
            try:
                with pytest.raises(NotElected, match="could not be renewed"):
                    await task
            finally:
                client.execute_command("CLIENT", "UNPAUSE")
        assert len(left) == 1 and left[0] > 0  # the lease had not expired yet
