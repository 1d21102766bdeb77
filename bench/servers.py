"""The servers under test, each run as ``python -m bench.servers KIND --port P`` pinned to CPU 0.

* ``tutorial``: FastAPI under uvicorn with its defaults, as the tutorials run it, keeping a list
  of sockets; per event, ``json.dumps`` per client and ``await ws.send_text`` one after another.
* ``tutorial-sansio``: the same loop on uvicorn's sans-I/O websockets implementation (the one
  rtgw uses), to show what the implementation alone changes.
* ``broadcast``: python-websockets, the event encoded once and ``websockets.broadcast()``.
* ``node``: Node's ``ws`` doing the same (``bench/node/server.mjs``; ``npm ci`` on first use).
* ``rtgw``: the real gateway, ``create_app`` + ``gateway.server.gateway_server`` (as serve).

The baselines generate their own ~300-byte events at the rate set by ``rate R`` on stdin; rtgw
gets its events from Postgres commits (see ``bench.writer``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from bench.pacer import Pacer
from bench.procs import emit, pin, raise_fd_limit, run, serve_pacer_commands

REPO = Path(__file__).resolve().parent.parent
NODE_DIR = REPO / "bench" / "node"
SERVER_CPU = 0


def make_event(offset: int, due: float) -> dict[str, Any]:
    """An event shaped like rtgw's ``orders`` INSERT frame (~300 bytes encoded)."""
    stamp = datetime.fromtimestamp(due, UTC).isoformat()
    return {
        "type": "event",
        "topic": "orders",
        "offset": offset,
        "epoch": "5f0e9a1c",
        "change": {
            "id": f"{offset:016X}:000000",
            "schema": "public",
            "table": "orders",
            "op": "INSERT",
            "commit_time": stamp,
            "new": {
                "id": offset,
                "customer_id": 1,
                "status": f"ts={due:.6f}",
                "total": "10.00",
                "created_at": stamp,
                "updated_at": stamp,
            },
        },
    }


async def control(pacer: Pacer, clients: Any) -> None:
    await serve_pacer_commands(pacer, lambda: {"clients": len(clients)})


# -- the tutorial loop -------------------------------------------------------------------


def tutorial(port: int, ws: str = "auto") -> None:
    clients: list[WebSocket] = []
    offset = 0

    async def fire(times: list[float]) -> None:
        nonlocal offset
        for due in times:
            offset += 1
            event = make_event(offset, due)
            for ws in list(clients):
                try:
                    await ws.send_text(json.dumps(event))
                except (WebSocketDisconnect, RuntimeError):
                    if ws in clients:
                        clients.remove(ws)

    pacer = Pacer(fire)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(pacer.run()), asyncio.create_task(control(pacer, clients))]
        yield
        for task in tasks:
            task.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws")
    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(json.dumps({"type": "ready"}))
        clients.append(ws)
        try:
            while True:
                await ws.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            if ws in clients:
                clients.remove(ws)

    # uvicorn's defaults but the log level; the load client offers no compression.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, ws=ws, log_level="warning", timeout_graceful_shutdown=2
    )
    uvicorn.Server(config).run()


# -- python-websockets broadcast() ---------------------------------------------------------


def broadcast(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.asyncio.server import broadcast as ws_broadcast

    from gateway.encoding import dumps_text

    clients: set[ServerConnection] = set()
    offset = 0

    async def fire(times: list[float]) -> None:
        nonlocal offset
        for due in times:
            offset += 1
            ws_broadcast(clients, dumps_text(make_event(offset, due)))

    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "ready"}))
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    async def main() -> None:
        pacer = Pacer(fire)
        async with serve(handler, "127.0.0.1", port, compression=None, max_size=64 * 1024):
            emit({"ready": True})
            await asyncio.gather(pacer.run(), control(pacer, clients))

    run(main())


# -- Node ws --------------------------------------------------------------------------------


def node(port: int) -> None:
    """Become the Node server (same pid, CPU pinning, stdin and stdout), after installing its
    locked dependencies when they are missing."""
    if not (NODE_DIR / "node_modules" / "ws").is_dir():
        subprocess.run(
            ["npm", "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund",
             "--loglevel=error"],
            check=True, stdout=sys.stderr,  # stdout carries the control protocol
        )
    os.execvp("node", ["node", str(NODE_DIR / "server.mjs"), str(port)])


# -- rtgw -----------------------------------------------------------------------------------


def rtgw(port: int, dsn: str, secret: str) -> None:
    from gateway.app import create_app
    from gateway.server import gateway_server
    from gateway.settings import Settings

    settings = Settings(
        database_url=dsn,
        jwt_secret=secret,
        channels=REPO / "channels",
        host="127.0.0.1",
        port=port,
        slot=f"bench_{secrets.token_hex(4)}",
        publication="rtgw",
        max_connections_per_ip=1_000_000,  # every load-client connection comes from 127.0.0.1
    )
    gateway_server(create_app(settings), settings, "warning").run()  # what `rtgw serve` runs


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument(
        "kind", choices=("tutorial", "tutorial-sansio", "broadcast", "node", "rtgw")
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", default="")
    parser.add_argument("--secret", default="")
    parser.add_argument(
        "--no-gc", action="store_true", help="experiment: run without the cyclic GC"
    )
    parser.add_argument(
        "--snapshots", type=Path, help="trace allocations; snapshots on request (bench.connmem)"
    )
    args = parser.parse_args()
    if args.snapshots is not None:
        from bench.connmem import start_snapshots

        start_snapshots(args.snapshots)
    if args.no_gc:
        gc.disable()
    pin(SERVER_CPU)
    raise_fd_limit()
    match args.kind:
        case "tutorial":
            tutorial(args.port)
        case "tutorial-sansio":
            tutorial(args.port, ws="websockets-sansio")
        case "broadcast":
            broadcast(args.port)
        case "node":
            node(args.port)
        case "rtgw":
            rtgw(args.port, args.dsn, args.secret)


if __name__ == "__main__":
    main()
