"""FastAPI dependencies: the narrow parts an endpoint needs, by type. The one place that reads
the app's state; endpoints never see the node."""

from __future__ import annotations

from collections.abc import Callable
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


def _parts(connection: HTTPConnection) -> Parts:
    parts: Parts = connection.app.state.parts
    return parts


def _settings(connection: HTTPConnection) -> Settings:
    return _parts(connection).settings


def _channels(connection: HTTPConnection) -> ChannelSet:
    return _parts(connection).channels


def _verifier(connection: HTTPConnection) -> Verifier:
    return _parts(connection).verifier


def _connections(connection: HTTPConnection) -> Connections:
    return _parts(connection).connections


def _admission(connection: HTTPConnection) -> Admission:
    return _parts(connection).admission


def _publisher(connection: HTTPConnection) -> Publisher:
    return _parts(connection).publisher


def _streaming(connection: HTTPConnection) -> Callable[[], bool]:
    return _parts(connection).streaming


SettingsDep = Annotated[Settings, Depends(_settings)]
ChannelsDep = Annotated[ChannelSet, Depends(_channels)]
VerifierDep = Annotated[Verifier, Depends(_verifier)]
ConnectionsDep = Annotated[Connections, Depends(_connections)]
AdmissionDep = Annotated[Admission, Depends(_admission)]
PublisherDep = Annotated[Publisher, Depends(_publisher)]
StreamingDep = Annotated[Callable[[], bool], Depends(_streaming)]
