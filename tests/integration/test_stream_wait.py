"""gateway.sources.postgres.stream: the wait for the replication socket, on a socket pair (the
wait reads only the socket's file descriptor from libpq's connection)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from gateway.sources.postgres.stream import Stream


class FakeConnection:
    """A fake libpq connection: only the socket, which is all the wait uses."""

    def __init__(self, fd: int) -> None:
        self.socket = fd


async def read_as_the_pump_does(stream: Stream, ours: socket.socket) -> tuple[bytes, int]:
    """Wait, then read; wait again when there was nothing (on asyncio's own loop, readiness
    reported before a wait began can end it early). What was read, and the waits it took."""
    for waits in range(1, 4):
        async with asyncio.timeout(5):
            await stream._wait_readable(10.0)
        try:
            return ours.recv(16), waits
        except BlockingIOError:
            continue
    raise AssertionError("three waits and nothing to read")


class CountingStream(Stream):
    """Counts how often the socket's reader ran."""

    fired = 0

    def _on_readable(self) -> None:
        self.fired += 1
        super()._on_readable()


async def test_the_socket_is_watched_across_waits_but_not_while_nobody_waits() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    fake: Any = FakeConnection(ours.fileno())
    stream = CountingStream(fake, 10.0)
    try:
        for message in (b"a", b"b"):  # each wait wakes when the data comes
            asyncio.get_running_loop().call_later(0.01, theirs.send, message)
            assert (await read_as_the_pump_does(stream, ours))[0] == message
        fired = stream.fired
        theirs.send(b"c")  # arrives while nobody waits (the sink is busy): no spinning
        for _ in range(50):
            await asyncio.sleep(0)
        assert stream.fired - fired <= 1
        started = time.monotonic()  # the data already there ends the next wait at once
        assert (await read_as_the_pump_does(stream, ours))[0] == b"c"
        assert time.monotonic() - started < 1
        await asyncio.sleep(0.01)  # no readiness left over from the read
        started = time.monotonic()
        await stream._wait_readable(0.05)  # nothing comes: the wait ends at its time
        assert 0.04 < time.monotonic() - started < 1
        waiting = asyncio.create_task(stream._wait_readable(10.0))
        await asyncio.sleep(0.01)
        waiting.cancel()  # a cancelled wait raises, and leaves nobody waiting
        await asyncio.gather(waiting, return_exceptions=True)
        assert waiting.cancelled()
        fired = stream.fired
        theirs.send(b"d")
        for _ in range(50):
            await asyncio.sleep(0)
        assert stream.fired - fired <= 1
    finally:
        asyncio.get_running_loop().remove_reader(ours.fileno())
        ours.close()
        theirs.close()
