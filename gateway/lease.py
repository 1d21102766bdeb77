"""A Redis lease: the ``Election`` (``sources/base.py``) of an upstream that admits many
readers (Supabase Realtime), so that one gateway of several reads it at a time.

``SET <key> <token> NX PX`` takes the lease for ``takeover_s / 2``; its holder renews it every
``takeover_s / 6`` with a Lua script that extends it only while it still holds the token, and
releases it the same way when its session ends. A holder that cannot renew (Redis is away, or
another gateway holds the key) cancels its session ``takeover_s / 12`` before the lease could
expire, counted from when its last renewal was sent. A standby tries every ``takeover_s / 3``,
so after a holder dies another gateway reads the upstream within ``5/6 takeover_s`` plus its
connection. The bus's fencing token, which every owner takes anew, still guards the writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn

import redis.asyncio as redis
from redis.exceptions import RedisError

from gateway.sources.base import NotElected

log = logging.getLogger("rtgw.lease")

# KEYS: the lease. ARGV: the holder's token, then (to renew) the lease in ms.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class RedisLease:
    def __init__(self, url: str, key: str, takeover_s: float) -> None:
        self.url, self.key = url, key
        self.lease_s = takeover_s / 2
        self.renew_s = takeover_s / 6
        self.margin_s = takeover_s / 12  # the session ends this long before the lease could
        self.retry_s = takeover_s / 3

    async def hold(self, session: Callable[[], Awaitable[None]]) -> None:
        token = secrets.token_hex(16)
        client = redis.Redis.from_url(
            self.url, socket_timeout=self.renew_s, socket_connect_timeout=self.renew_s
        )
        try:
            sent = time.monotonic()
            try:
                taken = await client.set(self.key, token, nx=True, px=self._lease_ms)
            except (RedisError, OSError) as exc:
                raise NotElected(f"Redis did not answer: {exc}") from None
            if not taken:
                raise NotElected("another gateway holds the lease")
            log.info("this gateway holds the upstream's lease")
            await _first(session(), self._keep(client, token, sent + self.lease_s))
        finally:
            with contextlib.suppress(RedisError, OSError):  # a standby takes over at once
                await client.eval(_RELEASE, 1, self.key, token)
            await client.aclose()

    @property
    def _lease_ms(self) -> int:
        return max(1, round(self.lease_s * 1000))

    async def _keep(self, client: redis.Redis, token: str, valid_until: float) -> NoReturn:
        """Renew the lease until it cannot be, then raise ``NotElected`` in time."""
        why = "Redis did not answer"
        while True:
            deadline = valid_until - self.margin_s
            await asyncio.sleep(max(0.0, min(self.renew_s, deadline - time.monotonic())))
            sent = time.monotonic()
            if sent >= deadline:
                log.warning("the upstream's lease could not be renewed: %s; stopping", why)
                raise NotElected(f"the lease could not be renewed: {why}")
            try:
                async with asyncio.timeout(deadline - sent):
                    renewed = await client.eval(_RENEW, 1, self.key, token, self._lease_ms)
            except (RedisError, OSError, TimeoutError) as exc:
                why = f"Redis did not answer: {exc}" if str(exc) else "Redis did not answer"
                continue
            if not renewed:
                log.warning("another gateway holds the upstream's lease; stopping")
                raise NotElected("another gateway holds the lease")
            valid_until = sent + self.lease_s


async def _first(session: Awaitable[None], keeper: Awaitable[NoReturn]) -> None:
    """Run both until one ends; the other is cancelled; the first one's outcome is ours."""
    work, keep = asyncio.ensure_future(session), asyncio.ensure_future(keeper)
    try:
        done, _ = await asyncio.wait((work, keep), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, keep):
            task.cancel()
        await asyncio.gather(work, keep, return_exceptions=True)
    (work if work in done else keep).result()
