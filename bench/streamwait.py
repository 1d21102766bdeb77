"""The replication stream's wait for its socket, alone: ``python -m bench.streamwait``.

Once per transaction at a low rate the Postgres source waits for its socket
(``Stream._wait_readable``). This times that wait on a socket pair, on uvloop as ``rtgw serve``
runs: the peer writes a byte while the stream waits, the stream wakes and reads it, and the
loop turns once (the sink's turn). Prints CPU per wait, the read and the write included (noisy:
run both trees alternating).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from typing import Any

import uvloop

from gateway.sources.postgres.stream import Stream


class SocketOnly:
    """What the wait reads of libpq's connection: its socket."""

    def __init__(self, fd: int) -> None:
        self.socket = fd


async def waits(count: int) -> float:
    """CPU seconds per wait."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    connection: Any = SocketOnly(ours.fileno())
    stream = Stream(connection, 10.0)
    loop = asyncio.get_running_loop()
    try:
        started = time.process_time()
        for _ in range(count):
            loop.call_soon(theirs.send, b"x")  # arrives while the stream waits
            await stream._wait_readable(10.0)  # noqa: SLF001 - the wait itself is measured
            ours.recv(16)
            await asyncio.sleep(0)
        return (time.process_time() - started) / count
    finally:
        loop.remove_reader(ours.fileno())
        ours.close()
        theirs.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.streamwait", description=__doc__)
    parser.add_argument("--waits", type=int, default=100_000)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        seconds = runner.run(waits(args.waits))
    print(f"{args.waits} waits: {seconds * 1e6:.2f} µs of CPU per wait (its read and write "
          f"included)")


if __name__ == "__main__":
    main()
