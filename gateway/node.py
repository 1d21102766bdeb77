"""The composition root: source -> router -> hub -> connections. Owns every long-lived task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any

from gateway import logs, metrics
from gateway.auth import AuthConfig
from gateway.changes import Item
from gateway.channels import ChannelSet
from gateway.client import Connection
from gateway.connection import BaseConnection, Limits, Receive, Transport
from gateway.encoding import dumps
from gateway.errors import ConfigError, GatewayError
from gateway.history import History
from gateway.hub import Hub
from gateway.limits import ConnectionCounter
from gateway.phoenix_session import PhoenixSession
from gateway.pipeline import Router
from gateway.protocol.phoenix import Serializer
from gateway.publish import Envelope, Receipt, Receipts
from gateway.settings import Settings
from gateway.sources.base import Source

log = logging.getLogger("rtgw.node")
PUBLISH_WAIT_S = 5.0  # how long POST /v1/publish waits for its event to come back


class Node:
    """One gateway process. Use as an async context manager: entering starts the source,
    leaving closes every client with 1012 (reconnect and resume) and stops the source.
    It is the source's ``Keeper``: its hub's history decides how far the slot is confirmed."""

    def __init__(self, settings: Settings, channels: ChannelSet, source: Source) -> None:
        self.settings = settings
        self.channels = channels
        self.source = source
        self.hub = Hub(
            History(settings.history_size, settings.history_total, settings.history_age_s)
        )
        self.receipts = Receipts()
        self.router = Router(channels, self.hub, self.receipts)
        self._streams = 0  # source sessions started
        try:
            self.verifier = metrics.MeteredVerifier(
                AuthConfig(
                    hs256_secret=settings.jwt_secret,
                    jwks_url=settings.jwks_url,
                    audience=settings.jwt_audience,
                    algorithms=settings.jwt_algorithms,
                    scope_claims=settings.scope_claims,
                )
            )
        except ValueError as exc:
            raise ConfigError(f"JWT settings: {exc}") from None
        self.limits = Limits(
            max_frame_bytes=settings.max_frame_bytes,
            max_outbox_bytes=settings.max_outbox_bytes,
            max_subscriptions=settings.max_subscriptions,
            auth_timeout_s=settings.auth_timeout_s,
            max_messages_per_s=settings.max_messages_per_s,
            idle_timeout_s=settings.idle_timeout_s,
        )
        self.connections: set[BaseConnection] = set()
        self.addresses = ConnectionCounter(settings.max_connections_per_ip)
        self._transports: dict[BaseConnection, str] = {}
        self.metrics_registry = metrics.node_registry(self)
        self._source_task: asyncio.Task[None] | None = None
        self._draining = False
        self._all_closed = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.source.streaming and self.hub.caught_up.is_set() and not self._draining

    @property
    def draining(self) -> bool:
        return self._draining

    def connection_counts(self) -> dict[str, tuple[int, int]]:
        """Open connections and their subscriptions, by transport."""
        counts: dict[str, tuple[int, int]] = {"native": (0, 0)}
        for connection, transport in self._transports.items():
            open_, subscribed = counts.get(transport, (0, 0))
            counts[transport] = (open_ + 1, subscribed + connection.subscription_count)
        return counts

    async def _sink(self, items: Sequence[Item]) -> None:
        metrics.record_changes(items)
        await self.router(items)
        metrics.schedule_delivery_observation(items)

    # -- the source's keeper ---------------------------------------------------------------

    def started(self, stream: str, after: int) -> None:
        self._streams += 1
        if not self.hub.start(stream, after) and self._streams > 1:
            told = self.hub.notify_gap(None, "stream_changed: the database's system or timeline "
                                       "changed (a failover or a restore)")
            log.warning("the source streams another database history: gap on %d topics", told)

    def caught_up(self) -> None:
        if not self.hub.caught_up.is_set():
            log.info("history replayed from the source: subscriptions open")
        self.hub.caught_up.set()

    def oldest_needed(self) -> int | None:
        return self.hub.history.oldest_needed()

    # -- publishing --------------------------------------------------------------------------

    async def publish(
        self, channel: str, base: str, message: dict[str, Any]
    ) -> tuple[str, Receipt]:
        """Send an application event (``message`` gets an ``id``) through the source and wait
        until it was published. Returns its id and receipt."""
        event_id = str(uuid.uuid4())
        body = dumps({"id": event_id, **message})
        arrived = self.receipts.expect(event_id)
        try:
            await self.source.emit(Envelope(event_id, channel, base, body).encode())
            try:
                async with asyncio.timeout(PUBLISH_WAIT_S):
                    return event_id, await arrived
            except TimeoutError:
                raise GatewayError(
                    "not_ready",
                    f"event {event_id} was stored but has not come back from the source yet; "
                    "it will be delivered",
                ) from None
        finally:
            self.receipts.forget(event_id)

    async def __aenter__(self) -> Node:
        self.hub.caught_up.clear()  # until the source replayed what it held
        self._source_task = asyncio.create_task(
            self.source.run(self._sink, self.notify_gap, self), name="rtgw-source"
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
        await self.drain(self.settings.shutdown_grace_s)
        if self._source_task is not None:
            self._source_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._source_task
            # The slot holds the history: add its floors.
            await self.source.note(self.hub.history.snapshot())

    async def drain(self, grace_s: float = 5.0) -> None:
        """Close every client with 1012 and wait (up to ``grace_s``) for their writers."""
        if not self._draining and self.connections:
            log.info("draining: closing %d connection(s) with 1012", len(self.connections))
        self._draining = True
        for connection in list(self.connections):
            connection.fail(GatewayError("shutting_down", "the gateway is restarting"))
        if self.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._all_closed.wait()

    def serve_connection(
        self,
        transport: Transport,
        receive: Receive,
        bearer: str | None,
        transport_name: str = "native",
    ) -> Coroutine[Any, Any, None]:
        """Run one native-protocol connection to its end (await the coroutine returned)."""
        connection = Connection(
            transport, verifier=self.verifier, channels=self.channels, hub=self.hub,
            limits=self.limits, bearer=bearer,
        )
        return self._run(connection, receive, transport_name)

    def serve_phoenix(
        self, transport: Transport, receive: Receive, vsn: str
    ) -> Coroutine[Any, Any, None]:
        """Run one Supabase-compatible (Phoenix) socket to its end (await the coroutine
        returned). ``vsn`` was checked."""
        session = PhoenixSession(
            transport, serializer=Serializer(vsn), verifier=self.verifier,
            channels=self.channels, hub=self.hub, limits=self.limits,
            api_key=self.settings.api_key, live=lambda: self.source.streaming,
        )
        return self._run(session, receive, "phoenix")

    async def _run(
        self, connection: BaseConnection, receive: Receive, transport_name: str
    ) -> None:
        token = logs.connection_id.set(connection.id)
        log.info("connection opened (%s)", transport_name)
        if self._draining:
            connection.fail(GatewayError("shutting_down"))
        self.connections.add(connection)
        self._transports[connection] = transport_name
        self._all_closed.clear()
        try:
            await connection.serve(receive)
        finally:
            self.connections.discard(connection)
            del self._transports[connection]
            if not self.connections:
                self._all_closed.set()
            code, reason = connection.closed_with or (None, "client_left")
            metrics.record_disconnect(transport_name, code, reason)
            log.info("connection closed: %s (%s)", code or "by the client", reason)
            logs.connection_id.reset(token)
