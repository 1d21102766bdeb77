"""What the WebSocket keepalive costs the server: ``python -m bench.keepalive``.

Serves ``--clients`` connections with rtgw's WebSocket protocol (gateway/transport/direct.py,
under uvicorn and uvloop, as ``rtgw serve`` runs it) in this process, behind an app that only
accepts and waits. A client process answers every ping with its pong, as browsers do. The
ping interval is set near zero, so each connection's keepalive chain (the ping on the shared
deadlines, the pong read and checked, the next ping scheduled) turns as fast as the client
answers, and the server stops after about ``--rounds`` pings per connection.

Prints CPU per round (noisy). Run it under callgrind for figures the load does not move::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/ka.out \\
        .venv/bin/python -m bench.keepalive --clients 200 --rounds 60

and the same with ``--rounds 20``: the difference of the two instruction counts divided by
``clients × 40`` is the server's cost of one ping and its pong, without the kernel's (the
start, the handshakes and the client process cancel out; the client runs outside callgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import selectors
import socket
import subprocess
import sys
import time
from typing import Any

import uvicorn
import uvloop

from bench.harness import free_port
from gateway.transport.direct import DirectSendProtocol, direct_protocol

PING = 0x89
PONG_HEAD = b"\x8a"  # final pong, masked (length byte follows)
ZERO_MASK = b"\0\0\0\0"  # a valid masking key that leaves the payload as it is


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accepts a WebSocket and waits until it goes."""
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


def serve(clients: int, rounds: int) -> float:
    """Run the server until ``clients × rounds`` pings went out; CPU seconds per round."""
    port = free_port()
    base = direct_protocol(20.0, 4 * 1024 * 1024)
    wanted = clients * rounds
    pings = [0]
    started = [0.0]

    class Counting(base):  # type: ignore[valid-type, misc]
        def send_keepalive_ping(self) -> None:
            pings[0] += 1
            if pings[0] == clients:  # every connection is up and pinging: start the clock
                started[0] = time.process_time()
            if pings[0] >= wanted:
                server.should_exit = True
            super().send_keepalive_ping()

    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, ws=Counting, ws_ping_interval=1e-6,
        ws_ping_timeout=20.0, ws_per_message_deflate=False, lifespan="off", log_config=None,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    client = subprocess.Popen(
        [sys.executable, "-m", "bench.keepalive", "--client-of", str(port), "--clients",
         str(clients)],
    )
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(server.serve())
    finally:
        client.wait(60)
    assert issubclass(Counting, DirectSendProtocol)
    return (time.process_time() - started[0]) / max(1, pings[0] - clients)


def client(port: int, clients: int) -> None:
    """Connect ``clients`` sockets and answer every ping until the server hangs up."""
    deadline = time.monotonic() + 300  # the server may start slowly (under callgrind)
    while True:
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    sockets = []
    for _ in range(clients):
        sock = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        sockets.append((sock, head.partition(b"\r\n\r\n")[2]))
    selector = selectors.DefaultSelector()
    for sock, rest in sockets:
        selector.register(sock, selectors.EVENT_READ, [rest])
    open_ = len(sockets)
    while open_:
        for key, _ in selector.select():
            sock, pending = key.fileobj, key.data
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                selector.unregister(sock)
                sock.close()
                open_ -= 1
                continue
            buffer = pending[0] + data
            while len(buffer) >= 2 and len(buffer) >= 2 + (buffer[1] & 0x7F):
                size = buffer[1] & 0x7F  # server control frames are short and unmasked
                if buffer[0] == PING:
                    payload = buffer[2:2 + size]
                    sock.sendall(PONG_HEAD + bytes((0x80 | size,)) + ZERO_MASK + payload)
                buffer = buffer[2 + size:]
            pending[0] = buffer


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.keepalive", description=__doc__)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--client-of", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_of:
        client(args.client_of, args.clients)
        return
    per_round = serve(args.clients, args.rounds)
    print(f"{args.clients} connections, about {args.rounds} pings each: "
          f"{per_round * 1e6:.1f} µs of server CPU per ping and pong")


if __name__ == "__main__":
    main()
