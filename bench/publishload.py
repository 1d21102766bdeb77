"""The publish benchmark's load: ``python -m bench.publishload --port P --secret S``, on CPU 1.

One process: ``--subscribers`` native WebSocket clients of the ``orders`` topic that count the
frames they receive (frame headers read by hand: a cheap reader, so the gateway stays the side
under test), and keep-alive HTTP/1.1 connections that publish in a closed loop (a request goes
out when the connection's previous answer came back). Commands on stdin, JSON on stdout:
``connect``, ``run FORM SECONDS CONNECTIONS`` (FORM: ``single``, one event per
``POST /v1/publish``; or ``batch:N``, N events per ``POST /v1/publish/batch``), ``count``,
``quit``.

Each published payload carries ``ts=<epoch seconds>``, the time its request went out: the
first subscriber measures publish → delivery latency from it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson

from bench.latency import percentile, stamp
from bench.procs import pin, raise_fd_limit, run, serve_table
from bench.raw_http import PING, PONG, TEXT, frame, upgrade
from gateway.tokens import mint_token

LOAD_CPU = 1
FILLER = "x" * 120  # brings an event to about 300 bytes on the wire, like bench.fanout's


class Subscriber:
    """One native client of ``orders``: counts text frames (answers pings); the first one also
    reads their stamps."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timed: bool
    ) -> None:
        self.reader, self.writer, self.timed = reader, writer, timed
        self.frames = 0
        self.latencies: list[float] = []

    async def receive(self) -> None:
        buffer = b""
        while chunk := await self.reader.read(1 << 16):
            buffer += chunk
            at, size = 0, len(buffer)
            while size - at >= 2:
                length, head = buffer[at + 1] & 0x7F, 2
                if length == 126:
                    length, head = int.from_bytes(buffer[at + 2 : at + 4]), 4
                elif length == 127:
                    length, head = int.from_bytes(buffer[at + 2 : at + 10]), 10
                if size - at < head + length:
                    break
                payload = buffer[at + head : at + head + length]
                opcode = buffer[at] & 0x0F
                if opcode == PING:
                    self.writer.write(frame(PONG, payload))
                elif opcode == TEXT:
                    self.frames += 1
                    if self.timed and (sent := stamp(payload)) is not None:
                        self.latencies.append(time.time() - sent)
                at += head + length
            buffer = buffer[at:]


class Load:
    def __init__(self, port: int, secret: str, subscribers: int) -> None:
        self.port, self.subscribers = port, subscribers
        self.token = mint_token(secret, "bench", ["orders:read", "rtgw:publish"], 3600)
        self.readers: list[Subscriber] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.accepted = 0  # over every run

    async def connect(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        for index in range(self.subscribers):
            reader, writer = await upgrade(self.port, headers=headers)
            await _frame_with(reader, b'"ready"')
            writer.write(frame(TEXT, b'{"type":"subscribe","ref":"s","channel":"orders"}'))
            await _frame_with(reader, b'"subscribed"')
            subscriber = Subscriber(reader, writer, timed=index == 0)
            self.readers.append(subscriber)
            self.tasks.append(asyncio.create_task(subscriber.receive()))
        return {"connected": len(self.readers)}

    def count(self) -> dict[str, Any]:
        frames = sum(subscriber.frames for subscriber in self.readers)
        return {"frames": frames, "accepted": self.accepted}

    async def run(self, form: str, seconds: str, connections: str) -> dict[str, Any]:
        """Publish for ``seconds`` over ``connections`` keep-alive connections; what was
        accepted, refused, and how long requests took."""
        batch = 0 if form == "single" else int(form.removeprefix("batch:"))
        for subscriber in self.readers:
            subscriber.latencies = []
        deadline = time.monotonic() + float(seconds)
        results = await asyncio.gather(
            *(self._publisher(batch, deadline) for _ in range(int(connections)))
        )
        accepted = sum(result[0] for result in results)
        refused = sum(result[1] for result in results)
        self.accepted += accepted
        waits = sorted(wait for result in results for wait in result[2])
        delays = sorted(
            delay * 1000 for subscriber in self.readers for delay in subscriber.latencies
        )
        return {
            "accepted": accepted, "refused": refused, "requests": len(waits),
            "request_p50_ms": percentile(waits, 0.5), "request_p99_ms": percentile(waits, 0.99),
            "delivery_p50_ms": percentile(delays, 0.5), "delivery_p99_ms": percentile(delays, 0.99),
        }

    async def _publisher(self, batch: int, deadline: float) -> tuple[int, int, list[float]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        accepted = refused = 0
        waits: list[float] = []
        path = "/v1/publish" if batch == 0 else "/v1/publish/batch"
        try:
            while time.monotonic() < deadline:
                body = self._body(batch)
                started = time.perf_counter()
                writer.write(
                    b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (path.encode(), self.token.encode(), len(body), body)
                )
                status, answer = await _response(reader)
                waits.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    refused += max(batch, 1)
                elif batch == 0:
                    accepted += 1
                else:
                    accepted += len(orjson.loads(answer)["published"])  # all or none
        finally:
            writer.close()
        return accepted, refused, waits

    @staticmethod
    def _body(batch: int) -> bytes:
        sent = f"ts={time.time():.6f}"
        event = {"channel": "orders", "event": "bench", "payload": {"note": sent, "text": FILLER}}
        if batch == 0:
            return orjson.dumps(event)
        return orjson.dumps({"events": [event] * batch})

    async def quit(self) -> dict[str, Any]:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        return {"ok": True}


async def _frame_with(reader: asyncio.StreamReader, marker: bytes) -> None:
    """Read frames until one contains ``marker`` (connection set-up only)."""
    while True:
        head = await asyncio.wait_for(reader.readexactly(2), 10)
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2))
        if marker in await reader.readexactly(length):
            return


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def main_async(args: argparse.Namespace) -> None:
    load = Load(args.port, args.secret, args.subscribers)
    await serve_table({"connect": load.connect, "run": load.run, "count": load.count,
                       "quit": load.quit})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.publishload")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--subscribers", type=int, default=10)
    args = parser.parse_args()
    pin(LOAD_CPU)
    raise_fd_limit()
    run(main_async(args))


if __name__ == "__main__":
    main()
