"""The same endpoints on a server that offers no direct extension (stock uvicorn protocol):
connections then run inside the ASGI call, through Starlette's send, and behave the same."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import uvicorn
import websockets

from gateway.app import create_app
from gateway.settings import Settings
from gateway.sources.embedded import EmbeddedPostgres
from gateway.transport.socket import StarletteSocket
from tests.conftest import (
    REPO,
    TEST_SECRET,
    connect,
    drop_slot,
    eventually,
    free_port,
    insert_order,
    token,
    wait_ready,
)


@pytest.fixture
async def plain_gateway(pg: EmbeddedPostgres) -> AsyncIterator[tuple[str, Any]]:
    settings = Settings(
        database_url=pg.dsn, jwt_secret=TEST_SECRET, channels=REPO / "channels",
        port=free_port(), slot="plain_asgi_test", auth_timeout_s=0.5,
    )
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.port, ws="websockets-sansio",
                            ws_per_message_deflate=False, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{settings.port}"
    try:
        await wait_ready(url)
        yield url.replace("http://", "ws://") + "/v1/ws", app.state.node
    finally:
        server.should_exit = True
        await task
        drop_slot(pg.dsn, settings.slot)


async def test_native_connections_work_without_the_direct_extension(
    plain_gateway: tuple[str, Any], db: psycopg.Connection[Any]
) -> None:
    url, node = plain_gateway
    async with connect(url) as client:
        await client.auth(token())
        subscribed = await client.subscribe("orders")
        order = insert_order(db, "plain")
        (event,) = await client.events(1)
        assert event["change"]["new"]["id"] == order
        assert event["offset"] > subscribed["offset"]
        await eventually(lambda: node.connections.counts()["native"] == (1, 1))
        [connection] = node.connections
        assert isinstance(connection._transport, StarletteSocket)  # the path under test
    await eventually(lambda: node.connections.counts()["native"] == (0, 0))

    async with connect(url) as silent:  # the auth deadline still closes a silent client
        frame = await silent.recv()
        assert frame["code"] == "auth_timeout"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await silent.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4002
