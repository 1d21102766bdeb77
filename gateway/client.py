"""One native-protocol connection: authentication, subscriptions, refresh.

The transport only moves bytes; everything a connection decides happens here. The outbox, the
writer task and the lifecycle are ``BaseConnection``'s (gateway/connection.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from gateway.auth import Claims, Verifier
from gateway.channels import ChannelSet
from gateway.connection import BaseConnection, Limits, Transport
from gateway.errors import GatewayError
from gateway.events import GapNotice, TopicEvent
from gateway.hub import Hub, topic_key
from gateway.protocol import native


class Connection(BaseConnection):
    """A native-protocol session bound to a transport. ``serve`` runs it to the end."""

    _resume_hint = "reconnect and resume with 'since'"

    def __init__(
        self,
        transport: Transport,
        *,
        verifier: Verifier,
        channels: ChannelSet,
        hub: Hub,
        limits: Limits,
        bearer: str | None = None,
    ) -> None:
        super().__init__(transport, limits)
        self._verifier = verifier
        self._channels = channels
        self._hub = hub
        self.claims: Claims | None = None
        self.subscriptions: dict[str, tuple[str, str]] = {}  # topic key -> (channel, base)
        self._bearer = bearer  # from the Authorization header, used once at the start

    # -- the hub's side ------------------------------------------------------------------

    def deliver(self, event: TopicEvent) -> None:
        self._send(event.native_frame, event.native_wire)

    def gap(self, notice: GapNotice) -> None:
        self._send(native.gap_frame(notice))

    # -- lifecycle -----------------------------------------------------------------------

    async def _on_start(self) -> None:
        self._expire_at("auth", time.time() + self._limits.auth_timeout_s, self._auth_deadline)
        bearer, self._bearer = self._bearer, None
        if bearer is not None:
            await self._authenticate(bearer, ref=None)

    def _fatal_frames(self, error: GatewayError, ref: str | None) -> Iterable[str]:
        return (native.error_frame(error, ref),)

    @property
    def subscription_count(self) -> int:
        return len(self.subscriptions)

    def _end_all_subscriptions(self) -> None:
        for key in list(self.subscriptions):
            self._hub.unsubscribe(self, key)
        self.subscriptions.clear()

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
                    await self._hub.wait_caught_up()
                    if command.since is not None:
                        await self._hub.reach(command.since)
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
        self._cancel_expiry("auth")
        self._expire_at("token", claims.expires_at, self._token_expired)

    def _token_expired(self) -> None:
        self.fail(GatewayError("token_expired", "the token expired; send 'refresh' before exp"))

    def _auth_deadline(self) -> None:
        self.fail(GatewayError("auth_timeout", "no valid 'auth' frame arrived in time"))

    def _subscribe(self, command: native.Subscribe) -> None:
        if self.claims is None:
            raise GatewayError("auth_required")
        grant = self._channels.grant(command.channel, self.claims, command.filter)
        channel, base, row_filter = grant.channel, grant.base, grant.filter
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
