"""HTTP endpoints beside the sockets: list the channels a token may read, publish to a channel.

Errors are JSON ``{"code", "message"}`` with the same codes as on WebSocket.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from gateway.auth import Claims, Verifier
from gateway.channels import Channel, partition_topic
from gateway.encoding import dumps
from gateway.errors import GatewayError
from gateway.publish import Outgoing, Receipt
from gateway.transport.deps import ChannelsDep, Parts, VerifierDep, parts_of
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


class PublishBatchRequest(BaseModel):
    events: list[PublishRequest] = Field(min_length=1, description="published in this order")


class PublishedTopic(BaseModel):
    topic: str
    offset: int
    epoch: str


class PublishResponse(BaseModel):
    id: str
    topics: list[PublishedTopic]
    delivered: int = Field(description="subscribers the event was handed to")


class PublishBatchResponse(BaseModel):
    published: list[PublishResponse] = Field(description="one per event, in the request's order")


Wanted = TypeVar("Wanted", bound=BaseModel)


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


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of an endpoint that reads (and bounds) its body itself."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}
    }}}


@router.post("/publish", response_model=PublishResponse, openapi_extra=_body_schema(PublishRequest))
async def publish(request: Request) -> Response:
    """Send an application event to a channel's topic (every filtered variant of it too), with
    the same offsets, history and authorization as changes. Needs the publish scope
    (``RTGW_PUBLISH_SCOPE``) or the service role."""
    parts = parts_of(request)
    claims = await _claims(request, parts.verifier)
    body = await _bounded_body(request, parts.settings.max_publish_bytes)
    wanted = _parsed(PublishRequest, body)
    [(event_id, receipt)] = await parts.publisher.publish([_outgoing(wanted, parts, claims)])
    return _json(_published(event_id, receipt))


@router.post(
    "/publish/batch",
    response_model=PublishBatchResponse,
    openapi_extra=_body_schema(PublishBatchRequest),
)
async def publish_batch(request: Request) -> Response:
    """Send several events in one request, all or none: every event is checked first (a
    refusal names the first bad one, ``events.<i>``, and publishes nothing), then they are
    written in one transaction, in order. Each gets its own id, topics and offsets, as from
    ``/v1/publish``. At most ``RTGW_MAX_PUBLISH_BATCH`` events and
    ``RTGW_MAX_PUBLISH_BATCH_BYTES`` of body; each payload at most ``RTGW_MAX_PUBLISH_BYTES``."""
    parts = parts_of(request)
    settings = parts.settings
    claims = await _claims(request, parts.verifier)
    body = await _bounded_body(request, settings.max_publish_batch_bytes)
    wanted = _parsed(PublishBatchRequest, body)
    if len(wanted.events) > settings.max_publish_batch:
        raise GatewayError(
            "batch_too_large",
            f"{len(wanted.events)} events in one request; at most {settings.max_publish_batch}",
        )
    outgoing = []
    for index, item in enumerate(wanted.events):
        try:
            outgoing.append(_outgoing(item, parts, claims, settings.max_publish_bytes))
        except GatewayError as exc:
            raise GatewayError(exc.code, f"events.{index}: {exc.message}") from None
    published = await parts.publisher.publish(outgoing)
    return _json({"published": [_published(*each) for each in published]})


def _parsed(model: type[Wanted], body: bytes) -> Wanted:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "body"
        raise GatewayError("bad_request", f"{where}: {problem['msg']}") from None


def _outgoing(
    wanted: PublishRequest, parts: Parts, claims: Claims, max_payload: int | None = None
) -> Outgoing:
    """The event ``wanted`` names, once the caller may publish it (``max_payload``: the
    encoded payload's bound, in bytes)."""
    channel = parts.channels.get(wanted.channel)
    base = _publish_base(channel, claims, wanted, parts.settings.publish_scope)
    payload = dumps(wanted.payload)
    if max_payload is not None and len(payload) > max_payload:
        raise GatewayError("payload_too_large", f"the payload exceeds {max_payload} bytes")
    return Outgoing(channel.name, base, wanted.event, payload)


def _published(event_id: str, receipt: Receipt) -> dict[str, Any]:
    """A ``PublishResponse``, JSON-ready."""
    return {
        "id": event_id,
        "topics": [{"topic": key, "offset": receipt.offset, "epoch": receipt.epoch}
                   for key in receipt.topics],
        "delivered": receipt.delivered,
    }


def _json(value: Any) -> Response:
    """A JSON response, encoded once (the endpoints' ``response_model`` documents it)."""
    return Response(dumps(value), media_type="application/json")


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
