"""FastAPI dependencies: the narrow parts an endpoint needs, by type. The one place that reads
the app's state; endpoints never see the node.

WebSocket endpoints (and the publish endpoints) take ``parts_of(connection)`` instead:
resolving dependencies on every upgrade cost 1.9 KB per idle connection and a third of the
connection rate (bench.fanout, N = 1,000: 17.5 vs 15.6 KB, 717 vs 1,112 connections/s).

The dependencies here are coroutine functions: FastAPI runs a plain function dependency in its
thread pool, a thread hop per dependency and request (a fifth of a publish's CPU when the
publish endpoint took four of them)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from gateway.auth import Verifier
from gateway.channels import ChannelSet
from gateway.connection import Connections
from gateway.publish import Publisher
from gateway.settings import Settings
from gateway.transport.socket import Admission


@dataclass(frozen=True, slots=True)
class Parts:
    """What the app hands its endpoints (``app.state.parts``)."""

    settings: Settings
    channels: ChannelSet
    verifier: Verifier
    connections: Connections
    admission: Admission
    publisher: Publisher
    streaming: Callable[[], bool]  # whether changes flow from the source right now


def _part(name: str) -> Callable[[HTTPConnection], Coroutine[None, None, object]]:
    """A dependency returning one of the app's ``Parts``; a coroutine function, so FastAPI
    calls it on the loop instead of in its thread pool."""

    async def part(connection: HTTPConnection) -> object:
        return getattr(parts_of(connection), name)

    return part


SettingsDep = Annotated[Settings, Depends(_part("settings"))]
ChannelsDep = Annotated[ChannelSet, Depends(_part("channels"))]
VerifierDep = Annotated[Verifier, Depends(_part("verifier"))]
ConnectionsDep = Annotated[Connections, Depends(_part("connections"))]
AdmissionDep = Annotated[Admission, Depends(_part("admission"))]


def parts_of(connection: HTTPConnection) -> Parts:
    """The app's parts, for an endpoint on a hot path (a WebSocket upgrade, a publish), where
    resolving dependencies costs more than the parts it would hand over."""
    parts: Parts = connection.app.state.parts
    return parts
