"""How rtgw runs under uvicorn: one place for the server options and the shutdown order."""

from __future__ import annotations

import gc
import socket
import time

import uvicorn
from fastapi import FastAPI
from uvicorn import Config

from gateway.limits import HeadLimits, ProxySet
from gateway.node import Node
from gateway.settings import Settings
from gateway.transport.direct import direct_protocol
from gateway.transport.head import guarded_http
from gateway.transport.upgrades import DirectUpgrades


def uvicorn_config(app: FastAPI, settings: Settings, log_level: str | None = None) -> Config:
    """httptools with rtgw's request-head limits (transport/head.py); the sans-I/O websockets
    implementation with its bounds (transport/direct.py), frames capped at ``max_frame_bytes``,
    and no per-message compression: frames are encoded once and shared, and deflating them per
    client would cost more CPU than the fan-out itself. Logging is left to ``gateway.logs``
    (``log_config=None``). ``X-Forwarded-For`` is believed only from ``RTGW_TRUSTED_PROXIES``
    (none by default), so a client cannot pick the address its limits count against. WebSocket
    upgrades skip FastAPI's middleware and router (transport/upgrades.py), and so do the publish
    POSTs (transport/posts.py)."""
    node: Node = app.state.node
    head = HeadLimits(
        settings.max_head_bytes, settings.max_head_line_bytes, settings.max_head_lines,
        settings.head_timeout_s,
    )
    return Config(
        DirectUpgrades(app),
        host=settings.host,
        port=settings.port,
        http=guarded_http(head, node.addresses, ProxySet(settings.trusted_proxies)),
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies),
        ws=direct_protocol(settings.max_messages_per_s, settings.max_outbox_bytes),
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=settings.ping_interval_s,
        ws_ping_timeout=settings.ping_timeout_s,
        log_config=None,
        log_level=log_level or settings.log_level,
        timeout_graceful_shutdown=int(max(1, settings.shutdown_grace_s)),
    )


class GatewayServer(uvicorn.Server):
    """uvicorn, with rtgw's drain on SIGTERM/SIGINT: stop accepting connections, close every
    client with ``shutting_down`` (1012) and wait for them, then let uvicorn finish and the
    lifespan stop the source (which confirms its slot position). All of it within
    ``RTGW_SHUTDOWN_GRACE_S`` plus the source's final status update."""

    def __init__(self, config: Config, node: Node) -> None:
        super().__init__(config)
        self.node = node

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        started = time.monotonic()
        for server in self.servers:
            server.close()  # stop accepting before asking clients to leave
        grace = self.node.settings.shutdown_grace_s
        await self.node.connections.drain(grace)
        left = grace - (time.monotonic() - started)
        self.config.timeout_graceful_shutdown = max(1, int(left))
        await super().shutdown(sockets)


# Fan-out allocates quickly, and CPython's default thresholds (700, 10, 10) then collect
# generation 0 constantly and walk every connection's objects in full collections. Measured with
# bench.fanout (N = 1,000, one topic, rtgw only, two runs each): 12.0 -> 10.8 us of server CPU
# per delivery and 1,000 -> 1,870 connections set up per second.
# Generation 1 is collected after every other young collection: the history's events outlive a
# young collection, and with (50_000, 20, 20) twenty young collections' worth of them were walked
# at once, a 256 ms pause of the loop once per about 500,000 changes (every 25 s at 20,000
# changes/s: the p99 of that rate); now at most 38 ms, and half the collector's CPU in all
# (``bench.hotpath --gc-pauses``, 600,000 changes into a full history). Full collections (every
# connection's and every event's objects) wait for 500 of those: about 20 million allocations,
# as before, so cyclic garbage that reached the oldest generation waits no longer.
GC_THRESHOLDS = (20_000, 1, 500)


def gateway_server(app: FastAPI, settings: Settings, log_level: str | None = None) -> GatewayServer:
    """The server ``rtgw serve`` and ``rtgw demo`` run (the process's GC thresholds included)."""
    gc.set_threshold(*GC_THRESHOLDS)
    node: Node = app.state.node
    return GatewayServer(uvicorn_config(app, settings, log_level), node)
