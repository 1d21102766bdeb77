"""The native protocol's session: authentication, subscriptions, refresh, as a sans-I/O state
machine (see gateway/session.py). Its driver is ``gateway.connection.Connection``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateway.auth import Claims
from gateway.channels import ChannelSet
from gateway.errors import GatewayError
from gateway.events import GapNotice, TopicEvent
from gateway.hub import Subscription, topic_key
from gateway.limits import Limits
from gateway.native import frames
from gateway.native.codec import CODEC
from gateway.session import (
    AwaitStream,
    Fail,
    Frame,
    Output,
    Outputs,
    Send,
    Subscribe,
    Timer,
    Unsubscribe,
    Verify,
)


class NativeRenderer:
    """Every native subscription renders alike: the event frame the codec shares."""

    shared = True

    def event(self, event: TopicEvent) -> Frame:
        encoded: Frame = event.encoded(CODEC)
        return encoded

    def gap(self, notice: GapNotice) -> str:
        return frames.gap_frame(notice)


RENDERER = NativeRenderer()


class NativeSession:
    """One ``/v1/ws`` (or ``/v1/sse``) connection's protocol state."""

    __slots__ = (
        "name", "_channels", "_limits", "connection_id", "_bearer", "_clock", "claims",
        "subscriptions", "_one_subscription",
    )

    idle_timeout_s = None  # native clients may stay silent (WebSocket pings keep them alive)
    resume_hint = "reconnect and resume with 'since'"

    def __init__(
        self,
        channels: ChannelSet,
        limits: Limits,
        connection_id: str,
        bearer: str | None = None,
        name: str = "native",
        clock: Callable[[], float] = time.time,
        one_subscription: bool = False,
    ) -> None:
        self.name = name
        # SSE: the stream is its one subscription, and ends when the server ends it.
        self._one_subscription = one_subscription
        self._channels = channels
        self._limits = limits
        self.connection_id = connection_id
        self._bearer = bearer  # from the Authorization header, used once at the start
        self._clock = clock
        self.claims: Claims | None = None
        self.subscriptions: dict[str, tuple[str, str]] = {}  # topic key -> (channel, base)

    # -- Session ---------------------------------------------------------------------------

    def start(self) -> Outputs:
        deadline = Timer("auth", self._clock() + self._limits.auth_timeout_s, self._auth_deadline)
        if self._bearer is None:
            return [deadline]
        bearer, self._bearer = self._bearer, None
        return [deadline, *self._authenticate(bearer, None)]

    def receive(self, data: str | bytes) -> Outputs:
        try:
            command = frames.parse_frame(data)
        except frames.FrameError as exc:
            return [Send(frames.error_frame(exc, exc.ref))]
        try:
            match command:
                case frames.Ping(ref):
                    return [Send(frames.pong_frame(ref))]
                case frames.Auth(ref, token):
                    if self.claims is not None:
                        raise GatewayError("already_authenticated")
                    return self._authenticate(token, ref)
                case frames.Refresh(ref, token):
                    if self.claims is None:
                        raise GatewayError("auth_required", "send 'auth' before 'refresh'")
                    return [Verify(token, lambda result: self._refreshed(result, ref))]
                case frames.Subscribe():
                    return [AwaitStream(command.since, lambda problem: self._subscribe(
                        command, problem
                    ))]
                case frames.Unsubscribe(ref, topic):
                    if topic not in self.subscriptions:
                        raise GatewayError("not_subscribed", f"not subscribed to {topic!r}")
                    return self._end_subscription(topic, ref, reason=None)
        except GatewayError as exc:
            return [Send(frames.error_frame(exc, command.ref))]

    def refuse(self, error: GatewayError) -> Outputs:
        return [Send(frames.error_frame(error))]

    def fatal_frames(self, error: GatewayError, ref: str | None) -> Sequence[str]:
        return (frames.error_frame(error, ref),)

    def reauthorize(self, update: Callable[[Claims], Claims]) -> Outputs:
        if self.claims is None or (claims := update(self.claims)) is self.claims:
            return ()
        outputs = self._recheck(claims)
        self.claims = claims
        if outputs and self._one_subscription and not self.subscriptions:
            outputs.append(Fail(GatewayError("forbidden", "a role this stream needed was revoked")))
        return outputs

    # -- authentication ----------------------------------------------------------------------

    def _authenticate(self, token: str, ref: str | None) -> Outputs:
        return [Verify(token, lambda result: self._authenticated(result, ref))]

    def _authenticated(self, result: Claims | GatewayError, ref: str | None) -> Outputs:
        if isinstance(result, GatewayError):
            return [Fail(result, ref)]
        return [
            *self._set_claims(result),
            Send(frames.ready_frame(self.connection_id, result.subject, result.expires_at)),
        ]

    def _refreshed(self, result: Claims | GatewayError, ref: str | None) -> Outputs:
        if isinstance(result, GatewayError):  # a bad new token leaves the old one in force
            return [Send(frames.error_frame(result, ref))]
        outputs = self._recheck(result)
        outputs.extend(self._set_claims(result))
        outputs.append(Send(frames.refreshed_frame(ref, result.expires_at)))
        return outputs

    def _recheck(self, claims: Claims) -> list[Output]:
        """End the subscriptions ``claims`` no longer grant (``forbidden``) or grant another
        partition of (``partition_changed``)."""
        outputs: list[Output] = []
        for key, (channel_name, base) in list(self.subscriptions.items()):
            try:
                allowed = self._channels.get(channel_name).topic_base(claims)
            except GatewayError as exc:
                outputs.extend(self._end_subscription(key, None, reason=exc.code))
                continue
            if allowed != base:
                outputs.extend(self._end_subscription(key, None, reason="partition_changed"))
        return outputs

    def _set_claims(self, claims: Claims) -> list[Timer]:
        self.claims = claims
        return [Timer("auth", None), Timer("token", claims.expires_at, self._token_expired)]

    def _token_expired(self) -> Outputs:
        return [Fail(GatewayError("token_expired", "the token expired; send 'refresh' before exp"))]

    def _auth_deadline(self) -> Outputs:
        return [Fail(GatewayError("auth_timeout", "no valid 'auth' frame arrived in time"))]

    # -- subscriptions -----------------------------------------------------------------------

    def _subscribe(self, command: frames.Subscribe, problem: GatewayError | None) -> Outputs:
        try:
            if problem is not None:
                raise problem
            if self.claims is None:
                raise GatewayError("auth_required")
            grant = self._channels.grant(command.channel, self.claims, command.filter)
            key = topic_key(grant.base, grant.filter)
            if key in self.subscriptions:
                raise GatewayError("already_subscribed", f"already subscribed to {key!r}")
            if len(self.subscriptions) >= self._limits.max_subscriptions:
                raise GatewayError(
                    "too_many_subscriptions",
                    f"at most {self._limits.max_subscriptions} subscriptions per connection",
                )
        except GatewayError as exc:
            return [Send(frames.error_frame(exc, command.ref))]
        name = grant.channel.name

        def subscribed(subscription: Subscription) -> Outputs:
            self.subscriptions[subscription.topic] = (name, grant.base)
            return [Send(frames.subscribed_frame(command.ref, name, subscription))]

        return [
            Subscribe(key, name, grant.base, grant.filter, command.since, RENDERER, subscribed)
        ]

    def _end_subscription(self, key: str, ref: str | None, reason: str | None) -> Outputs:
        del self.subscriptions[key]
        return [Unsubscribe(key), Send(frames.unsubscribed_frame(ref, key, reason))]
