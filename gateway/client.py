"""One client connection: authentication, subscriptions, a bounded outbox and its writer.

The transport only moves bytes; everything a connection decides happens here. Frames reach the
socket through one writer task, in order. A client that lets its outbox exceed
``max_outbox_bytes`` is closed with ``slow_consumer`` (4008) and never slows anyone else.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.auth import Claims, Verifier
from gateway.channels import ChannelSet
from gateway.errors import CloseCode, GatewayError
from gateway.events import GapNotice, TopicEvent
from gateway.hub import Hub, topic_key
from gateway.limits import TokenBucket
from gateway.protocol import native
from gateway.protocol.filters import FilterError, parse_filter

log = logging.getLogger("rtgw.client")


class Transport(Protocol):
    def send_now(self, frame: str) -> bool:
        """Write ``frame`` synchronously if the socket can take it right now; False when it
        cannot (the frame is then queued and sent by ``send_text``)."""

    async def send_text(self, frame: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Limits:
    max_frame_bytes: int = 64 * 1024
    max_outbox_bytes: int = 4 * 1024 * 1024
    max_subscriptions: int = 100
    auth_timeout_s: float = 10.0
    max_messages_per_s: float = 20.0  # client frames; bursts of twice that are allowed


Receive = Callable[[], Awaitable[str | bytes | None]]  # None: the client went away


class Connection:
    """A native-protocol session bound to a transport. ``serve`` runs it to the end."""

    def __init__(
        self,
        transport: Transport,
        *,
        verifier: Verifier,
        channels: ChannelSet,
        hub: Hub,
        limits: Limits,
    ) -> None:
        self.id = secrets.token_hex(6)
        self._transport = transport
        self._verifier = verifier
        self._channels = channels
        self._hub = hub
        self._limits = limits
        self.claims: Claims | None = None
        self.subscriptions: dict[str, tuple[str, str]] = {}  # topic key -> (channel, base)
        self._outbox: deque[str] = deque()
        self._outbox_bytes = 0
        self._wake = asyncio.Event()
        self._in_flight = False  # the writer is awaiting a send: later frames must queue
        self._close: tuple[int, str] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._inbound = TokenBucket(limits.max_messages_per_s, 2 * limits.max_messages_per_s)

    # -- the hub's side ------------------------------------------------------------------

    def deliver(self, event: TopicEvent) -> None:
        self._send(event.native_frame)

    def gap(self, notice: GapNotice) -> None:
        self._send(native.gap_frame(notice))

    def _send(self, frame: str) -> None:
        if self._close is not None:
            return
        if not self._outbox and not self._in_flight and self._transport.send_now(frame):
            return  # the hot path: nothing queued ahead of it, straight to the socket
        size = len(frame)
        if self._outbox_bytes + size > self._limits.max_outbox_bytes:
            self._outbox.clear()
            self._outbox_bytes = 0
            self.fail(
                GatewayError(
                    "slow_consumer",
                    f"more than {self._limits.max_outbox_bytes} bytes were waiting; "
                    "reconnect and resume with 'since'",
                )
            )
            return
        self._outbox.append(frame)
        self._outbox_bytes += size
        self._wake.set()

    # -- lifecycle -----------------------------------------------------------------------

    async def serve(self, receive: Receive, bearer: str | None = None) -> None:
        """Run until the client leaves or the connection is closed. Cleans up after itself."""
        loop = asyncio.get_running_loop()
        auth_timer = loop.call_later(self._limits.auth_timeout_s, self._auth_deadline)
        writer = asyncio.create_task(self._write_loop(), name=f"rtgw-writer-{self.id}")
        reader = asyncio.create_task(self._read_loop(receive, bearer), name=f"rtgw-read-{self.id}")
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            auth_timer.cancel()
            if self._expiry is not None:
                self._expiry.cancel()
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            for key in list(self.subscriptions):
                self._hub.unsubscribe(self, key)
            self.subscriptions.clear()

    def fail(self, error: GatewayError, ref: str | None = None) -> None:
        """Send an error frame, then close with the error's close code."""
        if self._close is not None:
            return
        self._outbox.append(native.error_frame(error, ref))
        self._close = (int(error.close_code or CloseCode.POLICY), error.code)
        self._wake.set()

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in the outbox: what this client has not taken yet."""
        return self._outbox_bytes

    @property
    def closing(self) -> bool:
        return self._close is not None

    async def _write_loop(self) -> None:
        transport, outbox = self._transport, self._outbox
        while True:
            await self._wake.wait()
            self._wake.clear()
            while outbox:
                frame = outbox.popleft()
                self._outbox_bytes -= len(frame)
                self._in_flight = True
                try:
                    await transport.send_text(frame)
                finally:
                    self._in_flight = False
            if self._close is not None:
                code, reason = self._close
                await transport.close(code, reason)
                return

    async def _read_loop(self, receive: Receive, bearer: str | None) -> None:
        if bearer is not None:
            await self._authenticate(bearer, ref=None)
        loop = asyncio.get_running_loop()
        while True:
            data = await receive()
            if data is None:
                return
            if self._close is not None:
                continue
            if not self._inbound.allow(loop.time()):
                self._reply_error(
                    GatewayError(
                        "rate_limited",
                        f"at most {self._limits.max_messages_per_s:g} frames per second; "
                        "this frame was not processed",
                    ),
                    None,
                )
                continue
            if len(data) > self._limits.max_frame_bytes:
                self.fail(
                    GatewayError(
                        "frame_too_large",
                        f"frames are limited to {self._limits.max_frame_bytes} bytes",
                    )
                )
                continue
            await self._handle(data)

    # -- frames --------------------------------------------------------------------------

    async def _handle(self, data: str | bytes) -> None:
        try:
            command = native.parse_frame(data)
        except native.FrameError as exc:
            self._reply_error(exc, exc.ref)
            return
        try:
            match command:
                case native.Ping(ref):
                    self._send(native.pong_frame(ref))
                case native.Auth(ref, token):
                    if self.claims is not None:
                        raise GatewayError("already_authenticated")
                    await self._authenticate(token, ref)
                case native.Refresh(ref, token):
                    await self._refresh(token, ref)
                case native.Subscribe():
                    self._subscribe(command)
                case native.Unsubscribe(ref, topic):
                    if topic not in self.subscriptions:
                        raise GatewayError("not_subscribed", f"not subscribed to {topic!r}")
                    self._end_subscription(topic, ref, reason=None)
        except GatewayError as exc:
            self._reply_error(exc, command.ref)

    def _reply_error(self, error: GatewayError, ref: str | None) -> None:
        self._send(native.error_frame(error, ref))

    async def _authenticate(self, token: str, ref: str | None) -> None:
        try:
            claims = await self._verifier.verify(token)
        except GatewayError as exc:
            self.fail(exc, ref)
            return
        self._set_claims(claims)
        self._send(native.ready_frame(self.id, claims.subject, claims.expires_at))

    async def _refresh(self, token: str, ref: str | None) -> None:
        if self.claims is None:
            raise GatewayError("auth_required", "send 'auth' before 'refresh'")
        claims = await self._verifier.verify(token)  # a bad new token leaves the old one in force
        for key, (channel_name, base) in list(self.subscriptions.items()):
            try:
                allowed = self._channels.get(channel_name).topic_base(claims)
            except GatewayError as exc:
                self._end_subscription(key, None, reason=exc.code)
                continue
            if allowed != base:
                self._end_subscription(key, None, reason="partition_changed")
        self._set_claims(claims)
        self._send(native.refreshed_frame(ref, claims.expires_at))

    def _set_claims(self, claims: Claims) -> None:
        self.claims = claims
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, claims.expires_at - time.time())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._token_expired)

    def _token_expired(self) -> None:
        self.fail(GatewayError("token_expired", "the token expired; send 'refresh' before exp"))

    def _auth_deadline(self) -> None:
        if self.claims is None:
            self.fail(GatewayError("auth_timeout", "no valid 'auth' frame arrived in time"))

    def _subscribe(self, command: native.Subscribe) -> None:
        if self.claims is None:
            raise GatewayError("auth_required")
        channel = self._channels.get(command.channel)
        base = channel.topic_base(self.claims)
        row_filter = None
        if command.filter is not None:
            try:
                row_filter = parse_filter(command.filter)
            except FilterError as exc:
                raise GatewayError("bad_filter", str(exc)) from None
            channel.check_filter(row_filter)
        key = topic_key(base, row_filter)
        if key in self.subscriptions:
            raise GatewayError("already_subscribed", f"already subscribed to {key!r}")
        if len(self.subscriptions) >= self._limits.max_subscriptions:
            raise GatewayError(
                "too_many_subscriptions",
                f"at most {self._limits.max_subscriptions} subscriptions per connection",
            )
        subscription = self._hub.subscribe(self, channel.name, base, row_filter, command.since)
        self.subscriptions[subscription.topic] = (channel.name, base)
        self._send(native.subscribed_frame(command.ref, channel.name, subscription))
        for event in subscription.backlog:
            self.deliver(event)

    def _end_subscription(self, key: str, ref: str | None, reason: str | None) -> None:
        self._hub.unsubscribe(self, key)
        del self.subscriptions[key]
        self._send(native.unsubscribed_frame(ref, key, reason))
