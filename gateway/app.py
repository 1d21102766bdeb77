"""The app factory: ``create_app(settings)`` builds FastAPI; its lifespan owns the Node."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from gateway import metrics
from gateway.bus.base import Bus
from gateway.channels import ChannelSet, load_channels
from gateway.enrich import Enrichment, LookupCache, MemoryCache
from gateway.errors import SPECS, ConfigError, ErrorCode, GatewayError
from gateway.native import endpoint as native_endpoint
from gateway.native import sse
from gateway.node import Node
from gateway.phoenix import endpoint as phoenix_endpoint
from gateway.publish import PUBLISH_WAIT_S
from gateway.roles import Roles
from gateway.settings import Settings
from gateway.sources.base import Source
from gateway.sources.postgres import PostgresSource, PostgresSourceConfig
from gateway.sources.postgres.lookups import PostgresLookups, ReadOnlyPool
from gateway.sources.postgres.provisioning import refuse_unproved_rls, refuse_unusable_roles
from gateway.sources.postgres.roles import PostgresRoles
from gateway.sources.postgres.source import MAX_BATCH
from gateway.tasks.base import TaskQueue
from gateway.tasks.config import check_tasks
from gateway.transport import http
from gateway.transport.deps import Parts
from gateway.transport.posts import direct_posts
from gateway.transport.socket import Admission
from gateway.transport.upgrades import direct_endpoints

log = logging.getLogger("rtgw.http")

# HTTP statuses Starlette raises itself, and the code each one carries.
_HTTP_CODES: dict[int, ErrorCode] = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed"
}


def build_source(settings: Settings, channels: ChannelSet) -> Source:
    tables = channels.tables
    if settings.source == "supabase":
        from gateway.sources.supabase import SupabaseSource, SupabaseSourceConfig

        url, key = settings.supabase_url, settings.supabase_service_key
        assert url and key, "Settings.check requires both"
        election, relay = None, None
        if settings.bus == "redis":  # one gateway of several reads the upstream: a lease elects it
            from gateway.lease import RedisLease
            from gateway.relay import RedisRelay

            election = RedisLease(
                settings.redis_url, f"rtgw:{settings.slot}:lease", settings.takeover_s
            )
            relay = RedisRelay(settings.redis_url, f"rtgw:{settings.slot}:relay", PUBLISH_WAIT_S)
        return SupabaseSource(
            SupabaseSourceConfig(
                url=url,
                service_key=key,
                tables=tuple(tables),
            ),
            election,
            relay,
        )
    if settings.source == "postgres":
        if settings.database_url is None:
            raise GatewayError("config_invalid", "RTGW_DATABASE_URL is not set")
        refuse_unproved_rls(settings.database_url, list(channels))
        if channels.roles is not None:
            refuse_unusable_roles(settings.database_url, channels.roles, settings.publication)
        looked_up = any(channel.lookups for channel in channels)
        return PostgresSource(
            PostgresSourceConfig(
                dsn=settings.database_url,
                slot=settings.slot,
                publication=settings.publication,
                tables=tuple(tables),
                channels=tuple(channels),
                slot_mode=settings.slot_mode,
                standby_retry_s=settings.takeover_s / 3 if settings.bus == "redis" else None,
                # Lookups are batched per transaction: hand large ones on whole (bounded).
                transaction_part=settings.enrich_batch_max if looked_up else MAX_BATCH,
            )
        )
    raise GatewayError("config_invalid", f"RTGW_SOURCE={settings.source} is not known")


def build_bus(settings: Settings, channels: ChannelSet) -> Bus | None:
    """The Redis bus for ``RTGW_BUS=redis`` (keys under ``rtgw:<slot>:``); None: the node's
    own memory bus."""
    if settings.bus != "redis":
        return None
    from gateway.bus.redis import RedisBus, RedisBusConfig

    return RedisBus(
        RedisBusConfig(
            settings.redis_url, f"rtgw:{settings.slot}", settings.history_size,
            settings.history_total, settings.history_age_s,
        ),
        channels,
    )


def build_enrichment(settings: Settings, channels: ChannelSet) -> Enrichment | None:
    """The lookups' cache and batching, when a channel declares lookups (they read the
    database: ``RTGW_DATABASE_URL``)."""
    if not any(channel.lookups or channel.enrichers for channel in channels):
        return None
    if settings.database_url is None:
        raise ConfigError("channel lookups ([channels.<c>.enrich.<name>]) read the database: "
                          "set RTGW_DATABASE_URL")
    cache: LookupCache
    if settings.cache == "redis":
        from gateway.enrich_redis import RedisCache

        cache = RedisCache(settings.redis_url, settings.cache_prefix, settings.enrich_cache_size,
                           settings.enrich_ttl_s)
    else:
        cache = MemoryCache(settings.enrich_cache_size, settings.enrich_ttl_s)
    return Enrichment(
        channels, PostgresLookups(settings.database_url), cache,
        pool=ReadOnlyPool(settings.database_url),
    )


def build_roles(settings: Settings, channels: ChannelSet) -> Roles | None:
    """The roles cache, when a channels file declares ``[roles]`` (read from the database:
    ``RTGW_DATABASE_URL``)."""
    if channels.roles is None:
        return None
    if settings.database_url is None:
        raise ConfigError(f"{channels.roles.source}: [roles] reads the database: "
                          "set RTGW_DATABASE_URL")
    return Roles(
        channels.roles, PostgresRoles(settings.database_url, channels.roles),
        settings.roles_cache_size,
    )


def build_tasks(settings: Settings, channels: ChannelSet) -> TaskQueue | None:
    """The task queue, when a channel declares tasks; their webhook targets and the signing
    secret are checked first (raises ``ConfigError``)."""
    if not any(channel.tasks for channel in channels):
        return None
    check_tasks(settings, channels)
    from gateway.tasks.queue import RQTaskQueue

    return RQTaskQueue(settings)


def create_app(settings: Settings, *, dashboard: bool = False) -> FastAPI:
    """Validate the configuration (raises ``ConfigError``) and build the app. ``dashboard``
    mounts the demo's live page at ``/`` (it hands out development tokens: demo only)."""
    settings.check()
    channels = load_channels(settings.channels)
    source = build_source(settings, channels)
    node = Node(
        settings, channels, source, build_bus(settings, channels),
        observe=metrics.schedule_delivery_observation,
        enrichment=build_enrichment(settings, channels), roles=build_roles(settings, channels),
        tasks=build_tasks(settings, channels),
    )
    registry = metrics.parts_registry(
        metrics.Parts(
            connections=node.connections, hub=node.hub, router=node.router,
            verifier=node.verifier, source=source, enrichment=node.enrichment,
            roles=node.roles,
            tasks=node.tasks,
            slot_owner=lambda: node.slot_owner,
            publishing=node.publisher.stats,
        )
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with node:
            yield

    app = FastAPI(title="rtgw", version="0.1.0", lifespan=lifespan)
    app.state.node = node  # for the server's drain and the dashboard
    app.state.parts = Parts(
        settings=settings, channels=channels, verifier=node.verifier,
        connections=node.connections,
        admission=Admission(settings.allowed_origins, node.addresses),
        publisher=node.publisher, streaming=node.streaming,
    )
    app.include_router(native_endpoint.router)
    app.include_router(phoenix_endpoint.router)
    app.state.upgrades = direct_endpoints(native_endpoint.router, phoenix_endpoint.router)
    app.include_router(http.router)
    app.state.posts = direct_posts(http.router)
    app.include_router(sse.router)
    if dashboard:
        from gateway import dashboard as page

        app.include_router(page.router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """The source is streaming and clients can subscribe."""
        if node.ready:
            return JSONResponse({"status": "ready", "slot_owner": node.slot_owner})
        raise GatewayError("not_ready", _not_ready_reason(node))

    @app.get("/metrics", tags=["health"])
    async def metrics_endpoint() -> Response:
        """Prometheus metrics."""
        if node.tasks is not None:
            await node.tasks.sample()
        return Response(metrics.render(registry), media_type=metrics.CONTENT_TYPE)

    add_error_handlers(app)
    return app


def error_response(error: GatewayError, status: int | None = None) -> JSONResponse:
    return JSONResponse(
        {"code": error.code, "message": error.message},
        status_code=status or error.spec.http_status,
    )


def add_error_handlers(app: FastAPI) -> None:
    """Every HTTP error is JSON ``{"code","message"}`` with a stable code; never a trace."""

    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code: ErrorCode = _HTTP_CODES.get(exc.status_code, "bad_request")
        message = SPECS[code].summary
        if exc.status_code == 404:
            message = f"no endpoint at {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        elif isinstance(exc.detail, str) and exc.status_code < 500:
            message = exc.detail
        response = error_response(GatewayError(code, message), exc.status_code)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg', '')}"
            for error in exc.errors()
        )
        return error_response(GatewayError("invalid_request", problems or None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(GatewayError("internal_error"))


def _not_ready_reason(node: Node) -> str:
    if node.connections.draining:
        return "the gateway is shutting down"
    if node.connections.refusing is not None:
        return node.connections.refusing.message
    if node.bus.archive is not None:
        return "the bus (Redis) is not connected, or no gateway has started the stream yet"
    last_error = getattr(node.source, "last_error", None)
    if last_error:
        return f"the source is not streaming: {last_error}"
    return "the source is not streaming yet"
