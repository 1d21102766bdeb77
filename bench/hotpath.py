"""The per-change path in process, without sockets: ``python -m bench.hotpath``.

Feeds pgoutput payloads (the bytes the stream hands out) for ``--changes`` notifications through
what ``rtgw serve`` runs for each of them: parse and decode (``Decoder``), route (``Router``,
with the enrichment step that the demo channels' lookups bring), the memory bus, the hub with
its history, the native codec, each subscriber's connection (``Connection`` with a
``NativeSession``) up to the transport's synchronous send, the delivery
latency metric and the slot's confirm (``History.oldest_needed``). Only the socket write and
the event loop's wake-up per transaction are left out (``bench.profile`` samples those in a
real server). ``--users`` subscribers each hold their own partition; ``--per-transaction``
changes go in one transaction (1: the notification widget; 100: "notify everyone in a
project").

Prints microseconds per change (noisy on a shared machine). Instruction counts do not depend on
the load: run it under callgrind for figures that do not move between runs::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/hot.out \\
        .venv/bin/python -m bench.hotpath --changes 5000 --pool 5000 --warmup 6000 \\
        --history-total 5000

and the same with ``--changes 1000``: the difference of the two instruction counts, divided by
4,000, is the cost of one change (building the payloads, start-up and warm-up cancel out).

``--gc-pauses`` prints the cyclic collector's runs while the changes are fed (each stops the
loop: the longest adds to a delivery's latency), e.g. with ``--changes 600000 --warmup 0``
and ``--gc-thresholds 50000,20,20`` against the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import uvloop

from gateway import metrics
from gateway.app import build_enrichment
from gateway.auth import AuthConfig, Verifier
from gateway.bus.base import Publication
from gateway.bus.memory import MemoryBus
from gateway.changes import POSTGRES_EPOCH_MICROS, Change, Item
from gateway.channels import load_channels
from gateway.connection import Connection
from gateway.events import TopicEvent
from gateway.history import History
from gateway.hub import Hub
from gateway.limits import Limits
from gateway.native.codec import CODEC
from gateway.native.session import RENDERER, NativeSession
from gateway.router import ChannelPayload, Router
from gateway.server import GC_THRESHOLDS
from gateway.session import Subscribe
from gateway.settings import Settings
from gateway.sources.postgres.decoder import Decoder
from gateway.sources.postgres.messages import INSERT, Commit, Message, parse_message
from gateway.sources.postgres.types import TypeRegistry

REPO = Path(__file__).resolve().parent.parent
UNUSED_DSN = "postgresql://127.0.0.1:1/unused"  # lookups would read it; notifications have none
OID = 16400
COLUMNS = (("id", 20), ("user_id", 2950), ("title", 25), ("body", 25), ("read", 16),
           ("created_at", 1184))


class CountingTransport:
    """Takes every frame at once, as an open socket with room does; counts the bytes."""

    def __init__(self) -> None:
        self.written = 0

    def send_now(self, frame: str, wire: bytes | None = None) -> bool:
        self.written += len(wire) if wire is not None else len(frame)
        return True

    async def send_text(self, frame: str) -> None:
        self.written += len(frame)

    async def close(self, code: int, reason: str) -> None:
        return None


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def relation() -> bytes:
    body = b"".join(bytes([name == "id"]) + _cstr(name) + struct.pack(">Ii", oid, -1)
                    for name, oid in COLUMNS)
    return (b"R" + struct.pack(">I", OID) + _cstr("public") + _cstr("notifications") + b"f"
            + struct.pack(">h", len(COLUMNS)) + body)


def insert(row_id: int, user: str) -> bytes:
    values = (str(row_id), user, f"Notification {row_id}", "You have a new message " * 4, "f",
              "2026-11-30 05:00:00.123456+00")
    encoded = [struct.pack(">h", len(values))]
    for value in values:
        raw = value.encode()
        encoded.append(b"t" + struct.pack(">i", len(raw)) + raw)
    return b"I" + struct.pack(">I", OID) + b"N" + b"".join(encoded)


def transactions(users: list[str], changes: int, per: int, start: int) -> Iterator[list[bytes]]:
    """Payloads of ``changes`` inserts, ``per`` to a transaction, round-robin over users."""
    lsn = 0x1000000 + start * 256
    commit_us = int(time.time() * 1e6) - POSTGRES_EPOCH_MICROS
    for first in range(start, start + changes, per):
        lsn += 256 * per
        payloads = [b"B" + struct.pack(">QqI", lsn, commit_us, 700 + first)]
        payloads += [insert(i, users[i % len(users)]) for i in range(first, first + per)]
        payloads.append(b"C" + struct.pack(">BQQq", 0, lsn, lsn + 64, commit_us))
        yield payloads


class Rig:
    """Decoder → router → memory bus → hub (history) → connections, as ``rtgw serve`` has them."""

    def __init__(self, users: list[str], history_total: int) -> None:
        self.decoder = Decoder(TypeRegistry())
        self.channels = channels = load_channels(REPO / "channels")
        self.bus = MemoryBus()
        defaults = Settings()
        history = History(defaults.history_size, history_total, defaults.history_age_s)
        self.hub = Hub(history, interest=self.bus)
        self.bus.attach(self.hub)
        # The demo channels look customers up for orders, so ``rtgw serve`` prepares each batch
        # for enrichment; notifications need no lookup, so the database is never asked.
        enrichment = build_enrichment(Settings(database_url=UNUSED_DSN), channels)
        self.router = Router(channels, self.bus, enrichment,
                             published=metrics.schedule_delivery_observation)
        self.transports: list[CountingTransport] = []
        verifier = Verifier(AuthConfig(hs256_secret="hotpath-" + "x" * 32))
        limits = Limits()
        channel = channels.by_name["my_notifications"]
        for user in users:
            transport = CountingTransport()
            session = NativeSession(channels, limits, "c")
            connection = Connection(session, transport, limits, self.hub, verifier, "c")
            base = channel.topic_base_for({"user_id": user})
            assert base is not None
            connection._subscribe(  # noqa: SLF001 - what a subscribe frame leads to
                Subscribe(base, channel.name, base, None, None, RENDERER, lambda _: ())
            )
            self.transports.append(transport)
        self.decoder.feed(parse_message(relation()))

    def decode(self, payload: bytes) -> tuple[Message | None, list[Item]]:
        """One payload's message (None for an Insert) and items, as the source's pump reads
        them."""
        if payload[:1] == INSERT:
            return None, self.decoder.insert(payload)
        message = parse_message(payload)
        return message, self.decoder.feed(message)

    async def feed(self, payloads: list[bytes]) -> None:
        """One transaction, as the Postgres source's pump hands it on and confirms it."""
        batch: list[Item] = []
        for payload in payloads:
            message, items = self.decode(payload)
            batch.extend(items)
            if isinstance(message, Commit):
                await self.router(batch)
                self.hub.history.oldest_needed()

    def delivered(self) -> int:
        return sum(1 for transport in self.transports if transport.written)


async def run(args: argparse.Namespace) -> float:
    users = [str(uuid.UUID(int=i + 1)) for i in range(args.users)]
    rig = Rig(users, args.history_total)
    for payloads in transactions(users, args.warmup, args.per_transaction, 0):
        await rig.feed(payloads)
    pool = list(transactions(users, max(args.pool, args.changes), args.per_transaction,
                             args.warmup))
    measured = pool[: args.changes // args.per_transaction]
    pauses = Pauses()
    if args.gc_pauses:
        gc.callbacks.append(pauses)
    started = time.process_time()
    for payloads in measured:
        await rig.feed(payloads)
        await asyncio.sleep(0)  # the loop turn in which the latency metric is observed
    elapsed = time.process_time() - started
    if args.gc_pauses:
        gc.callbacks.remove(pauses)
        print(pauses)
    assert rig.delivered() == min(args.users, args.warmup + args.changes)
    return elapsed / args.changes * 1e6


class Pauses:
    """The cyclic collector's runs (a ``gc.callbacks`` entry): CPU time of each, by
    generation. The loop stands still meanwhile, so the longest is added to some delivery's
    latency."""

    def __init__(self) -> None:
        self.seconds: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.seconds[info["generation"]].append(time.process_time() - self._started)

    def __str__(self) -> str:
        return "; ".join(
            f"generation {generation}: {len(runs)} collections, longest "
            f"{max(runs, default=0) * 1e3:.1f} ms, {sum(runs) * 1e3:.0f} ms in all"
            for generation, runs in self.seconds.items()
        ) + f" (thresholds {gc.get_threshold()})"


def _cpu_us(work: Callable[[], object], count: int) -> float:
    started = time.process_time()
    work()
    return (time.process_time() - started) / count * 1e6


async def stages(args: argparse.Namespace) -> dict[str, float]:
    """Microseconds per change in each stage, each timed alone over the same changes."""
    users = [str(uuid.UUID(int=i + 1)) for i in range(args.users)]
    rig = Rig(users, args.history_total)
    for payloads in transactions(users, args.warmup, args.per_transaction, 0):
        await rig.feed(payloads)
    pool = list(transactions(users, args.changes, args.per_transaction, args.warmup))
    n = args.changes
    payloads = [payload for transaction in pool for payload in transaction]
    items: list[Item] = []
    found: dict[str, float] = {}
    found["parse and decode (pgoutput bytes to changes)"] = _cpu_us(
        lambda: [items.extend(rig.decode(payload)[1]) for payload in payloads], n)
    publications: list[Publication] = []
    found["route (channel, partition base, payload)"] = _cpu_us(
        lambda: publications.extend(rig.router.route(item) for item in items), n)
    channel = rig.channels.by_name["my_notifications"]
    fresh = [TopicEvent("t", 1, "e", ChannelPayload(item, channel)) for item in items
             if isinstance(item, Change)]
    found["encode (native frame, WebSocket framing)"] = _cpu_us(
        lambda: [CODEC.encode(event) for event in fresh], n)
    hub_total = _cpu_us(lambda: [rig.hub.receive((each,)) for each in publications], n)
    found["hub: history, numbering, the connection's send"] = (
        hub_total - found["encode (native frame, WebSocket framing)"])
    commit_times = [{item.commit_time_us} for item in items[:: args.per_transaction]]
    found["per transaction: latency metric, confirm"] = _cpu_us(
        lambda: [(metrics.observe_delivery(each), rig.hub.history.oldest_needed())
                 for each in commit_times], n)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=110_000)
    parser.add_argument("--per-transaction", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--stages", action="store_true", help="time each stage alone")
    parser.add_argument("--pool", type=int, default=0,
                        help="build this many changes' payloads, feed --changes of them (two "
                        "runs with the same pool differ in feeding alone)")
    parser.add_argument("--history-total", type=int, default=Settings().history_total,
                        help="history bound (keep it below --warmup for its steady state)")
    parser.add_argument("--gc-pauses", action="store_true",
                        help="print the cyclic collector's runs while the changes are fed")
    parser.add_argument("--gc-thresholds", default=",".join(map(str, GC_THRESHOLDS)),
                        help="the collector's thresholds (default: as ``rtgw serve`` sets them)")
    args = parser.parse_args()
    gc.set_threshold(*(int(value) for value in args.gc_thresholds.split(",")))
    if args.stages:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            found = runner.run(stages(args))
        for name, micros in found.items():
            print(f"{micros:6.2f} µs  {name}")
        print(f"{sum(found.values()):6.2f} µs  in all ({args.per_transaction} per transaction)")
        return
    figures = []
    for _ in range(args.rounds):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as uvicorn picks
            figures.append(runner.run(run(args)))
    figures.sort()
    print(f"{args.changes} changes, {args.per_transaction} per transaction, {args.users} "
          f"subscribers: {figures[len(figures) // 2]:.1f} µs of CPU per change "
          f"(median of {args.rounds}; rounds {', '.join(f'{f:.1f}' for f in figures)})")


if __name__ == "__main__":
    main()
