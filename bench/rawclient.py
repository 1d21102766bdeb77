"""A cheap load client: ``python -m bench.rawclient --url U --n N --first I --mode M``.

The commands and answers of ``bench.loadclient`` (``connect``, ``start``, ``stop``, ``count``,
``quit``), at a fraction of its CPU per frame, so that K of them on one core read what one
server core writes. Each connection is an asyncio Protocol that speaks just enough WebSocket:
the upgrade (the token in its ``Authorization`` header), rtgw's ``subscribe`` (or the
baseline's ``ready``), then server frames cut out of whatever the socket delivered by their
length fields alone, pings answered with pongs. Every text frame is counted and timed: its
``ts=`` stamp against the time its chunk arrived, into a histogram the harness merges across
processes (bucket counts, not percentiles of percentiles).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import time
from typing import Any, cast
from urllib.parse import urlsplit

from bench.latency import MARK, Histogram
from bench.procs import client_token, load_client_main
from bench.raw_http import CLOSE, PING, PONG, TEXT, UPGRADE, frame

OPEN_TIMEOUT_S = 60.0


class Tally:
    """What one process's connections counted since ``start``."""

    def __init__(self) -> None:
        self.count = 0
        self.closed = 0
        self.recording = False
        self.latency = Histogram()


class Reader(asyncio.Protocol):
    """One WebSocket connection, from its upgrade to its close; server frames only."""

    def __init__(self, tally: Tally, request: bytes, subscribe: bytes | None) -> None:
        self.tally = tally
        self.request = request
        self.subscribe = subscribe
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.pending = b""
        self.upgraded = False
        self.awaiting = b'"ready"'
        self.live = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
        at = 0
        if not self.upgraded:
            head_end = data.find(b"\r\n\r\n")
            if head_end < 0:
                self.pending = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                self._fail(data[: data.find(b"\r\n")].decode(errors="replace"))
                return
            self.upgraded, at = True, head_end + 4
        now = time.time()
        size = len(data)
        while size - at >= 2:
            length, head = data[at + 1] & 0x7F, 2
            if length == 126:
                length, head = int.from_bytes(data[at + 2 : at + 4]), 4
            elif length == 127:
                length, head = int.from_bytes(data[at + 2 : at + 10]), 10
            end = at + head + length
            if end > size:
                break
            opcode = data[at] & 0x0F
            if opcode == TEXT:
                if self.live:
                    self._delivered(data, at + head, end, now)
                else:
                    self._opening(data[at + head : end])
            elif opcode == PING and self.transport is not None:
                self.transport.write(frame(PONG, data[at + head : end]))
            elif opcode == CLOSE and self.transport is not None:
                self.transport.close()
            at = end
        self.pending = data[at:] if at < size else b""

    def _delivered(self, data: bytes, start: int, end: int, now: float) -> None:
        tally = self.tally
        tally.count += 1
        if tally.recording:
            mark = data.find(MARK, start, end)
            if mark >= 0:
                written = float(data[mark + 3 : data.find(b'"', mark, end)])
                tally.latency.add((now - written) * 1000)

    def _opening(self, payload: bytes) -> None:
        """The frames before the first event: ready, then (rtgw) the subscription's answer."""
        if self.awaiting not in payload:
            self._fail(f"expected {self.awaiting!r}, got {payload[:200]!r}")
        elif self.subscribe is not None:
            assert self.transport is not None
            self.transport.write(self.subscribe)
            self.subscribe, self.awaiting = None, b'"subscribed"'
        else:
            self.live = True
            if not self.opened.done():
                self.opened.set_result(None)

    def _fail(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(RuntimeError(why))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.live:
            self.tally.closed += 1
        self._fail(f"closed before it was ready ({exc!r})")


class Load:
    """Clients ``first`` … ``first + n - 1`` of one workload (the index names a partitioned
    client's user, as ``bench.writer.user_id`` does)."""

    def __init__(self, url: str, first: int, n: int, mode: str, secret: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path, self.first, self.n, self.mode, self.secret = parts.path, first, n, mode, secret
        self.tally = Tally()
        self.readers: list[Reader] = []
        self.started = time.monotonic()

    def _request(self, token: str | None) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        extra = f"Authorization: Bearer {token}\r\n" if token else ""
        return UPGRADE.format(path=self.path, key=key, extra=extra).encode()

    def _token(self, index: int) -> str:
        return client_token(self.mode, self.secret, index)

    async def connect(self, concurrency: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        subscribe = None
        if self.mode != "baseline":
            channel = "orders" if self.mode == "topic" else "my_notifications"
            subscribe = frame(TEXT, f'{{"type":"subscribe","ref":"s","channel":"{channel}"}}'
                              .encode())
        shared = self._request(self._token(0)) if self.mode == "topic" else self._request(None)
        gate = asyncio.Semaphore(concurrency)
        failures: list[str] = []

        async def one(index: int) -> None:
            request = self._request(self._token(index)) if self.mode == "partitioned" else shared
            async with gate:
                try:
                    _, reader = await loop.create_connection(
                        lambda: Reader(self.tally, request, subscribe), self.host, self.port
                    )
                    await asyncio.wait_for(reader.opened, OPEN_TIMEOUT_S)
                except Exception as exc:  # reported, not raised
                    failures.append(repr(exc))
                    return
                self.readers.append(reader)

        begin = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(self.first, self.first + self.n)))
        seconds = time.perf_counter() - begin
        gc.collect()
        gc.freeze()  # the connections live until the end: full collections skip them
        return {
            "connected": len(self.readers),
            "seconds": seconds,
            "failed": len(failures),
            "first_failure": failures[0] if failures else None,
        }

    def start(self) -> dict[str, Any]:
        self.tally.count = 0
        self.tally.latency = Histogram()
        self.tally.recording = True
        self.started = time.monotonic()
        return {"ok": True}

    def counts(self) -> dict[str, Any]:
        return {"count": self.tally.count, "closed": self.tally.closed}

    def stop(self) -> dict[str, Any]:
        self.tally.recording = False
        seconds = time.monotonic() - self.started
        return {"count": self.tally.count, "seconds": seconds, "closed": self.tally.closed,
                **self.tally.latency.summary()}

    def quit(self) -> dict[str, Any]:
        for reader in self.readers:
            if reader.transport is not None:
                with contextlib.suppress(Exception):
                    reader.transport.write(frame(CLOSE, b"\x03\xe8"))
                    reader.transport.close()
        return {"ok": True}


def main() -> None:
    load_client_main("python -m bench.rawclient", Load)


if __name__ == "__main__":
    main()
