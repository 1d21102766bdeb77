"""The composition root: source -> router -> hub -> connections. Owns every long-lived task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from types import TracebackType

from gateway.auth import AuthConfig, Verifier
from gateway.channels import ChannelSet
from gateway.client import Connection, Limits, Receive, Transport
from gateway.errors import GatewayError
from gateway.hub import Hub
from gateway.pipeline import Router
from gateway.settings import Settings
from gateway.sources.base import Source
from gateway.sources.inspect import warn_about_identity

log = logging.getLogger("rtgw.node")


class Node:
    """One gateway process. Use as an async context manager: entering starts the source,
    leaving closes every client with 1012 (reconnect and resume) and stops the source."""

    def __init__(self, settings: Settings, channels: ChannelSet, source: Source) -> None:
        self.settings = settings
        self.channels = channels
        self.source = source
        self.hub = Hub(settings.history_size, settings.max_idle_topics)
        self.router = Router(channels, self.hub)
        self.verifier = Verifier(
            AuthConfig(
                hs256_secret=settings.jwt_secret,
                jwks_url=settings.jwks_url,
                audience=settings.jwt_audience,
                algorithms=settings.jwt_algorithms,
                scope_claims=settings.scope_claims,
            )
        )
        self.limits = Limits(
            max_frame_bytes=settings.max_frame_bytes,
            max_outbox_bytes=settings.max_outbox_bytes,
            max_subscriptions=settings.max_subscriptions,
            auth_timeout_s=settings.auth_timeout_s,
        )
        self.connections: set[Connection] = set()
        self._source_task: asyncio.Task[None] | None = None
        self._draining = False
        self._all_closed = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.source.streaming and not self._draining

    async def __aenter__(self) -> Node:
        if self.settings.source == "postgres" and self.settings.database_url is not None:
            await warn_about_identity(self.settings.database_url, self.channels)
        self._source_task = asyncio.create_task(
            self.source.run(self.router, self.notify_gap), name="rtgw-source"
        )
        return self

    def notify_gap(self, tables: Sequence[tuple[str, str]], reason: str) -> None:
        """The source lost changes of ``tables``: every topic of their channels gets a gap."""
        names = {c.name for table in tables for c in self.channels.by_table.get(table, ())}
        reset = self.hub.notify_gap(names, reason)
        log.warning("gap on %d topics of %d channels: %s", reset, len(names), reason)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.drain()
        if self._source_task is not None:
            self._source_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._source_task

    async def drain(self, grace_s: float = 5.0) -> None:
        """Close every client with 1012 and wait (up to ``grace_s``) for their writers."""
        self._draining = True
        for connection in list(self.connections):
            connection.fail(GatewayError("shutting_down", "the gateway is restarting"))
        if self.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._all_closed.wait()

    async def serve_connection(
        self,
        transport: Transport,
        receive: Receive,
        bearer: str | None,
    ) -> None:
        """Run one native-protocol connection to its end."""
        connection = Connection(
            transport, verifier=self.verifier, channels=self.channels, hub=self.hub,
            limits=self.limits,
        )
        if self._draining:
            connection.fail(GatewayError("shutting_down"))
        self.connections.add(connection)
        self._all_closed.clear()
        try:
            await connection.serve(receive, bearer)
        finally:
            self.connections.discard(connection)
            if not self.connections:
                self._all_closed.set()
