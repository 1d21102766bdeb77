"""Resuming, checking clients: ``python -m bench.soakclient --url U --first I --count N``.

Client ``i`` (token ``sub`` = ``bench.writer.user_id(i)``, scope ``orders:read``, sent in the
``Authorization`` header) subscribes to ``orders``, which every client reads, and to its own
partition of ``my_notifications``. On any close it reconnects with backoff (as ``rtgw.js``
does: 250 ms doubling, here up to 2 s, with jitter) and resubscribes each topic with ``since``:
the last (epoch, offset) it received there, or the one ``subscribed`` gave it.

Per topic a client keeps no list, only a summary to check against the rows the database holds
(see ``bench.soak``): how many events arrived in strictly increasing position, an
order-sensitive hash of their row ids (``sequence_hash``), and how many arrived at or before a
position already seen (duplicates, or out of order). Delivery latency is the receive time minus
the row's ``ts=`` stamp, in a histogram per channel.

Commands on stdin, one JSON answer each on stdout:

* ``connect``: open every client, 100 at a time; answers once each has both subscriptions.
* ``count``: events received (repeats excluded), repeats, reconnects.
* ``mark T``: a fault began at ``T`` (Unix seconds): from now on note each order's write and
  arrival times (the first ``ORDERS_NOTED``), and count closes and reconnects.
* ``recovery R``: per client, seconds from ``T`` to the arrival of its first order written at
  or after ``R`` (the repair; null: none yet), and the closes (by code) and reconnects since
  ``mark``.
* ``report``: per-client summaries, totals and the latency histogram.
* ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import websockets

from bench.latency import Histogram
from bench.procs import raise_fd_limit, run, serve_table
from bench.writer import user_id
from gateway.tokens import mint_token

HASH_BASE, HASH_MODULUS = 1_000_003, (1 << 61) - 1
OFFSET_BITS = 52  # an epoch's hex digits after the stream id number windows of 2**52 offsets
STREAM_ID_LENGTH = 8
FIRST_RETRY_S, LAST_RETRY_S = 0.25, 2.0
ORDERS_NOTED = 1000  # per client and fault
CHANNELS = ("orders", "my_notifications")
STAMPED = {"orders": "status", "my_notifications": "title"}  # the column with ``ts=``


def sequence_hash(ids: Iterable[int], start: int = 0) -> int:
    """An order-sensitive hash of row ids; ``Track.take`` computes it one id at a time."""
    digest = start
    for row_id in ids:
        digest = (digest * HASH_BASE + row_id) % HASH_MODULUS
    return digest


def position(epoch: str, offset: int) -> int:
    return (int(epoch[STREAM_ID_LENGTH:], 16) << OFFSET_BITS) | offset


@dataclass(slots=True)
class Track:
    """What one client received on one topic."""

    position: int = -1  # of the last event (or of ``subscribed`` before any); -1: not yet
    epoch: str = ""
    offset: int = 0
    count: int = 0
    digest: int = 0
    repeats: int = 0

    def since(self) -> dict[str, Any] | None:
        return {"offset": self.offset, "epoch": self.epoch} if self.position >= 0 else None

    def take(self, at: int, epoch: str, offset: int, row_id: int) -> bool:
        """Count an event; False (and a repeat) when it is not after the last one."""
        if at <= self.position:
            self.repeats += 1
            return False
        self.position, self.epoch, self.offset = at, epoch, offset
        self.count += 1
        self.digest = sequence_hash((row_id,), self.digest)
        return True


class Resubscribe(Exception):
    """A subscription was refused (``not_ready`` while a restarted gateway replays): connect
    again."""


@dataclass(slots=True)
class Client:
    index: int
    token: str
    tracks: dict[str, Track] = field(default_factory=lambda: {c: Track() for c in CHANNELS})
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    pending: int = 0  # subscriptions asked for on this connection and not yet confirmed
    reconnects: int = 0
    unrecovered: int = 0  # ``subscribed`` with ``recovered: false``
    gaps: int = 0
    orders: list[tuple[float, float]] | None = None  # since the mark: (written, arrived)


class Clients:
    def __init__(self, url: str, first: int, count: int, secret: str, ttl_s: int) -> None:
        self.url = url
        self.clients = [
            Client(i, mint_token(secret, user_id(i), ["orders:read"], ttl_s))
            for i in range(first, first + count)
        ]
        self.tasks: list[asyncio.Task[None]] = []
        self.latency = {channel: Histogram() for channel in CHANNELS}
        self.marked_at = 0.0  # when the last fault began
        self.closes: Counter[int] = Counter()  # close codes since the mark
        self.all_closes: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()  # error frames and failed connection attempts
        self.reconnects = 0  # since the mark

    async def connect(self, concurrency: int = 100) -> dict[str, Any]:
        begin = time.perf_counter()
        for at in range(0, len(self.clients), concurrency):
            batch = self.clients[at : at + concurrency]
            self.tasks += [asyncio.create_task(self._run(client)) for client in batch]
            async with asyncio.timeout(120):
                await asyncio.gather(*(client.subscribed.wait() for client in batch))
        seconds = time.perf_counter() - begin
        gc.collect()
        gc.freeze()  # the clients live until the end: keep full collections off them
        return {"connected": len(self.clients), "seconds": seconds}

    async def _run(self, client: Client) -> None:
        delay = FIRST_RETRY_S
        headers = {"Authorization": f"Bearer {client.token}"}
        while True:
            try:
                async with websockets.connect(
                    self.url, additional_headers=headers, compression=None, ping_interval=None,
                    max_size=None, open_timeout=30, close_timeout=2,
                ) as ws:
                    client.pending = len(CHANNELS)
                    for channel, track in client.tracks.items():
                        frame: dict[str, Any] = {"type": "subscribe", "ref": channel,
                                                 "channel": channel}
                        since = track.since()
                        if since is not None:
                            frame["since"] = since
                        await ws.send(orjson.dumps(frame).decode())
                    while True:
                        message = await ws.recv(decode=False)
                        if self._frame(client, message) and client.pending == 0:
                            delay = FIRST_RETRY_S  # subscribed again: the next retry is quick
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else 1006
                self.closes[code] += 1
                self.all_closes[code] += 1
            except (OSError, TimeoutError, websockets.WebSocketException, Resubscribe) as exc:
                self.errors[type(exc).__name__] += 1
            client.reconnects += 1
            self.reconnects += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, LAST_RETRY_S)

    def _frame(self, client: Client, message: bytes) -> bool:
        """Handle one frame; True when it confirmed a subscription."""
        frame = orjson.loads(message)
        kind = frame["type"]
        if kind == "event":
            channel = "orders" if frame["topic"] == "orders" else "my_notifications"
            epoch, offset = frame["epoch"], frame["offset"]
            row = frame["change"]["new"]
            if client.tracks[channel].take(position(epoch, offset), epoch, offset, row["id"]):
                now = time.time()
                written = float(row[STAMPED[channel]][3:])
                self.latency[channel].add((now - written) * 1000)
                noted = client.orders
                if channel == "orders" and noted is not None and len(noted) < ORDERS_NOTED:
                    noted.append((written, now))
            return False
        if kind == "subscribed":
            track = client.tracks[frame["channel"]]
            if "recovered" in frame:  # resumed with ``since``
                client.unrecovered += not frame["recovered"]
            else:
                track.position = position(frame["epoch"], frame["offset"])
                track.epoch, track.offset = frame["epoch"], frame["offset"]
            client.pending -= 1
            if client.pending == 0:
                client.subscribed.set()
            return True
        if kind == "gap":
            client.gaps += 1
        elif kind == "error":
            self.errors[str(frame.get("code"))] += 1
            if frame.get("ref") in CHANNELS:
                raise Resubscribe(frame.get("code"))
        return False

    def count(self) -> dict[str, Any]:
        tracks = [track for client in self.clients for track in client.tracks.values()]
        return {
            "events": sum(track.count for track in tracks),
            "repeats": sum(track.repeats for track in tracks),
            "reconnects": sum(client.reconnects for client in self.clients),
        }

    def set_mark(self, began: str) -> dict[str, Any]:
        self.marked_at = float(began)
        for client in self.clients:
            client.orders = []
        self.closes.clear()
        self.reconnects = 0
        return {"ok": True}

    def recovery(self, repaired: str) -> dict[str, Any]:
        after = float(repaired)

        def delay(client: Client) -> float | None:
            arrived = [at for written, at in client.orders or () if written >= after]
            return min(arrived) - self.marked_at if arrived else None

        return {
            "delays": [delay(client) for client in self.clients],
            "closes": {str(code): count for code, count in self.closes.items()},
            "reconnects": self.reconnects,
        }

    def report(self) -> dict[str, Any]:
        rows = []
        for client in self.clients:
            orders, notes = (client.tracks[channel] for channel in CHANNELS)
            rows.append([
                client.index, orders.count, orders.digest, orders.repeats,
                notes.count, notes.digest, notes.repeats,
                client.unrecovered, client.gaps, client.reconnects,
            ])
        return {
            "clients": rows,
            "latency": {
                channel: {str(key): count for key, count in histogram.counts.items()}
                for channel, histogram in self.latency.items()
            },
            "closes": {str(code): count for code, count in self.all_closes.items()},
            "errors": dict(self.errors),
        }

    async def quit(self) -> dict[str, Any]:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        return {"ok": True}


async def main_async(args: argparse.Namespace) -> None:
    clients = Clients(args.url, args.first, args.count, args.secret, args.ttl)
    await serve_table({
        "connect": clients.connect, "count": clients.count, "mark": clients.set_mark,
        "recovery": clients.recovery, "report": clients.report,
        "quit": clients.quit,
    })


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soakclient")
    parser.add_argument("--url", required=True)
    parser.add_argument("--first", type=int, default=0, help="index of the first client")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--ttl", type=int, default=7200, help="token lifetime, seconds")
    args = parser.parse_args()
    raise_fd_limit()
    run(main_async(args))


if __name__ == "__main__":
    main()
