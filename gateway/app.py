"""The app factory: ``create_app(settings)`` builds FastAPI; its lifespan owns the Node."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gateway.channels import load_channels
from gateway.errors import GatewayError
from gateway.node import Node
from gateway.settings import Settings
from gateway.sources.base import Source
from gateway.sources.postgres import PostgresSource, PostgresSourceConfig
from gateway.transport import native


def build_source(settings: Settings, tables: list[tuple[str, str]]) -> Source:
    if settings.source == "postgres":
        if settings.database_url is None:
            raise GatewayError("config_invalid", "RTGW_DATABASE_URL is not set")
        return PostgresSource(
            PostgresSourceConfig(
                dsn=settings.database_url,
                slot=settings.slot,
                publication=settings.publication,
                tables=tuple(tables),
                slot_mode=settings.slot_mode,
            )
        )
    raise GatewayError("config_invalid", f"RTGW_SOURCE={settings.source} is not available yet")


def create_app(settings: Settings) -> FastAPI:
    """Validate the configuration (raises ``ConfigError``) and build the app."""
    settings.check()
    channels = load_channels(settings.channels)
    node = Node(settings, channels, build_source(settings, channels.tables))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with node:
            yield

    app = FastAPI(title="rtgw", version="0.1.0", lifespan=lifespan)
    app.state.node = node
    app.include_router(native.router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """The source is streaming and clients can subscribe."""
        if node.ready:
            return JSONResponse({"status": "ready"})
        error = GatewayError("not_ready", _not_ready_reason(node))
        return JSONResponse({"code": error.code, "message": error.message}, status_code=503)

    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse(
            {"code": exc.code, "message": exc.message}, status_code=exc.spec.http_status
        )

    return app


def _not_ready_reason(node: Node) -> str:
    last_error = getattr(node.source, "last_error", None)
    if last_error:
        return f"the source is not streaming: {last_error}"
    return "the source is not streaming yet"
