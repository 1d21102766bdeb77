"""The load client: ``python -m bench.loadclient --url U --n N --mode M``, pinned to CPU 1.

One process, N ``websockets`` asyncio connections (clients ``--first`` onwards: the harness
may spread the clients over several processes). Commands on stdin, JSON answers on stdout:
``connect`` (open all N, report the time), ``start`` (reset counters and record), ``stop``
(deliveries, latency percentiles and the histogram's counts since ``start``), ``count``,
``quit``. ``bench.rawclient`` answers the same commands at a fraction of the CPU per frame.

Latency is receive time minus the ``ts=<epoch seconds>`` stamp each event carries: the time
the baseline server was due to send it, or the row's ``clock_timestamp()`` for rtgw.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from bench.latency import Histogram, stamp
from bench.procs import client_token, load_client_main


class Load:
    def __init__(self, url: str, first: int, n: int, mode: str, secret: str) -> None:
        self.url, self.first, self.n, self.mode, self.secret = url, first, n, mode, secret
        self.sockets: list[ClientConnection] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.count = 0
        self.closed = 0
        self.latency = Histogram()
        self.recording = False
        self.started = time.monotonic()

    async def _open(self, index: int, token: str | None) -> ClientConnection:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        ws = await websockets.connect(
            self.url,
            additional_headers=headers,
            compression=None,
            ping_interval=None,
            max_size=None,
            open_timeout=60,
        )
        if self.mode == "baseline":
            await ws.recv()  # {"type": "ready"}
        else:
            await ws.recv()  # ready (authenticated by the header)
            channel = "orders" if self.mode == "topic" else "my_notifications"
            await ws.send(f'{{"type":"subscribe","ref":"s","channel":"{channel}"}}')
            reply = await ws.recv()
            if '"subscribed"' not in str(reply):
                raise RuntimeError(f"subscribe failed: {reply!r}")
        return ws

    def _token(self, index: int) -> str:
        return client_token(self.mode, self.secret, index)

    async def connect(self, concurrency: int) -> dict[str, Any]:
        shared = None if self.mode != "topic" else self._token(0)
        partitioned = self.mode == "partitioned"
        tokens: list[str | None] = (
            [self._token(self.first + i) for i in range(self.n)] if partitioned else []
        )
        gate = asyncio.Semaphore(concurrency)
        failures: list[str] = []

        async def one(index: int) -> None:
            async with gate:
                token = tokens[index] if tokens else shared
                try:
                    ws = await self._open(index, token)
                except Exception as exc:  # reported, not raised
                    failures.append(repr(exc))
                    return
                self.sockets.append(ws)
                self.tasks.append(asyncio.create_task(self._receive(ws)))

        begin = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(self.n)))
        seconds = time.perf_counter() - begin
        # The connections live until the end: keep full collections from rescanning them, so
        # that the client, not the server, is the cheaper side (at N = 10,000 they cost the
        # client seconds). The servers run with Python's defaults.
        gc.collect()
        gc.freeze()
        return {
            "connected": len(self.sockets),
            "seconds": seconds,
            "failed": len(failures),
            "first_failure": failures[0] if failures else None,
        }

    async def _receive(self, ws: ClientConnection) -> None:
        try:
            while True:
                message = await ws.recv(decode=False)
                self.count += 1
                if self.recording:
                    assert isinstance(message, bytes)
                    written = stamp(message)
                    if written is not None:
                        self.latency.add((time.time() - written) * 1000)
        except websockets.ConnectionClosed:
            self.closed += 1

    def start(self) -> dict[str, Any]:
        self.count = 0
        self.latency = Histogram()
        self.recording = True
        self.started = time.monotonic()
        return {"ok": True}

    def counts(self) -> dict[str, Any]:
        return {"count": self.count, "closed": self.closed}

    def stop(self) -> dict[str, Any]:
        self.recording = False
        seconds = time.monotonic() - self.started
        return {"count": self.count, "seconds": seconds, "closed": self.closed,
                **self.latency.summary()}

    async def quit(self) -> dict[str, Any]:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

        async def close(ws: ClientConnection) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)

        await asyncio.gather(*(close(ws) for ws in self.sockets))
        return {"ok": True}


def main() -> None:
    load_client_main("python -m bench.loadclient", Load)


if __name__ == "__main__":
    main()
