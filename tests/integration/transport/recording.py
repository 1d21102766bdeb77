"""A FastAPI app that records what reaches its middleware, for the tests of the routes that
bypass it (``transport/upgrades.py``, ``transport/posts.py``)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send


async def dependency() -> str:
    """A dependency, so that a route taking it is not served directly."""
    return "resolved"


def recording_app() -> tuple[FastAPI, APIRouter, list[str]]:
    """An app whose middleware records every scope it sees (``middleware <type> [<method>]
    <path>``), the router for the test's routes, and the list both write to."""
    seen: list[str] = []
    app = FastAPI()

    class Recorder:
        def __init__(self, inner: ASGIApp) -> None:
            self.inner = inner

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            method = scope.get("method")
            seen.append(" ".join(
                ["middleware", scope["type"], *([method] if method else []), scope["path"]]
            ))
            await self.inner(scope, receive, send)

    app.add_middleware(Recorder)
    return app, APIRouter(), seen
