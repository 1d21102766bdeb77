"""How rtgw runs under uvicorn: one place for the server options."""

from __future__ import annotations

from fastapi import FastAPI
from uvicorn import Config

from gateway.settings import Settings
from gateway.transport.direct import DirectSendProtocol


def uvicorn_config(app: FastAPI, settings: Settings, log_level: str = "info") -> Config:
    """The sans-I/O websockets implementation, frames capped at ``max_frame_bytes``, and no
    per-message compression: frames are encoded once and shared, and deflating them per client
    would cost more CPU than the fan-out itself."""
    return Config(
        app,
        host=settings.host,
        port=settings.port,
        ws=DirectSendProtocol,
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=settings.ping_interval_s,
        ws_ping_timeout=settings.ping_timeout_s,
        log_level=log_level,
        timeout_graceful_shutdown=10,
    )
