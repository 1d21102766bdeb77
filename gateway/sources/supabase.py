"""Supabase Realtime as the upstream: ``postgres_changes`` for the channel tables, received with
Supabase's own Python client (``realtime``) and a service-role key.

Unlike a replication slot, Supabase Realtime cannot replay: changes made while the upstream is
disconnected are lost. So this source departs from the at-least-once contract of
``sources/base.py`` and says so: after every *re*connect it reports a gap for its channels
(``on_gap``), and their subscribers refetch. Delivery is at-most-once and in the order
Supabase sends; ids are numbered by arrival, in a position space of this process only (a
restarted gateway cannot resume its clients: there is nothing to replay from). Positions are
arrival times in microseconds (made to grow), so those of a gateway that takes over the upstream
(``Election``: several gateways on the Redis bus) follow what the previous one published. The
other gateways publish through the holder (``Relay``): their events join its queue in arrival
order, like its own.

The client gives up silently in some failure modes (its reconnect can leave a channel closed),
so it runs with ``auto_reconnect=False`` and this source supervises it: one session = one
client, one channel, every table bound; a session counts as streaming only after the real
readiness signal (``system`` "Subscribed to PostgreSQL"), and any socket loss, channel error or
close ends the session, which is retried with backoff.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn

from realtime import (
    AsyncRealtimeClient,
    PostgresChangesPayload,
    RealtimePostgresChangesListenEvent,
    RealtimeSubscribeStates,
)
from websockets.protocol import State

from gateway.changes import Change, ChangeId, Column, Item, Op, Published
from gateway.errors import GatewayError, RtgwError
from gateway.sources.base import (
    Backoff,
    ChangeSink,
    Election,
    GapSink,
    Keeper,
    Relay,
    Supervised,
    Supervisor,
    first_line,
)

log = logging.getLogger("rtgw.source.supabase")

READY_MESSAGE = "Subscribed to PostgreSQL"


class UpstreamLost(RtgwError):
    """The Supabase session ended: the socket closed, the channel errored or was closed."""


@dataclass(frozen=True, slots=True)
class SupabaseSourceConfig:
    url: str  # the project URL (https://<ref>.supabase.co), or another gateway's base URL
    service_key: str
    tables: tuple[tuple[str, str], ...]
    ready_timeout_s: float = 15.0
    max_queued: int = 10_000  # changes received but not yet handed on; more ends the session
    liveness_check_s: float = 1.0  # how often a quiet session checks its socket
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0


class SupabaseSource(Supervised):
    def __init__(
        self,
        config: SupabaseSourceConfig,
        election: Election | None = None,
        relay: Relay | None = None,
    ) -> None:
        self.config = config
        self._relay = relay
        self._supervisor = Supervisor(
            Backoff(config.backoff_initial_s, config.backoff_max_s),
            first_line,  # the client raises plain Exceptions: any of them ends a session
            log,
            "supabase upstream lost",
            election=election,
        )
        self._on_gap: GapSink | None = None
        self._last_id = 0
        self._stream_id = secrets.token_hex(4)  # positions mean nothing to another process
        self._keeper: Keeper | None = None
        self._queue: asyncio.Queue[Item | UpstreamLost] | None = None

    @property
    def lag_bytes(self) -> None:
        """Supabase Realtime keeps nothing for this source: there is no lag to report."""
        return None

    async def run(
        self, sink: ChangeSink, on_gap: GapSink | None = None, keeper: Keeper | None = None
    ) -> None:
        self._on_gap, self._keeper = on_gap, keeper
        try:
            await self._supervisor.run(lambda: self._session(sink))
        finally:
            if self._relay is not None:
                await self._relay.close()

    async def _session(self, sink: ChangeSink) -> None:
        cfg = self.config
        queue: asyncio.Queue[Item | UpstreamLost] = asyncio.Queue()
        ready = asyncio.Event()
        failures: list[str] = []

        def lost(reason: str) -> None:
            failures.append(reason)
            queue.put_nowait(UpstreamLost(reason))
            ready.set()

        def on_change(payload: PostgresChangesPayload) -> None:
            if queue.qsize() >= cfg.max_queued:
                lost(f"more than {cfg.max_queued} changes waiting")
                return
            queue.put_nowait(self._change(dict(payload["data"])))

        def on_system(payload: Any) -> None:
            if payload.extension == "postgres_changes" and payload.message == READY_MESSAGE:
                ready.set()

        def on_state(state: RealtimeSubscribeStates, error: Exception | None) -> None:
            if state != RealtimeSubscribeStates.SUBSCRIBED:
                lost(f"channel {state.value}: {error}" if error else f"channel {state.value}")

        client = AsyncRealtimeClient(
            f"{cfg.url.rstrip('/')}/realtime/v1", cfg.service_key, auto_reconnect=False
        )
        try:
            await client.connect()
            channel = client.channel("rtgw-upstream")
            for schema, table in cfg.tables:
                channel.on_postgres_changes(
                    RealtimePostgresChangesListenEvent.All, on_change, table=table, schema=schema
                )
            channel.on_system(on_system)
            await channel.subscribe(on_state)
            async with asyncio.timeout(cfg.ready_timeout_s):
                await ready.wait()
            if failures:
                raise UpstreamLost(failures[0])
            await self._stream(queue, sink, client)
        finally:
            await client.close()

    async def _stream(
        self,
        queue: asyncio.Queue[Item | UpstreamLost],
        sink: ChangeSink,
        client: AsyncRealtimeClient,
    ) -> None:
        self._supervisor.up()
        self._queue = queue
        self._last_id = max(self._last_id, _now_us())
        if self._keeper is not None:
            self._keeper.started(self._stream_id, self._last_id)
            self._keeper.caught_up()  # Supabase sends only live changes: nothing to replay
        log.info("streaming from Supabase Realtime (%d tables)", len(self.config.tables))
        if self._supervisor.sessions > 1 and self._on_gap is not None:
            self._on_gap(
                self.config.tables,
                "upstream_reconnect: the Supabase upstream reconnected; it cannot replay what "
                "was missed",
            )
        relayed = None if self._relay is None else asyncio.create_task(
            self._relay.take(lambda content: self._relayed(queue, content)), name="rtgw-relay"
        )
        try:
            await self._forward(queue, sink, client, relayed)
        finally:
            if relayed is not None:
                relayed.cancel()
                await asyncio.gather(relayed, return_exceptions=True)

    async def _forward(
        self,
        queue: asyncio.Queue[Item | UpstreamLost],
        sink: ChangeSink,
        client: AsyncRealtimeClient,
        relayed: asyncio.Task[NoReturn] | None,
    ) -> None:
        while True:
            try:
                async with asyncio.timeout(self.config.liveness_check_s):
                    item = await queue.get()
            except TimeoutError:
                if not _alive(client):  # the client can stop without telling its callbacks
                    raise UpstreamLost("the socket closed") from None
                if relayed is not None and relayed.done():
                    relayed.result()  # it ends only by a bug: raise it
                continue
            if isinstance(item, UpstreamLost):
                raise item
            batch = [item, *_drain(queue)]
            lost = next((c for c in batch if isinstance(c, UpstreamLost)), None)
            await sink([c for c in batch if not isinstance(c, UpstreamLost)])
            if lost is not None:
                raise lost

    async def emit(self, *contents: bytes) -> None:
        """Queue published events behind the changes received so far (kept in memory only):
        all of them, or none when the queue has no room; a standby hands them to the gateway
        that reads the upstream (``Relay``), which queues each one on its own."""
        queue = self._queue
        if self.streaming and queue is not None:
            self._enqueue(queue, *contents)
        elif self._relay is not None:
            await self._relay.send(*contents)
        else:
            raise GatewayError("not_ready", "the Supabase upstream is not connected")

    async def _relayed(self, queue: asyncio.Queue[Item | UpstreamLost], content: bytes) -> None:
        try:
            self._enqueue(queue, content)
        except GatewayError as exc:  # its request fails when it waited long enough
            log.warning("a relayed event was dropped: %s", exc.message)

    def _enqueue(self, queue: asyncio.Queue[Item | UpstreamLost], *contents: bytes) -> None:
        if queue.qsize() + len(contents) > self.config.max_queued:
            raise GatewayError("not_ready", f"more than {self.config.max_queued} events waiting")
        for content in contents:
            queue.put_nowait(Published(self._next_id(), int(time.time() * 1_000_000), content))

    async def note(self, history: dict[str, Any]) -> None:
        """Supabase keeps nothing to replay: a note could never reach the next process."""

    def _next_id(self) -> ChangeId:
        """Arrival order: ``ChangeId(0, n)``, so a position is simply ``n`` (the arrival time
        in microseconds, or one more than the last when the clock has not moved on)."""
        self._last_id = max(self._last_id + 1, _now_us())
        return ChangeId(0, self._last_id)

    def _change(self, data: dict[str, Any]) -> Change:
        moment = dt.datetime.fromisoformat(data["commit_timestamp"])
        commit_us = int(moment.timestamp() * 1_000_000)
        if data.get("errors"):
            log.warning("supabase change with errors on %s.%s: %s", data["schema"],
                        data["table"], data["errors"])
        columns = tuple(Column(c["name"], c["type"]) for c in data.get("columns") or ())
        numeric = [c.name for c in columns if c.type == "numeric"]
        return Change(
            id=self._next_id(),
            schema=data["schema"],
            table=data["table"],
            op=Op(getattr(data["type"], "value", data["type"])),
            commit_time_us=commit_us,
            columns=columns,
            new=_numeric_as_text(data.get("record") or None, numeric),
            old=_numeric_as_text(data.get("old_record") or None, numeric),
        )


def _now_us() -> int:
    return time.time_ns() // 1000


def _numeric_as_text(row: dict[str, Any] | None, columns: list[str]) -> dict[str, Any] | None:
    """Supabase sends numeric values as JSON numbers (jsonb), which the client reads as
    floats; rtgw's changes carry them as Postgres writes them, a string of digits. Exact up to
    15 significant digits; the scale (trailing zeros) is lost upstream."""
    if row is None or not columns:
        return row
    converted = dict(row)
    for name in columns:
        value = converted.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            converted[name] = format(Decimal(repr(value)), "f")
    return converted


def _alive(client: AsyncRealtimeClient) -> bool:
    """The client's own ``is_connected`` stays true when its listener ends on a close it does
    not report (realtime-py#236), so look at the socket and the listener themselves."""
    socket, listener = client._ws_connection, client._listen_task
    return (
        socket is not None
        and socket.state is State.OPEN
        and listener is not None
        and not listener.done()
    )


def _drain(queue: asyncio.Queue[Item | UpstreamLost]) -> Iterable[Item | UpstreamLost]:
    while not queue.empty():
        yield queue.get_nowait()
