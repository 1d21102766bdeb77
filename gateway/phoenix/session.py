"""A Supabase Realtime-compatible session: Phoenix channels whose ``postgres_changes`` bindings
become subscriptions to rtgw's own channels. A sans-I/O state machine (see gateway/session.py).

Authorization is rtgw's: a binding on a table is allowed only when a channel definition grants
that table to the token's scopes (``ChannelSet.readable``, the same grants as the native
protocol), and that channel's partition and projection apply, so a Supabase client never sees a
row or column that the native protocol would not show it. Each Phoenix channel has its own
token (``access_token`` in the join, refreshed by pushes), and its own expiry. Refusals follow
Supabase: authorization fails the join with ``{"reason": "<code>: <message>"}``; a bad filter
gets an ok reply and then a ``system`` error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from gateway import session as out
from gateway.auth import Claims
from gateway.channels import Channel, ChannelSet
from gateway.errors import GatewayError
from gateway.events import GapNotice, TopicEvent
from gateway.filters import Filter
from gateway.hub import Subscription, topic_key
from gateway.limits import Limits
from gateway.phoenix import frames as phoenix
from gateway.phoenix.codec import CODEC
from gateway.router import ChannelPayload, Shape

SUBSCRIBED = "Subscribed to PostgreSQL"
LIVE_CHECK_S = 0.25


@dataclass(frozen=True, slots=True)
class Target:
    """Where one binding's rows come from: an rtgw channel, narrowed for one token."""

    binding: phoenix.Binding
    channel: Channel
    base: str
    filter: Filter | None

    @property
    def key(self) -> str:
        return topic_key(self.base, self.filter)


@dataclass(eq=False, slots=True)
class JoinedChannel:
    """One joined Phoenix topic; it renders the events of every hub topic its bindings use.
    A change that several bindings want goes out once, with every one of their ids (as
    Supabase sends it), although it arrives once per hub topic (one per filter)."""

    serializer: phoenix.Serializer
    topic: str
    join_ref: str | None
    token: str
    claims: Claims
    targets: tuple[Target, ...]
    keys: dict[str, str] = field(default_factory=dict)  # hub topic key -> its base
    _heads: dict[tuple[int, ...], bytes] = field(default_factory=dict)
    # Per (base, op): the ids of the bindings without a filter that want it, and the targets
    # with a filter (tested per event), worked out once rather than for every event.
    _wanting: dict[
        tuple[str | None, str], tuple[frozenset[int], tuple[tuple[int, Filter], ...]]
    ] = field(default_factory=dict)
    _tail: bytes = b""
    _last: object = None  # the payload last rendered: its other topics' copies are dropped
    shared: ClassVar[bool] = False  # rendered per joined channel (its ids and topic)

    def __post_init__(self) -> None:
        self._tail = b"}" + self.serializer.parts("", "postgres_changes")[1]

    def event(self, event: TopicEvent) -> out.Frame | None:
        """A ``postgres_changes`` push spliced from a cached head and the shared data."""
        payload = event.payload
        left_filter = isinstance(payload, ChannelPayload) and payload.shape is Shape.FILTERED_OUT
        if payload is self._last or left_filter:
            return None  # sent already; or left a filter, which Supabase does not tell
        self._last = payload
        base, op = self.keys.get(event.topic), payload.op
        wanting = self._wanting.get((base, op))
        if wanting is None:
            wanted = [t for t in self.targets if t.base == base and t.binding.wants(op)]
            wanting = self._wanting[(base, op)] = (
                frozenset(t.binding.id for t in wanted if t.filter is None),
                tuple((t.binding.id, t.filter) for t in wanted if t.filter is not None),
            )
        plain, filtered = wanting
        passing = {id_ for id_, row_filter in filtered if payload.view(row_filter) is payload}
        ids = tuple(sorted(plain | passing))
        if not ids:
            return None
        head = self._heads.get(ids)
        if head is None:
            prefix = self.serializer.parts(self.topic, "postgres_changes")[0]
            head = self._heads[ids] = (
                prefix + b'{"ids":[%s],"data":' % ",".join(map(str, ids)).encode()
            )
        return b"".join((head, event.encoded(CODEC), self._tail)).decode(), None

    def gap(self, notice: GapNotice) -> str:
        return self.serializer.encode(
            phoenix.system(
                self.topic, self.join_ref, "postgres_changes", "ok",
                f"gap: changes may have been lost upstream ({notice.reason}); refetch",
            )
        )


class PhoenixSession:
    """A Phoenix socket: any number of joined topics, heartbeats, an idle timeout."""

    __slots__ = (
        "serializer", "_channels", "_limits", "_api_key", "_live", "_clock", "idle_timeout_s",
        "joined",
    )

    name = "phoenix"
    resume_hint = "reconnect"

    def __init__(
        self,
        serializer: phoenix.Serializer,
        channels: ChannelSet,
        limits: Limits,
        api_key: str | None,
        live: Callable[[], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.serializer = serializer
        self._channels = channels
        self._limits = limits
        self._api_key = api_key  # the join token when a join carries none (Supabase does this)
        self._live = live  # True while the source streams: only then are changes flowing
        self._clock = clock
        self.idle_timeout_s: float | None = limits.idle_timeout_s
        self.joined: dict[str, JoinedChannel] = {}

    # -- Session ---------------------------------------------------------------------------

    def start(self) -> out.Outputs:
        """The ``apikey`` was checked at the upgrade; each join brings its own token."""
        return ()

    def refuse(self, error: GatewayError) -> out.Outputs:
        """Supabase has no error frame outside a channel: like Supabase's "Too many messages
        per second", a socket-level refusal closes the socket after system errors."""
        return [out.Fail(error)]

    def fatal_frames(self, error: GatewayError, ref: str | None) -> Sequence[str]:
        text = f"{error.code}: {error.message}"
        return [
            self.serializer.encode(phoenix.system(c.topic, c.join_ref, "system", "error", text))
            for c in self.joined.values()
        ]

    def reauthorize(self, update: Callable[[Claims], Claims]) -> out.Outputs:
        """A channel whose bindings its user may no longer all read ends with ``phx_error``
        (the clients' CHANNEL_ERROR, with the reason) and ``phx_close`` (so they do not
        rejoin by themselves); the socket stays open."""
        outputs: list[out.Output] = []
        for joined in list(self.joined.values()):
            claims = update(joined.claims)
            if claims is joined.claims:
                continue
            joined.claims = claims
            refusal = _refusal(joined, claims)
            if refusal is None:
                continue
            del self.joined[joined.topic]
            name = joined.topic.removeprefix(phoenix.TOPIC_PREFIX)
            reason = (f"forbidden: You no longer have permission to read from this Channel "
                      f"topic: {name} ({refusal.message})")
            outputs += [
                *self._unsubscribe(joined),
                self._push(phoenix.channel_error(joined.topic, joined.join_ref, reason)),
                self._push(phoenix.close(joined.topic, joined.join_ref)),
            ]
        return outputs

    def receive(self, data: str | bytes) -> out.Outputs:
        try:
            message = self.serializer.decode(data)
        except phoenix.PhoenixFrameError as exc:
            return [out.Fail(exc)]
        if message.topic == phoenix.PHOENIX_TOPIC:
            if message.event == "heartbeat":
                return [self._push(phoenix.reply(message, "ok", {}))]
            return [self._push(phoenix.reply(message, "error", {"reason": "unmatched topic"}))]
        match message.event:
            case "phx_join":
                return self._join(message)
            case "phx_leave":
                outputs: list[out.Output] = [self._push(phoenix.reply(message, "ok", {}))]
                joined = self.joined.pop(message.topic, None)
                if joined is not None:
                    outputs += self._unsubscribe(joined)
                    outputs.append(self._push(phoenix.close(joined.topic, joined.join_ref)))
                return outputs
            case _ if message.topic not in self.joined:
                return [self._push(phoenix.reply(message, "error", {"reason": "unmatched topic"}))]
            case "access_token":
                return self._refresh(self.joined[message.topic], message)
            case _:
                error = GatewayError(
                    "bad_frame", f"event {message.event!r} is not supported by rtgw"
                )
                return [self._push(phoenix.error_reply(message, error))]

    def _push(self, message: phoenix.Message) -> out.Send:
        return out.Send(self.serializer.encode(message))

    # -- joining -----------------------------------------------------------------------------

    def _join(self, message: phoenix.Message) -> out.Outputs:
        outputs: list[out.Output] = []
        previous = self.joined.pop(message.topic, None)
        if previous is not None:  # Phoenix closes the old channel before joining again
            outputs += self._unsubscribe(previous)
            outputs.append(self._push(phoenix.close(previous.topic, previous.join_ref)))
        try:
            request = phoenix.parse_join(message.payload)
        except GatewayError as exc:
            return [*outputs, self._push(phoenix.error_reply(message, exc))]

        def ready(problem: GatewayError | None) -> out.Outputs:
            token = request.access_token
            if token is None or token.startswith("sb_"):
                token = self._api_key
            if problem is None and token is None:
                problem = GatewayError("auth_required", "send 'access_token' in the join")
            if problem is not None:
                return [self._push(phoenix.error_reply(message, problem))]
            assert token is not None
            return [out.Verify(token, lambda result: self._joined(message, request, token, result))]

        outputs.append(out.AwaitStream(None, ready))
        return outputs

    def _joined(
        self,
        message: phoenix.Message,
        request: phoenix.Join,
        token: str,
        result: Claims | GatewayError,
    ) -> out.Outputs:
        try:
            if isinstance(result, GatewayError):
                raise result
            claims = result
            targets, filter_error = self._resolve(request.bindings, claims)
            used = sum(len(c.keys) for c in self.joined.values())
            if used + len({t.key for t in targets}) > self._limits.max_subscriptions:
                raise GatewayError(
                    "too_many_subscriptions",
                    f"at most {self._limits.max_subscriptions} subscriptions per connection",
                )
        except GatewayError as exc:
            return [self._push(phoenix.error_reply(message, exc))]
        echoed = [{**b.raw, "id": b.id} for b in request.bindings]
        outputs: list[out.Output] = [
            self._push(phoenix.reply(message, "ok", {"postgres_changes": echoed}))
        ]
        if filter_error is not None:
            text = f"{filter_error.code}: {filter_error.message}"
            outputs.append(self._push(
                phoenix.system(message.topic, message.join_ref, "postgres_changes", "error", text)
            ))
            return outputs
        joined = JoinedChannel(
            self.serializer, message.topic, message.join_ref, token, claims, targets
        )
        self.joined[message.topic] = joined
        outputs += self._subscribe(joined)
        outputs.append(self._expiry(joined, claims))
        if targets:
            outputs += self._announce_when_live(joined)
        return outputs

    def _announce_when_live(self, joined: JoinedChannel) -> out.Outputs:
        """"Subscribed to PostgreSQL" once changes really flow: the hub registers the topics
        (``out.Subscribe``) before this is sent, and the source must be streaming (checked again
        every ``LIVE_CHECK_S`` until it is, or until the topic is left)."""
        if self.joined.get(joined.topic) is not joined:
            return ()
        if self._live():
            return [self._push(
                phoenix.system(joined.topic, joined.join_ref, "postgres_changes", "ok", SUBSCRIBED)
            )]
        return [out.Timer(
            f"live {joined.topic}", self._clock() + LIVE_CHECK_S,
            lambda: self._announce_when_live(joined),
        )]

    def _resolve(
        self, bindings: Iterable[phoenix.Binding], claims: Claims
    ) -> tuple[tuple[Target, ...], GatewayError | None]:
        """Authorize every binding (raising on the first refusal) and parse the filters
        (returning the first filter error: Supabase reports those after the join)."""
        targets = []
        filter_error = None
        for binding in bindings:
            for channel, base in self._channels.readable(binding.schema, binding.table, claims):
                row_filter = None
                try:
                    row_filter = channel.filter_for(binding.filter)
                except GatewayError as exc:
                    filter_error = filter_error or exc
                targets.append(Target(binding, channel, base, row_filter))
        return tuple(targets), filter_error

    def _subscribe(self, joined: JoinedChannel) -> out.Outputs:
        outputs: list[out.Output] = []
        for target in joined.targets:
            key = target.key
            if key not in joined.keys:
                joined.keys[key] = target.base
                outputs.append(out.Subscribe(
                    (joined.topic, key), target.channel.name, target.base, target.filter, None,
                    joined, _nothing,
                ))
        return outputs

    def _unsubscribe(self, joined: JoinedChannel) -> out.Outputs:
        outputs: list[out.Output] = [
            out.Timer(joined.topic, None), out.Timer(f"live {joined.topic}", None)
        ]
        outputs += [out.Unsubscribe((joined.topic, key)) for key in joined.keys]
        joined.keys.clear()
        return outputs

    # -- tokens ------------------------------------------------------------------------------

    def _expiry(self, joined: JoinedChannel, claims: Claims) -> out.Timer:
        return out.Timer(joined.topic, claims.expires_at, lambda: self._token_expired(joined))

    def _refresh(self, joined: JoinedChannel, message: phoenix.Message) -> out.Outputs:
        payload = message.payload if isinstance(message.payload, dict) else {}
        token = payload.get("access_token")
        if not isinstance(token, str) or token == joined.token or token.startswith("sb_"):
            return ()  # Supabase ignores these silently

        def verified(result: Claims | GatewayError) -> out.Outputs:
            if self.joined.get(joined.topic) is not joined:  # it ended while we verified
                return ()
            if isinstance(result, GatewayError):
                return self._close_channel(joined, result)
            refusal = _refusal(joined, result)
            if refusal is not None:
                return self._close_channel(joined, refusal)
            joined.token, joined.claims = token, result
            return [self._expiry(joined, result)]

        return [out.Verify(token, verified)]

    def _token_expired(self, joined: JoinedChannel) -> out.Outputs:
        if self.joined.get(joined.topic) is not joined:
            return ()
        return self._close_channel(
            joined, GatewayError("token_expired", "the token expired; push access_token before exp")
        )

    def _close_channel(self, joined: JoinedChannel, error: GatewayError) -> out.Outputs:
        """A ``system`` error, then ``phx_close``: the socket stays open."""
        del self.joined[joined.topic]
        text = f"{error.code}: {error.message}"
        return [
            *self._unsubscribe(joined),
            self._push(phoenix.system(joined.topic, joined.join_ref, "system", "error", text)),
            self._push(phoenix.close(joined.topic, joined.join_ref)),
        ]


def _refusal(joined: JoinedChannel, claims: Claims) -> GatewayError | None:
    """Why ``claims`` may not read every binding of ``joined`` as it reads them, or None."""
    for target in joined.targets:
        try:
            base = target.channel.topic_base(claims)
        except GatewayError as exc:
            return exc
        if base != target.base:
            return GatewayError(
                "forbidden",
                f"the new token reads other rows of {target.channel.name!r}; join again",
            )
    return None


def _nothing(subscription: Subscription) -> out.Outputs:
    """A Phoenix binding's subscription has no reply of its own: the join replied."""
    return ()
