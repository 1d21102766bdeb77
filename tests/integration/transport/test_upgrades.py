"""gateway.transport.upgrades: an upgrade to a parameterless WebSocket route reaches its endpoint
without the middleware stack; everything else goes through FastAPI as before."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, WebSocket

from gateway.app import create_app
from gateway.settings import Settings
from gateway.sources.embedded import EmbeddedPostgres
from gateway.transport.upgrades import DirectUpgrades, direct_endpoints
from tests.conftest import REPO, TEST_SECRET
from tests.integration.transport.recording import dependency, recording_app


def probe_app() -> tuple[FastAPI, APIRouter, list[str]]:
    """An app whose middleware records every scope it sees, and the router of its WebSocket
    endpoints, which record their own calls, in the same list."""
    app, router, seen = recording_app()

    @router.websocket("/plain")
    async def plain(websocket: WebSocket) -> None:
        seen.append(f"plain app={websocket.scope['app'] is app}")
        await websocket.close(4000)

    @router.websocket("/item/{name}")
    async def item(websocket: WebSocket, name: str) -> None:
        seen.append(f"item {name}")
        await websocket.close(4000)

    @router.websocket("/depends")
    async def depends(websocket: WebSocket, value: Annotated[str, Depends(dependency)]) -> None:
        seen.append(f"depends {value}")
        await websocket.close(4000)

    app.include_router(router)
    app.state.upgrades = direct_endpoints(router)
    return app, router, seen


async def upgrade(app: DirectUpgrades, path: str, root_path: str = "") -> list[dict[str, Any]]:
    """Run one WebSocket upgrade of ``path`` through ``app``: what it sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": path, "root_path": root_path, "query_string": b"",
             "headers": [], "asgi": {"version": "3.0"}, "scheme": "ws", "subprotocols": []}
    await app(scope, receive, send)  # type: ignore[arg-type]
    return sent


def test_only_routes_that_take_nothing_but_the_socket_are_direct() -> None:
    _, router, _ = probe_app()
    assert set(direct_endpoints(router)) == {"/plain"}


def test_the_gateway_serves_each_of_its_socket_endpoints_directly(pg: EmbeddedPostgres) -> None:
    settings = Settings(database_url=pg.dsn, jwt_secret=TEST_SECRET, channels=REPO / "channels")
    assert set(create_app(settings).state.upgrades) == {
        "/v1/ws", "/realtime/v1/websocket", "/socket/websocket",
    }


async def test_a_direct_upgrade_skips_the_middleware_and_others_do_not() -> None:
    app, _, seen = probe_app()
    direct = DirectUpgrades(app)
    assert direct.state is app.state
    assert (await upgrade(direct, "/plain"))[-1]["code"] == 4000
    assert seen == ["plain app=True"]
    seen.clear()
    await upgrade(direct, "/item/x")
    assert seen == ["middleware websocket /item/x", "item x"]
    seen.clear()
    await upgrade(direct, "/plain", root_path="/behind")  # Starlette's routing decides
    assert seen[0] == "middleware websocket /plain"
