"""A Supabase Realtime-compatible session: Phoenix channels whose ``postgres_changes`` bindings
become subscriptions to rtgw's own channels.

Authorization is rtgw's: a binding on a table is allowed only when a channel definition grants
that table to the token's scopes, and that channel's partition and projection apply, so a
Supabase client never sees a row or column that the native protocol would not show it. Each
Phoenix channel has its own token (``access_token`` in the join, refreshed by pushes), and its
own expiry. Refusals follow Supabase: authorization fails the join with
``{"reason": "<code>: <message>"}``; a bad filter gets an ok reply and then a ``system`` error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gateway.auth import Claims, Verifier
from gateway.channels import Channel, ChannelSet
from gateway.connection import BaseConnection, Limits, Transport
from gateway.errors import GatewayError
from gateway.events import GapNotice, TopicEvent
from gateway.hub import Hub, topic_key
from gateway.protocol import phoenix
from gateway.protocol.filters import Filter, FilterError, parse_filter

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
    """One joined Phoenix topic. It is the hub's subscriber for every topic its bindings use."""

    session: PhoenixSession
    topic: str
    join_ref: str | None
    token: str
    targets: tuple[Target, ...]
    bindings_by_key: dict[str, list[phoenix.Binding]] = field(default_factory=dict)
    _heads: dict[tuple[str, str], bytes | None] = field(default_factory=dict)

    def deliver(self, event: TopicEvent) -> None:
        op = event.payload.op
        cache_key = (event.topic, op)
        if cache_key in self._heads:
            head = self._heads[cache_key]
        else:
            head = self._heads[cache_key] = self._head(event.topic, op)
        if head is not None:
            self.session.send_event(head, event.payload.supabase_data)

    def _head(self, key: str, op: str) -> bytes | None:
        """``...{"ids":[..],"data":`` for this topic and op, or None when no binding wants it."""
        ids = sorted({b.id for b in self.bindings_by_key.get(key, ()) if b.wants(op)})
        if not ids:
            return None
        prefix = self.session.serializer.parts(self.topic, "postgres_changes")[0]
        return prefix + b'{"ids":[%s],"data":' % ",".join(map(str, ids)).encode()

    def gap(self, notice: GapNotice) -> None:
        self.session.push(
            phoenix.system(
                self.topic, self.join_ref, "postgres_changes", "ok",
                f"gap: changes may have been lost upstream ({notice.reason}); refetch",
            )
        )


class PhoenixSession(BaseConnection):
    """A Phoenix socket: any number of joined topics, heartbeats, an idle timeout."""

    def __init__(
        self,
        transport: Transport,
        *,
        serializer: phoenix.Serializer,
        verifier: Verifier,
        channels: ChannelSet,
        hub: Hub,
        limits: Limits,
        api_key: str | None,
        live: Callable[[], bool],
    ) -> None:
        super().__init__(transport, limits)
        self.serializer = serializer
        self._verifier = verifier
        self._channels = channels
        self._hub = hub
        self._api_key = api_key  # the join token when a join carries none (Supabase does this)
        self._live = live  # True while the source streams: only then are changes flowing
        self._idle_timeout_s = limits.idle_timeout_s
        self.joined: dict[str, JoinedChannel] = {}
        self._event_tail = b"}" + serializer.parts("", "postgres_changes")[1]

    # -- sending -------------------------------------------------------------------------

    def push(self, message: phoenix.Message) -> None:
        self._send(self.serializer.encode(message))

    def send_event(self, head: bytes, data: bytes) -> None:
        """A ``postgres_changes`` push spliced from a cached head and the shared data."""
        self._send(b"".join((head, data, self._event_tail)).decode())

    # -- BaseConnection ------------------------------------------------------------------

    def _fatal_frames(self, error: GatewayError, ref: str | None) -> Iterable[str]:
        text = f"{error.code}: {error.message}"
        return [
            self.serializer.encode(phoenix.system(c.topic, c.join_ref, "system", "error", text))
            for c in self.joined.values()
        ]

    @property
    def subscription_count(self) -> int:
        return sum(len(joined.targets) for joined in self.joined.values())

    def _end_all_subscriptions(self) -> None:
        for joined in list(self.joined.values()):
            self._unsubscribe(joined)
        self.joined.clear()

    async def _on_start(self) -> None:
        """The ``apikey`` was checked at the upgrade; each join brings its own token."""

    def _reply_error(self, error: GatewayError, ref: str | None) -> None:
        """Supabase has no error frame outside a channel: like Supabase's "Too many messages
        per second", a socket-level refusal closes the socket after system errors."""
        self.fail(error, ref)

    async def _handle(self, data: str | bytes) -> None:
        try:
            message = self.serializer.decode(data)
        except phoenix.PhoenixFrameError as exc:
            self.fail(GatewayError("bad_frame", str(exc)))
            return
        if message.topic == phoenix.PHOENIX_TOPIC:
            if message.event == "heartbeat":
                self.push(phoenix.reply(message, "ok", {}))
            else:
                self.push(phoenix.reply(message, "error", {"reason": "unmatched topic"}))
            return
        match message.event:
            case "phx_join":
                await self._join(message)
            case "phx_leave":
                self.push(phoenix.reply(message, "ok", {}))
                joined = self.joined.pop(message.topic, None)
                if joined is not None:
                    self._unsubscribe(joined)
                    self.push(phoenix.close(joined.topic, joined.join_ref))
            case _ if message.topic not in self.joined:
                self.push(phoenix.reply(message, "error", {"reason": "unmatched topic"}))
            case "access_token":
                await self._refresh(self.joined[message.topic], message)
            case _:
                error = GatewayError(
                    "bad_frame", f"event {message.event!r} is not supported by rtgw"
                )
                self.push(phoenix.error_reply(message, error))

    # -- joining -------------------------------------------------------------------------

    async def _join(self, message: phoenix.Message) -> None:
        previous = self.joined.pop(message.topic, None)
        if previous is not None:  # Phoenix closes the old channel before joining again
            self._unsubscribe(previous)
            self.push(phoenix.close(previous.topic, previous.join_ref))
        try:
            request = phoenix.parse_join(message.payload)
            await self._hub.wait_caught_up()
            token = request.access_token
            if token is None or token.startswith("sb_"):
                token = self._api_key
            if token is None:
                raise GatewayError("auth_required", "send 'access_token' in the join")
            claims = await self._verifier.verify(token)
            targets, filter_error = self._resolve(request.bindings, claims)
            used = sum(len(c.bindings_by_key) for c in self.joined.values())
            if used + len({t.key for t in targets}) > self._limits.max_subscriptions:
                raise GatewayError(
                    "too_many_subscriptions",
                    f"at most {self._limits.max_subscriptions} subscriptions per connection",
                )
        except GatewayError as exc:
            self.push(phoenix.error_reply(message, exc))
            return
        if self.closing:
            return
        echoed = [{**b.raw, "id": b.id} for b in request.bindings]
        self.push(phoenix.reply(message, "ok", {"postgres_changes": echoed}))
        if filter_error is not None:
            text = f"{filter_error.code}: {filter_error.message}"
            self.push(
                phoenix.system(message.topic, message.join_ref, "postgres_changes", "error", text)
            )
            return
        joined = JoinedChannel(self, message.topic, message.join_ref, token, targets)
        self.joined[message.topic] = joined
        self._subscribe(joined)
        self._expire_at(joined.topic, claims.expires_at, lambda: self._token_expired(joined))
        if targets:
            self._announce_when_live(joined)

    def _announce_when_live(self, joined: JoinedChannel) -> None:
        """"Subscribed to PostgreSQL" once changes really flow: the hub registered the topics
        in ``_subscribe``, and the source must be streaming (checked again every
        ``LIVE_CHECK_S`` until it is, or until the topic is left)."""
        if self.joined.get(joined.topic) is not joined:
            return
        if self._live():
            self.push(
                phoenix.system(joined.topic, joined.join_ref, "postgres_changes", "ok", SUBSCRIBED)
            )
            return
        self._expire_at(
            f"live {joined.topic}", time.time() + LIVE_CHECK_S,
            lambda: self._announce_when_live(joined),
        )

    def _resolve(
        self, bindings: Iterable[phoenix.Binding], claims: Claims
    ) -> tuple[tuple[Target, ...], GatewayError | None]:
        """Authorize every binding (raising on the first refusal) and parse the filters
        (returning the first filter error: Supabase reports those after the join)."""
        targets = []
        filter_error = None
        for binding in bindings:
            for channel, base in self._grants(binding, claims):
                row_filter = None
                if binding.filter is not None:
                    try:
                        row_filter = parse_filter(binding.filter)
                        channel.check_filter(row_filter)
                    except FilterError as exc:
                        filter_error = filter_error or GatewayError("bad_filter", str(exc))
                    except GatewayError as exc:
                        filter_error = filter_error or exc
                targets.append(Target(binding, channel, base, row_filter))
        return tuple(targets), filter_error

    def _grants(self, binding: phoenix.Binding, claims: Claims) -> list[tuple[Channel, str]]:
        """A channel and topic base for each table the binding names. ``*`` as schema or table
        means every covered table that this token may read (the others are left out)."""
        covered = [
            channels
            for (schema, table), channels in self._channels.by_table.items()
            if binding.schema in ("*", schema) and binding.table in ("*", table)
        ]
        if not covered:
            raise GatewayError(
                "unknown_table", f"no channel covers {binding.schema}.{binding.table}"
            )
        grants, refusal = [], None
        for channels in covered:
            try:
                grants.append(_first_grant(channels, claims))
            except GatewayError as exc:
                refusal = refusal or exc
        if refusal is not None and not ("*" in (binding.schema, binding.table) and grants):
            raise refusal
        return grants

    def _subscribe(self, joined: JoinedChannel) -> None:
        for target in joined.targets:
            key = target.key
            if key not in joined.bindings_by_key:
                self._hub.subscribe(joined, target.channel.name, target.base, target.filter, None)
                joined.bindings_by_key[key] = []
            joined.bindings_by_key[key].append(target.binding)

    def _unsubscribe(self, joined: JoinedChannel) -> None:
        self._cancel_expiry(joined.topic)
        self._cancel_expiry(f"live {joined.topic}")
        for key in joined.bindings_by_key:
            self._hub.unsubscribe(joined, key)
        joined.bindings_by_key.clear()

    # -- tokens --------------------------------------------------------------------------

    async def _refresh(self, joined: JoinedChannel, message: phoenix.Message) -> None:
        payload = message.payload if isinstance(message.payload, dict) else {}
        token = payload.get("access_token")
        if not isinstance(token, str) or token == joined.token or token.startswith("sb_"):
            return  # Supabase ignores these silently
        try:
            claims = await self._verifier.verify(token)
            for target in joined.targets:
                if target.channel.topic_base(claims) != target.base:
                    raise GatewayError(
                        "forbidden",
                        f"the new token reads other rows of {target.channel.name!r}; join again",
                    )
        except GatewayError as exc:
            if self.joined.get(joined.topic) is joined:
                self._close_channel(joined, exc)
            return
        if self.joined.get(joined.topic) is not joined:  # it expired while we verified
            return
        joined.token = token
        self._expire_at(joined.topic, claims.expires_at, lambda: self._token_expired(joined))

    def _token_expired(self, joined: JoinedChannel) -> None:
        if self.joined.get(joined.topic) is joined:
            self._close_channel(
                joined,
                GatewayError("token_expired", "the token expired; push access_token before exp"),
            )

    def _close_channel(self, joined: JoinedChannel, error: GatewayError) -> None:
        """A ``system`` error, then ``phx_close``: the socket stays open."""
        del self.joined[joined.topic]
        self._unsubscribe(joined)
        text = f"{error.code}: {error.message}"
        self.push(phoenix.system(joined.topic, joined.join_ref, "system", "error", text))
        self.push(phoenix.close(joined.topic, joined.join_ref))


def _first_grant(channels: Iterable[Channel], claims: Claims) -> tuple[Channel, str]:
    """The first channel (by name) that grants its table to these claims, and its topic base."""
    refusal: GatewayError | None = None
    for channel in sorted(channels, key=lambda c: c.name):
        try:
            return channel, channel.topic_base(claims)
        except GatewayError as exc:
            refusal = refusal or exc
    assert refusal is not None, "a table is covered by at least one channel"
    raise refusal
