"""gateway.transport.posts: a POST to a route whose function takes only the request reaches it
without the middleware stack and FastAPI's request handling, its errors answered by the app's
own exception handlers; everything else goes through FastAPI as before."""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from gateway.app import create_app
from gateway.settings import Settings
from gateway.sources.embedded import EmbeddedPostgres
from gateway.transport.posts import direct_posts
from gateway.transport.upgrades import DirectUpgrades
from tests.conftest import REPO, TEST_SECRET
from tests.integration.transport.recording import dependency, recording_app


class Refused(Exception):
    pass


def probe_app() -> tuple[FastAPI, APIRouter, list[str]]:
    """An app whose middleware records every request it sees, with POST routes of each kind."""
    app, router, seen = recording_app()

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"code": "refused", "message": str(exc)}, status_code=403)

    @router.post("/take")
    async def take(request: Request) -> Response:
        body = await request.body()
        if body == b"refuse":
            raise Refused("not this one")
        seen.append(f"take app={request.app is app}")
        return Response(b"took " + body, media_type="text/plain")

    @router.post("/item/{name}")
    async def item(request: Request, name: str) -> Response:
        return Response(name)

    @router.post("/depends")
    async def depends(request: Request, value: Annotated[str, Depends(dependency)]) -> Response:
        return Response(value)

    @router.get("/read")
    async def read(request: Request) -> Response:
        return Response(b"read")

    app.include_router(router)
    app.state.upgrades = {}
    app.state.posts = direct_posts(router)
    return app, router, seen


def test_only_post_routes_that_take_nothing_but_the_request_are_direct() -> None:
    _, router, _ = probe_app()
    assert set(direct_posts(router)) == {"/take"}


def test_the_gateway_serves_its_publish_endpoints_directly(pg: EmbeddedPostgres) -> None:
    settings = Settings(database_url=pg.dsn, jwt_secret=TEST_SECRET, channels=REPO / "channels")
    assert set(create_app(settings).state.posts) == {"/v1/publish", "/v1/publish/batch"}


async def test_a_direct_post_skips_the_middleware_and_others_do_not() -> None:
    app, _, seen = probe_app()
    transport = httpx.ASGITransport(app=DirectUpgrades(app))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as http:
        answer = await http.post("/take", content=b"it")
        assert (answer.status_code, answer.text) == (200, "took it")
        assert seen == ["take app=True"]
        seen.clear()

        refused = await http.post("/take", content=b"refuse")  # the app's handler answers
        assert refused.status_code == 403
        assert refused.json() == {"code": "refused", "message": "not this one"}
        assert seen == []

        assert (await http.get("/take")).status_code == 405  # not a POST: FastAPI decides
        assert seen == ["middleware http GET /take"]
        seen.clear()
        assert (await http.post("/depends")).text == "resolved"
        assert seen == ["middleware http POST /depends"]
