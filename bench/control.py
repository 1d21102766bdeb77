"""The control side of ``bench.attacks``, in a process of its own so that an attack's load on
the attacking process does not bend what is measured: ``python -m bench.control --port P
--dsn D``.

* A writer commits one ``orders`` row every 1/rate s for the current round's customer,
  reconnecting when Postgres restarts. What counts as committed is read back from the table.
* A control client, subscribed to ``orders`` with ``customer_id=eq.<customer>``, records
  every event's row id and when it arrived (the delay from just before its INSERT is the
  stream's latency); after any close it reconnects and resumes with ``since`` from the last
  position it saw (the subscription's own position before the first event).
* A prober opens a new connection to ``/healthz`` every 50 ms and records how long the answer
  took, or that none came.

Commands on stdin, one JSON answer per line on stdout: ``begin CUSTOMER`` (subscribe, reset the
figures, start writing), ``end`` (stop writing, wait until every committed row arrived or
``CATCH_UP_S`` passed, report); it ends with its stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import psycopg
import websockets
from websockets.asyncio.client import ClientConnection

from bench.cdc import SECRET
from bench.procs import emit, run, serve_commands
from bench.raw_http import open_raw, read_answer
from gateway.encoding import dumps_text, loads
from gateway.tokens import mint_token

PROBE_S = 0.05
PROBE_TIMEOUT_S = 5.0
CATCH_UP_S = 20.0
RECONNECT_S = 0.1
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Prober:
    """``/healthz`` every ``PROBE_S``, each on a new connection (as a new client would come)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self.failures = 0

    def reset(self) -> None:
        self.latencies, self.failures = [], 0

    async def once(self) -> bool:
        writer = None
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                reader, writer = await open_raw(self.port)
                writer.write(HEALTHZ)
                answer = await read_answer(reader, PROBE_TIMEOUT_S)
            return answer.status == 200
        except (OSError, TimeoutError, asyncio.IncompleteReadError, AssertionError, ValueError):
            return False
        finally:
            if writer is not None:
                writer.close()

    async def run(self) -> None:
        while True:  # perf_counter: uvloop's clock counts whole milliseconds
            started = time.perf_counter()
            ok = await self.once()
            if ok:
                self.latencies.append((time.perf_counter() - started) * 1000)
            else:
                self.failures += 1
            await asyncio.sleep(max(0.0, started + PROBE_S - time.perf_counter()))

    def figures(self) -> dict[str, Any]:
        return {
            "probes": len(self.latencies) + self.failures,
            "probe_failures": self.failures,
            "healthz_p50_ms": percentile(self.latencies, 0.50),
            "healthz_p99_ms": percentile(self.latencies, 0.99),
            "healthz_max_ms": max(self.latencies, default=None),
        }


class Writer:
    """One committed row per tick for ``customer``; a failed tick is retried on the next."""

    def __init__(self, dsn: str, rate: float) -> None:
        self.dsn, self.interval = dsn, 1.0 / rate
        self.failures = 0
        self.sent: dict[int, float] = {}  # row id -> perf_counter just before its INSERT
        self._task: asyncio.Task[None] | None = None
        self._writing = False

    def start(self, customer: int) -> None:
        self.failures, self._writing, self.sent = 0, True, {}
        self._task = asyncio.create_task(self._write(customer))

    async def stop(self) -> None:
        """Stop after the statement under way, so that its outcome is known."""
        self._writing = False
        if self._task is not None:
            await self._task
            self._task = None

    async def _write(self, customer: int) -> None:
        loop = asyncio.get_running_loop()
        conn: psycopg.AsyncConnection[Any] | None = None
        next_at = loop.time()
        try:
            while self._writing:
                next_at += self.interval
                try:
                    if conn is None:
                        conn = await psycopg.AsyncConnection.connect(
                            self.dsn, autocommit=True, connect_timeout=2
                        )
                    started = time.perf_counter()
                    cursor = await conn.execute(
                        "INSERT INTO orders (customer_id, status) VALUES (%s, 'control') "
                        "RETURNING id",
                        (customer,),
                    )
                    row = await cursor.fetchone()
                    if row is not None:
                        self.sent[row[0]] = started
                except (psycopg.Error, OSError):
                    self.failures += 1
                    if conn is not None:
                        with contextlib.suppress(psycopg.Error, OSError):
                            await conn.close()
                    conn = None
                await asyncio.sleep(max(0.0, next_at - loop.time()))
        finally:
            if conn is not None:
                await conn.close()


class Follower:
    """The control client: follows the round's topic across any close, resuming with
    ``since``, and counts what it received."""

    def __init__(self, port: int, secret: str) -> None:
        self.url = f"ws://127.0.0.1:{port}/v1/ws"
        self.token = mint_token(secret, "control", ["orders:read"], 24 * 3600)
        self.customer: int | None = None
        self.topic: str | None = None
        self.position: dict[str, Any] | None = None  # {"offset", "epoch"} of the last seen
        self._socket: ClientConnection | None = None
        self._subscribed = asyncio.Event()
        self._arrived = asyncio.Event()
        self.reset()

    def reset(self) -> None:
        self.ids: list[int] = []
        self.arrivals: dict[int, float] = {}  # row id -> perf_counter at its first arrival
        self.reconnects = 0
        self.unrecovered = 0
        self.gaps = 0
        self.closes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    async def follow(self, customer: int) -> None:
        """Leave the previous round's topic and follow ``customer``'s from now on."""
        self.customer, self.position = customer, None
        self._subscribed.clear()
        previous, self.topic = self.topic, None
        socket = self._socket
        if socket is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                if previous is not None:
                    await socket.send(dumps_text({"type": "unsubscribe", "topic": previous}))
                await self._subscribe(socket)
        await asyncio.wait_for(self._subscribed.wait(), 60)

    async def _subscribe(self, socket: ClientConnection) -> None:
        frame: dict[str, Any] = {
            "type": "subscribe", "ref": f"c{self.customer}", "channel": "orders",
            "filter": f"customer_id=eq.{self.customer}",
        }
        if self.position is not None:
            frame["since"] = self.position
        await socket.send(dumps_text(frame))

    async def run(self) -> None:
        first = True
        while True:
            try:
                async with websockets.connect(
                    self.url, additional_headers={"Authorization": f"Bearer {self.token}"},
                    compression=None, max_size=None, open_timeout=5,
                ) as socket:
                    if not first:
                        self.reconnects += 1
                    first = False
                    await self._serve(socket)
            except websockets.ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else 1006
                self.closes[str(code)] += 1
            except (OSError, TimeoutError, websockets.InvalidHandshake):
                pass
            finally:
                self._socket = None
            await asyncio.sleep(RECONNECT_S)

    async def _serve(self, socket: ClientConnection) -> None:
        if loads(await socket.recv()).get("type") != "ready":
            return
        self._socket = socket
        if self.customer is not None:
            await self._subscribe(socket)
        async for message in socket:
            self._receive(loads(message))

    async def received_all(self, ids: set[int], wait_s: float) -> None:
        """Return once every row of ``ids`` arrived; TimeoutError after ``wait_s``."""
        async with asyncio.timeout(wait_s):
            while not ids <= set(self.ids):
                self._arrived.clear()
                await self._arrived.wait()

    def _receive(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "event" and frame["topic"] == self.topic:
            row = int(frame["change"]["new"]["id"])
            self.ids.append(row)
            self.arrivals.setdefault(row, time.perf_counter())
            self.position = {"offset": frame["offset"], "epoch": frame["epoch"]}
            self._arrived.set()
        elif kind == "subscribed" and frame.get("ref") == f"c{self.customer}":
            if frame.get("recovered") is False:
                self.unrecovered += 1
            if self.position is None or frame.get("recovered") is False:
                self.position = {"offset": frame["offset"], "epoch": frame["epoch"]}
            self.topic = frame["topic"]
            self._subscribed.set()
        elif kind == "gap":
            self.gaps += 1
        elif kind == "error":
            self.errors[str(frame.get("code"))] += 1


class Control:
    def __init__(self, port: int, dsn: str, secret: str, rate: float) -> None:
        self.dsn = dsn
        self.prober = Prober(port)
        self.writer = Writer(dsn, rate)
        self.follower = Follower(port, secret)
        self.customer: int | None = None
        self.began = time.monotonic()

    async def begin(self, customer: int) -> dict[str, Any]:
        await self.follower.follow(customer)
        self.follower.reset()
        self.prober.reset()
        self.customer, self.began = customer, time.monotonic()
        self.writer.start(customer)
        return {"ok": True, "topic": self.follower.topic}

    async def end(self) -> dict[str, Any]:
        await self.writer.stop()
        probes = self.prober.figures()  # the attack's window, not the catching up
        seconds = time.monotonic() - self.began
        committed = await self._committed()
        with contextlib.suppress(TimeoutError):
            await self.follower.received_all(committed, CATCH_UP_S)
        follower, received = self.follower, self.follower.ids
        delays = [(follower.arrivals[row] - sent) * 1000
                  for row, sent in self.writer.sent.items() if row in follower.arrivals]
        return {
            **probes,
            "stream_p50_ms": percentile(delays, 0.50),
            "stream_p99_ms": percentile(delays, 0.99),
            "stream_max_ms": max(delays, default=None),
            "seconds": seconds,
            "committed": len(committed),
            "received": len(received),
            "lost": len(committed - set(received)),
            "duplicates": len(received) - len(set(received)),
            "unexpected": len(set(received) - committed),
            "write_failures": self.writer.failures,
            "reconnects": follower.reconnects,
            "unrecovered": follower.unrecovered,
            "gaps": follower.gaps,
            "closes": dict(follower.closes),
            "errors": dict(follower.errors),
        }

    async def _committed(self) -> set[int]:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            cursor = await conn.execute(
                "SELECT id FROM orders WHERE customer_id = %s", (self.customer,)
            )
            return {row[0] for row in await cursor.fetchall()}


async def main_async(args: argparse.Namespace) -> None:
    control = Control(args.port, args.dsn, args.secret, args.rate)
    tasks = [asyncio.create_task(control.prober.run()),
             asyncio.create_task(control.follower.run())]

    async def handle(words: list[str]) -> bool:
        match words:
            case ["begin", customer]:
                emit(await control.begin(int(customer)))
            case ["end"]:
                emit(await control.end())
            case _:
                emit({"error": f"unknown command {words!r}"})
        return True

    emit({"ready": True})
    try:
        await serve_commands(handle)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.control")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--secret", default=SECRET)
    parser.add_argument("--rate", type=float, default=50.0, help="committed rows per second")
    args = parser.parse_args()
    run(main_async(args))


if __name__ == "__main__":
    main()
