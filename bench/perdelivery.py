"""One topic's fan-out in process, over real sockets: ``python -m bench.perdelivery``.

Serves ``--n`` WebSocket connections with what ``rtgw serve`` runs for them (uvicorn's sans-I/O
protocol with the direct send, a ``Connection`` and a ``NativeSession`` each, subscribed to
one topic of the hub), then publishes ``--events`` ~300-byte events to that topic. The clients
are plain sockets that completed the handshake and never read: their kernel buffers take the
frames, so only the server's side of each delivery runs in this process. ``--batch B`` hands
the hub B events at a time, as the router hands it a source batch's publications: their frames
are then held and written once per socket and batch (1: a write per event and socket).
``--backlog K`` publishes K events before the clients connect: each client resumes from the
start (``since``) and gets them as its backlog first. ``--redis URL`` hands the hub the events
through the Redis bus (a publishing and a receiving ``RedisBus`` in this process, a batch per
publish), as a gateway behind Redis gets them.

Prints the CPU per delivery (noisy on a shared machine). Instruction counts do not depend on
the load: run it under callgrind twice, with two ``--events``, and divide the difference of
the totals by the difference of the deliveries (start-up and connecting cancel out)::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/fan.out \\
        .venv/bin/python -m bench.perdelivery --events 60
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as redis
import uvicorn
import uvloop

from gateway.auth import AuthConfig, Verifier
from gateway.bus.base import Publication, Target
from gateway.bus.redis import RedisBus, RedisBusConfig
from gateway.channels import load_channels
from gateway.connection import Connection
from gateway.hub import Hub, Since
from gateway.limits import Limits
from gateway.native.session import RENDERER, NativeSession
from gateway.publish import MessagePayload
from gateway.server import GC_THRESHOLDS
from gateway.session import Subscribe
from gateway.transport.direct import EXTENSION, DirectSocket, direct_protocol

REPO = Path(__file__).resolve().parent.parent
TOPIC = "orders"
BODY = b'{"id":%d,"customer_id":1,"status":"paid","total":"10.00","note":"%s"}'


class Rig:
    """A hub and the connections of ``n`` clients subscribed to one topic."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.channels = load_channels(REPO / "channels")
        self.limits = Limits()
        self.verifier = Verifier(AuthConfig(hs256_secret="perdelivery-" + "x" * 32))
        self.connected = 0

    async def app(self, scope: dict[str, Any], receive: Callable[..., Any], send: Any) -> None:
        """An ASGI app that serves each WebSocket as the native endpoint does, subscribed."""
        if scope["type"] != "websocket":
            return
        direct: DirectSocket = scope["extensions"][EXTENSION]
        direct.detach(self._serve(direct))

    async def _serve(self, direct: DirectSocket) -> None:
        await direct.accept()
        session = NativeSession(self.channels, self.limits, "c")
        connection = Connection(session, direct, self.limits, self.hub, self.verifier, "c")
        connection._subscribe(  # noqa: SLF001 - what an authorized subscribe frame leads to
            Subscribe(TOPIC, TOPIC, TOPIC, None, Since(*self.hub.offset_and_epoch(0)),
                      RENDERER, lambda _: ())
        )
        self.connected += 1
        try:
            while await direct.receive() is not None:  # served until the client leaves
                pass
        finally:
            self.connected -= 1

    async def publish(self, first: int, count: int, batch: int = 1,
                      buses: tuple[RedisBus, RedisBus] | None = None) -> None:
        """Events ``first``.. handed to the hub ``batch`` at a time, as the router hands it
        the publications of a source batch (the hub holds a batch's writes: one per socket);
        with ``buses`` (the publisher and the receiver, the hub's, of a Redis bus), through them
        (returns once the hub has them all)."""
        note = ("x" * 180).encode()
        publications = [
            Publication(offset, time.time(), (Target(TOPIC, TOPIC,
                                                     MessagePayload(BODY % (offset, note))),))
            for offset in range(first, first + count)
        ]
        for at in range(0, count, batch):
            if buses is None:
                self.hub.receive(publications[at : at + batch])
            else:
                await buses[0].publish(publications[at : at + batch])
        if buses is not None:
            await buses[1].settle()


async def handshake(port: int) -> tuple[socket.socket, bytes]:
    """A client socket past the WebSocket handshake, left unread from then on, and what it read
    after the handshake's response (a backlog may follow it at once)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 4096)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {head!r}")
    return sock, head.partition(b"\r\n\r\n")[2]


async def read_frames(sock: socket.socket, count: int, data: bytearray) -> None:
    """Read ``count`` event frames (after the measurement) and check they are in order. Walks
    the bytes read with an index (no copy per frame), so that under callgrind the clients'
    reading, which runs in this process too, adds as little as it can to a delivery."""
    loop, at, seen = asyncio.get_running_loop(), 0, 0
    while True:
        while len(data) - at >= 4:  # each frame: 0x81, 126, a 16-bit length (events are ~300
            # bytes), the JSON
            size = int.from_bytes(data[at + 2 : at + 4], "big")
            if len(data) < at + 4 + size:
                break
            seen += 1
            if data.find(b'"offset":%d,' % seen, at + 4, at + 4 + size) < 0:
                frame = bytes(data[at : at + 4 + size])
                raise RuntimeError(f"frame {seen} is not event {seen}: {frame!r}")
            at += 4 + size
        if seen >= count:
            return
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
        if not chunk:
            raise RuntimeError(f"the server closed a client after {seen} of {count} frames")
        data += chunk


async def run(args: argparse.Namespace) -> tuple[float, float]:
    """µs of user and of system CPU per delivery."""
    if args.redis is None:
        return await measure(args, Rig(Hub()), None)
    namespace = f"rtgw:bench_{secrets.token_hex(4)}"
    channels = load_channels(REPO / "channels")
    try:
        async with RedisBus(RedisBusConfig(args.redis, namespace), channels) as owner, \
                RedisBus(RedisBusConfig(args.redis, namespace), channels) as node:
            hub = Hub(interest=node, archive=node)
            node.attach(hub)
            owner.start("be0c4000", 0)
            await node.settle()
            return await measure(args, Rig(hub), (owner, node))
    finally:
        client = redis.Redis.from_url(args.redis)
        keys = [key async for key in client.scan_iter(f"{namespace}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def measure(
    args: argparse.Namespace, rig: Rig, buses: tuple[RedisBus, RedisBus] | None
) -> tuple[float, float]:
    await rig.publish(1, args.backlog, args.batch, buses)
    port = args.port
    config = uvicorn.Config(
        rig.app, host="127.0.0.1", port=port, ws=direct_protocol(20.0, 4 * 1024 * 1024),
        ws_per_message_deflate=False, ws_ping_interval=None, log_level="warning",
        lifespan="off", interface="asgi3", timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - a flag of uvicorn's, not an event
        await asyncio.sleep(0.01)
    clients = [await handshake(port) for _ in range(args.n)]
    while rig.connected < args.n:  # noqa: ASYNC110 - a count, not an event
        await asyncio.sleep(0.01)
    first = 1 + args.backlog
    await rig.publish(first, args.warmup, args.batch, buses)
    before = os.times()
    await rig.publish(first + args.warmup, args.events, args.batch, buses)
    after = os.times()
    for sock, read in clients:  # every client got every event, in order (events 1, 2, ...)
        await read_frames(sock, args.backlog + args.warmup + args.events, bytearray(read))
        sock.close()
    while rig.connected:  # noqa: ASYNC110 - a count, not an event
        await asyncio.sleep(0.01)
    server.should_exit = True
    await serving
    deliveries = args.events * args.n
    return ((after.user - before.user) / deliveries * 1e6,
            (after.system - before.system) / deliveries * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.perdelivery", description=__doc__)
    parser.add_argument("--n", type=int, default=1_000, help="subscribed connections")
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1,
                        help="events per hub batch (1: each on its own, one write per socket)")
    parser.add_argument("--backlog", type=int, default=0,
                        help="events each client gets as its backlog when it resumes")
    parser.add_argument("--redis", metavar="URL", help="through the Redis bus at URL")
    parser.add_argument("--port", type=int, default=0, help="0: a free one")
    args = parser.parse_args()
    if args.backlog and args.redis:
        parser.error("--backlog is read from the hub's own history: not with --redis")
    if args.port == 0:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            args.port = probe.getsockname()[1]
    gc.set_threshold(*GC_THRESHOLDS)  # as ``rtgw serve`` runs
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        user, system = runner.run(run(args))
    print(f"{args.events} events to {args.n} subscribers: {user + system:.2f} µs of CPU per "
          f"delivery ({user:.2f} user, {system:.2f} system), hub batches of {args.batch}")


if __name__ == "__main__":
    main()
