"""HTTP endpoints beside the sockets: list the channels a token may read, publish to a channel.

Errors are JSON ``{"code", "message"}`` with the same codes as on WebSocket.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, ValidationError

from gateway.auth import Claims, Verifier
from gateway.channels import Channel, partition_topic
from gateway.errors import GatewayError
from gateway.transport.deps import ChannelsDep, PublisherDep, SettingsDep, VerifierDep
from gateway.transport.socket import bearer_token

router = APIRouter(prefix="/v1", tags=["channels"])
SERVICE_ROLE = "service_role"


class PartitionInfo(BaseModel):
    column: str
    claim: str


class ChannelInfo(BaseModel):
    name: str
    table: str
    operations: list[str]
    columns: list[str] | None = Field(description="the projection; null: every column")
    filterable: list[str] | None = Field(description="null: every column may be filtered")
    partition: PartitionInfo | None
    topic: str = Field(description="the topic a subscription without filter reads")


class PublishRequest(BaseModel):
    channel: str
    event: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    payload: dict[str, Any]
    partition: str | None = Field(
        None, description="the partition value; only the service role may choose it"
    )


class PublishedTopic(BaseModel):
    topic: str
    offset: int
    epoch: str


class PublishResponse(BaseModel):
    id: str
    topics: list[PublishedTopic]
    delivered: int = Field(description="subscribers the event was handed to")


async def _claims(request: Request, verifier: Verifier) -> Claims:
    token = bearer_token(request.headers)
    if token is None:
        raise GatewayError("auth_required", "send Authorization: Bearer <token>")
    return await verifier.verify(token)


def _info(channel: Channel, claims: Claims) -> ChannelInfo | None:
    try:
        topic = channel.topic_base(claims)
    except GatewayError:
        return None
    partition = channel.partition
    return ChannelInfo(
        name=channel.name,
        table=f"{channel.schema}.{channel.table}",
        operations=sorted(op.value for op in channel.operations),
        columns=None if channel.columns is None else list(channel.columns),
        filterable=None if channel.filterable is None else sorted(channel.filterable),
        partition=None if partition is None else PartitionInfo(
            column=partition.column, claim=partition.claim
        ),
        topic=topic,
    )


@router.get("/channels", response_model=list[ChannelInfo])
async def list_channels(
    request: Request, channels: ChannelsDep, verifier: VerifierDep
) -> list[ChannelInfo]:
    """The channels the bearer token may subscribe to, with their filterable columns."""
    claims = await _claims(request, verifier)
    found = (_info(channel, claims) for channel in channels)
    return [info for info in found if info is not None]


@router.post(
    "/publish",
    response_model=PublishResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PublishRequest.model_json_schema()}},
        }
    },
)
async def publish(
    request: Request,
    settings: SettingsDep,
    channels: ChannelsDep,
    verifier: VerifierDep,
    publisher: PublisherDep,
) -> PublishResponse:
    """Send an application event to a channel's topic (every filtered variant of it too), with
    the same offsets, history and authorization as changes. Needs the publish scope
    (``RTGW_PUBLISH_SCOPE``) or the service role."""
    claims = await _claims(request, verifier)
    body = await _bounded_body(request, settings.max_publish_bytes)
    try:
        wanted = PublishRequest.model_validate_json(body)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "body"
        raise GatewayError("bad_request", f"{where}: {problem['msg']}") from None
    channel = channels.get(wanted.channel)
    base = _publish_base(channel, claims, wanted, settings.publish_scope)
    message = {"channel": channel.name, "event": wanted.event, "payload": wanted.payload,
               "time": time.time()}
    event_id, receipt = await publisher.publish(channel.name, base, message)
    topics = [
        PublishedTopic(topic=key, offset=receipt.offset, epoch=receipt.epoch)
        for key in receipt.topics
    ]
    return PublishResponse(id=event_id, topics=topics, delivered=receipt.delivered)


def _publish_base(channel: Channel, claims: Claims, wanted: PublishRequest, scope: str) -> str:
    """The topic base to publish to: any partition for the service role; otherwise the
    caller's own, and only with the publish scope and the channel's read scopes."""
    named = None
    if wanted.partition is not None:
        if channel.partition is None:
            raise GatewayError("bad_request", f"channel {channel.name!r} has no partitions")
        named = partition_topic(channel.name, channel.partition.column, wanted.partition)
    if claims.role == SERVICE_ROLE:
        if channel.partition is not None and named is None:
            raise GatewayError(
                "bad_request",
                f"channel {channel.name!r} is partitioned by {channel.partition.column}: "
                "give 'partition'",
            )
        return named or channel.name
    if scope not in claims.all_scopes:
        raise GatewayError("forbidden", f"publishing requires scope {scope!r} or the service role")
    own = channel.topic_base(claims)
    if named is not None and named != own:
        raise GatewayError("forbidden", "only the service role may publish to another partition")
    return own


async def _bounded_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise GatewayError("payload_too_large", f"the body exceeds {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise GatewayError("payload_too_large", f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
