"""A Redis relay: how a standby publishes through the gateway that holds the upstream's lease
(``lease.py``), the ``Relay`` of a Supabase source (``sources/base.py``).

A standby appends the event to the stream ``rtgw:<slot>:relay`` (``XADD``, at most
``max_len`` entries kept). The holder's session reads it (``XREAD BLOCK``), deletes what it
read (``XDEL``) and only then hands each event on, in arrival order, behind the changes received
so far: an event is handed on by the one session whose ``XDEL`` removed it, so it is never
published twice, even if two sessions ever read at once. A new holder starts with the events
appended within the last ``expire_s`` (the time a publish waits for its receipt, counted by
Redis's clock): older ones were given up by their requests. An event that a holder took but
could not publish before it died is lost; its request fails with ``not_ready``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import redis.asyncio as redis
from redis.exceptions import RedisError

from gateway.errors import GatewayError

log = logging.getLogger("rtgw.relay")

_FIELD = b"c"  # the event's content


def _end_if_cancelled() -> None:
    """A cancellation that a client library turned into a timeout or an empty read still counts
    on the task: end the session, never loop on after being told to stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class RedisRelay:
    def __init__(
        self, url: str, key: str, expire_s: float, max_len: int = 10_000, block_s: float = 1.0
    ) -> None:
        self.url, self.key = url, key
        self.expire_ms = round(expire_s * 1000)
        self.max_len = max_len
        self.block_s = block_s
        self.retry_s = block_s
        self._sender: redis.Redis | None = None

    async def send(self, *contents: bytes) -> None:
        """Hand published events to the holder, in order, in one round trip (an entry each).
        ``not_ready`` when Redis does not take them."""
        if self._sender is None:
            self._sender = redis.Redis.from_url(
                self.url, socket_timeout=self.block_s, socket_connect_timeout=self.block_s
            )
        try:
            async with self._sender.pipeline(transaction=True) as adding:
                for content in contents:
                    adding.xadd(self.key, {_FIELD: content}, maxlen=self.max_len, approximate=True)
                await adding.execute()
        except (RedisError, OSError) as exc:
            raise GatewayError(
                "not_ready", f"the event could not be handed to the upstream's reader: {exc}"
            ) from None

    async def close(self) -> None:
        if self._sender is not None:
            await self._sender.aclose()
            self._sender = None

    async def take(self, emit: Callable[[bytes], Awaitable[None]]) -> NoReturn:
        """Hand on (``emit``) every event sent from now on and those sent within the last
        ``expire_s``, each once, until cancelled; reconnects while Redis is away."""
        client = redis.Redis.from_url(
            self.url, socket_timeout=self.block_s * 2, socket_connect_timeout=self.block_s
        )
        try:
            after: str | None = None
            while True:
                try:
                    if after is None:
                        seconds, micros = await client.time()
                        after = f"{max(0, seconds * 1000 + micros // 1000 - self.expire_ms)}-0"
                    after = await self._take_some(client, after, emit)
                except (RedisError, OSError) as exc:  # TimeoutError is an OSError
                    _end_if_cancelled()
                    log.warning("the relay of published events is unavailable: %s", exc)
                    await asyncio.sleep(self.retry_s)
                _end_if_cancelled()
        finally:
            await client.aclose()

    async def _take_some(
        self, client: redis.Redis, after: str, emit: Callable[[bytes], Awaitable[None]]
    ) -> str:
        """Take what follows ``after`` (waiting up to ``block_s``); returns the last id taken."""
        reply: Any = await client.xread(
            {self.key: after}, count=100, block=round(self.block_s * 1000)
        )
        entries: list[tuple[bytes, dict[bytes, bytes]]] = [
            entry for _, stream in reply for entry in stream
        ]
        if not entries:
            return after
        async with client.pipeline(transaction=False) as deleting:
            for entry_id, _ in entries:
                deleting.xdel(self.key, entry_id)
            deleted = await deleting.execute()
        for (_, fields), mine in zip(entries, deleted, strict=True):
            content = fields.get(_FIELD)
            if mine and content is not None:  # a session that deleted it, and only that one
                await emit(content)
        return entries[-1][0].decode()
