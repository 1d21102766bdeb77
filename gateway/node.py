"""The composition root: source -> router -> hub -> connections. Owns every long-lived task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from types import TracebackType

from gateway.auth import AuthConfig, Verifier
from gateway.channels import ChannelSet
from gateway.client import Connection
from gateway.connection import BaseConnection, Limits, Receive, Transport
from gateway.errors import GatewayError
from gateway.hub import Hub
from gateway.phoenix_session import PhoenixSession
from gateway.pipeline import Router
from gateway.protocol.phoenix import Serializer
from gateway.settings import Settings
from gateway.sources.base import GapReporter, Source

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
        if isinstance(source, GapReporter):
            source.report_gaps_to(self.hub.notify_gap)
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
            idle_timeout_s=settings.idle_timeout_s,
        )
        self.connections: set[BaseConnection] = set()
        self._source_task: asyncio.Task[None] | None = None
        self._draining = False
        self._all_closed = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.source.streaming and not self._draining

    async def __aenter__(self) -> Node:
        self._source_task = asyncio.create_task(self.source.run(self.router), name="rtgw-source")
        return self

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
        await self._run(connection, connection.serve(receive, bearer))

    async def serve_phoenix(self, transport: Transport, receive: Receive, vsn: str) -> None:
        """Run one Supabase-compatible (Phoenix) socket to its end. ``vsn`` was checked."""
        session = PhoenixSession(
            transport, serializer=Serializer(vsn), verifier=self.verifier,
            channels=self.channels, hub=self.hub, limits=self.limits,
            api_key=self.settings.api_key, live=lambda: self.source.streaming,
        )
        await self._run(session, session.serve(receive))

    async def _run(self, connection: BaseConnection, serving: Awaitable[None]) -> None:
        if self._draining:
            connection.fail(GatewayError("shutting_down"))
        self.connections.add(connection)
        self._all_closed.clear()
        try:
            await serving
        finally:
            self.connections.discard(connection)
            if not self.connections:
                self._all_closed.set()
