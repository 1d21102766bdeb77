"""The composition root of one gateway process: source -> router -> bus -> hub -> connections.
It builds the parts, owns the source's task, and is the source's keeper and gap sink; the parts
do the work. Endpoints build their own sessions and reach the parts through narrow dependencies
(gateway/transport/deps.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from types import TracebackType

from gateway.auth import AuthConfig, Verifier
from gateway.bus.base import ROLES, Bus
from gateway.bus.memory import MemoryBus
from gateway.changes import Item
from gateway.channels import ChannelSet
from gateway.connection import Connections
from gateway.enrich import Enrichment
from gateway.errors import ConfigError, GatewayError
from gateway.history import History
from gateway.hub import Hub
from gateway.limits import ConnectionCounter, Limits
from gateway.publish import Publisher, Receipts
from gateway.roles import Roles
from gateway.router import Router
from gateway.settings import Settings
from gateway.sources.base import Source
from gateway.tasks.base import TaskQueue

log = logging.getLogger("rtgw.node")
BatchObserver = Callable[[Sequence[Item]], None]


class Node:
    """One gateway process. Use as an async context manager: entering starts the bus and the
    source, leaving closes every client with 1012 (reconnect and resume) and stops them.
    It is the source's ``Keeper``: its hub's history decides how far the slot is confirmed."""

    def __init__(
        self,
        settings: Settings,
        channels: ChannelSet,
        source: Source,
        bus: Bus | None = None,
        observe: BatchObserver | None = None,
        enrichment: Enrichment | None = None,
        roles: Roles | None = None,
        tasks: TaskQueue | None = None,
    ) -> None:
        self.settings = settings
        self.channels = channels
        self.source = source
        self.bus: Bus = bus if bus is not None else MemoryBus()
        self.hub = Hub(
            History(settings.history_size, settings.history_total, settings.history_age_s),
            receipts=Receipts(),
            interest=self.bus,
            roles=roles,
            archive=self.bus.archive,
        )
        self.bus.attach(self.hub)
        self.bus.watch(self._bus_changed)
        self.enrichment = enrichment
        self.roles = roles
        self.tasks = tasks  # the channels' tasks, enqueued in the router's path
        self.router = Router(
            channels, self.bus, enrichment, None if tasks is None else tasks.enqueue, observe
        )
        self.publisher = Publisher(self._emit, self.hub.receipts)
        try:
            self.verifier = Verifier(
                AuthConfig(
                    hs256_secret=settings.jwt_secret,
                    jwks_url=settings.jwks_url,
                    audience=settings.jwt_audience,
                    algorithms=settings.jwt_algorithms,
                    scope_claims=settings.scope_claims,
                ),
                roles,
            )
        except ValueError as exc:
            raise ConfigError(f"JWT settings: {exc}") from None
        limits = Limits(
            max_frame_bytes=settings.max_frame_bytes,
            max_outbox_bytes=settings.max_outbox_bytes,
            max_subscriptions=settings.max_subscriptions,
            auth_timeout_s=settings.auth_timeout_s,
            max_messages_per_s=settings.max_messages_per_s,
            idle_timeout_s=settings.idle_timeout_s,
        )
        self.connections = Connections(self.hub, self.verifier, limits, roles)
        self.addresses = ConnectionCounter(settings.max_connections_per_ip)
        self._source_task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return (
            self.streaming() and self.hub.caught_up.is_set()
            and not self.connections.draining and self.connections.refusing is None
        )

    def streaming(self) -> bool:
        """Whether changes flow to this node right now: from its source, or (with a bus that
        keeps history for every node) from the bus, whichever node owns the slot."""
        return self.source.streaming if self.bus.archive is None else self.bus.connected

    @property
    def slot_owner(self) -> bool:
        """Whether this node reads the source and publishes (always, with the memory bus)."""
        return self.bus.archive is None or self.source.streaming

    async def _emit(self, *contents: bytes) -> None:
        if not self.streaming():
            raise GatewayError("not_ready", "changes do not flow to this gateway right now")
        await self.source.emit(*contents)

    def _bus_changed(self, connected: bool) -> None:
        """Without its bus a node is starved: its clients reconnect elsewhere (1012) and new
        ones are turned away until it is back (the hub, which the bus tells, forgets what it
        kept: clients resume from the bus's history)."""
        if connected:
            log.info("the bus is connected: taking clients")
            self.connections.resume()
        else:
            self.connections.suspend(GatewayError("bus_unavailable"))

    # -- the source's keeper and gap sink ----------------------------------------------------

    def started(self, stream: str, after: int) -> None:
        if self.enrichment is not None:
            self.enrichment.started(stream)
        if self.tasks is not None:
            self.tasks.started(stream)
        self.bus.start(stream, after)

    def caught_up(self) -> None:
        if not self.hub.caught_up.is_set():
            log.info("history replayed from the source: subscriptions open")
        self.hub.caught_up.set()

    def oldest_needed(self) -> int | None:
        if self.bus.archive is not None:
            return self.bus.archive.oldest_needed()
        return self.hub.history.oldest_needed()

    def notify_gap(self, tables: Sequence[tuple[str, str]], reason: str) -> None:
        """The source lost changes of ``tables``: every topic of their channels gets a gap (and
        every node reads its roles again when the roles table is among them)."""
        names = {c.name for table in tables for c in self.channels.by_table.get(table, ())}
        roles = self.channels.roles
        if roles is not None and (roles.schema, roles.table) in tables:
            names.add(ROLES)
        self.bus.gap(names, reason)
        if self.enrichment is not None:  # changes to looked-up rows may be among those lost
            self.enrichment.forget()

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        await self.bus.__aenter__()
        if self.bus.archive is None:  # history is this process's: rebuilt from the slot
            self.hub.caught_up.clear()  # until the source replayed what it held
        self._source_task = asyncio.create_task(
            self.source.run(self.router, self.notify_gap, self), name="rtgw-source"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.connections.drain(self.settings.shutdown_grace_s)
        if self._source_task is not None:
            self._source_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._source_task
            if self.bus.archive is None:
                await self.source.note(self.hub.history.snapshot())  # the slot keeps the floors
        if self.enrichment is not None:
            await self.enrichment.close()
        if self.roles is not None:
            await self.roles.close()
        if self.tasks is not None:
            await self.tasks.close()
        await self.bus.__aexit__(exc_type, exc, tb)
