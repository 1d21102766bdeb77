"""gateway.native.session: the native protocol's state machine, driven by hand (no socket, no
event loop): frames in, outputs out, results fed to the continuations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.auth import Claims
from gateway.channels import load_channels
from gateway.encoding import dumps_text, loads
from gateway.errors import GatewayError
from gateway.events import GapNotice, TopicEvent
from gateway.hub import Since, Subscription
from gateway.limits import Limits
from gateway.native.codec import CODEC
from gateway.native.session import RENDERER, NativeSession
from gateway.publish import MessagePayload
from gateway.session import AwaitStream, Fail, Outputs, Send, Subscribe, Timer, Unsubscribe, Verify

CHANNELS = load_channels(Path(__file__).resolve().parents[3] / "channels")
NOW = 1_800_000_000.0


def claims(sub: str = "alice", *scopes: str, expires_at: float = NOW + 300) -> Claims:
    return Claims(raw={"sub": sub}, subject=sub, scopes=frozenset(scopes),
                  expires_at=expires_at, role="authenticated")


def session(bearer: str | None = None, max_subscriptions: int = 100) -> NativeSession:
    return NativeSession(
        CHANNELS, Limits(max_subscriptions=max_subscriptions, auth_timeout_s=10.0), "c1",
        bearer=bearer, clock=lambda: NOW,
    )


def frame(**fields: Any) -> str:
    return dumps_text(fields)


def sent(outputs: Outputs) -> list[dict[str, Any]]:
    return [loads(output.frame) for output in outputs if isinstance(output, Send)]


def authenticated(token_claims: Claims | None = None) -> NativeSession:
    machine = session()
    machine.start()
    [verify] = machine.receive(frame(type="auth", ref="a", token="t"))
    assert isinstance(verify, Verify)
    verify.then(token_claims or claims("alice", "orders:read"))
    return machine


def subscribe(machine: NativeSession, **fields: Any) -> Outputs:
    """Send a subscribe frame and let the stream be ready: the outputs after ``AwaitStream``."""
    [wait] = machine.receive(frame(type="subscribe", **fields))
    assert isinstance(wait, AwaitStream)
    return wait.then(None)


def subscription(topic: str, recovered: bool | None = None) -> Subscription:
    return Subscription(topic, 42, "5eed00010", recovered, ())


def test_start_sets_the_auth_deadline_which_fails_the_connection() -> None:
    [deadline] = session().start()
    assert isinstance(deadline, Timer) and deadline.at == NOW + 10.0
    assert deadline.then is not None
    [fail] = deadline.then()
    assert isinstance(fail, Fail) and fail.error.code == "auth_timeout"


def test_a_bearer_header_is_verified_at_the_start() -> None:
    deadline, verify = session(bearer="header-token").start()
    assert isinstance(deadline, Timer) and isinstance(verify, Verify)
    assert verify.token == "header-token"


def test_auth_verifies_the_token_then_says_ready_and_arms_the_expiry() -> None:
    machine = session()
    machine.start()
    [verify] = machine.receive(frame(type="auth", ref=1, token="t"))
    assert isinstance(verify, Verify) and verify.token == "t"
    outputs = verify.then(claims("alice"))
    timers = {o.name: o.at for o in outputs if isinstance(o, Timer)}
    assert timers == {"auth": None, "token": NOW + 300}  # the deadline is cancelled
    assert sent(outputs) == [{"type": "ready", "connection_id": "c1", "sub": "alice",
                              "expires_at": NOW + 300}]
    token_timer = next(o for o in outputs if isinstance(o, Timer) and o.name == "token")
    assert token_timer.then is not None
    [expired] = token_timer.then()
    assert isinstance(expired, Fail) and expired.error.code == "token_expired"


def test_a_refused_token_fails_the_connection_with_the_frames_ref() -> None:
    machine = session()
    [verify] = machine.receive(frame(type="auth", ref="7", token="bad"))
    assert isinstance(verify, Verify)
    [fail] = verify.then(GatewayError("token_signature"))
    assert isinstance(fail, Fail) and (fail.error.code, fail.ref) == ("token_signature", "7")
    assert machine.fatal_frames(fail.error, fail.ref) == (
        frame(type="error", code="token_signature", message=fail.error.message, ref="7"),
    )


def test_bad_frames_and_pings_are_answered_without_leaving_the_session() -> None:
    machine = session()
    assert sent(machine.receive("{")) == [
        {"type": "error", "code": "bad_frame", "message": "frame is not valid JSON", "ref": None}
    ]
    assert sent(machine.receive(frame(type="ping", ref="p"))) == [{"type": "pong", "ref": "p"}]
    machine = authenticated()
    [refused] = sent(machine.receive(frame(type="auth", ref="2", token="again")))
    assert (refused["code"], refused["ref"]) == ("already_authenticated", "2")


def test_subscribe_waits_for_the_stream_then_subscribes_under_the_topic_key() -> None:
    machine = authenticated()
    since = {"offset": 5, "epoch": "5eed00010"}
    [wait] = machine.receive(frame(type="subscribe", ref="s", channel="orders",
                                   filter="status=eq.paid", since=since))
    assert isinstance(wait, AwaitStream) and wait.since == Since(5, "5eed00010")
    [request] = wait.then(None)
    assert isinstance(request, Subscribe)
    assert (request.handle, request.channel, request.base, request.since) == (
        "orders?status=eq.paid", "orders", "orders", Since(5, "5eed00010")
    )
    assert request.renderer is RENDERER
    reply = sent(request.then(subscription("orders?status=eq.paid", recovered=True)))
    assert reply == [{"type": "subscribed", "ref": "s", "channel": "orders",
                      "topic": "orders?status=eq.paid", "offset": 42, "epoch": "5eed00010",
                      "recovered": True}]
    assert machine.subscriptions == {"orders?status=eq.paid": ("orders", "orders")}


def test_a_stream_that_is_not_ready_refuses_the_subscribe() -> None:
    machine = authenticated()
    [wait] = machine.receive(frame(type="subscribe", ref="s", channel="orders"))
    assert isinstance(wait, AwaitStream)
    [refused] = sent(wait.then(GatewayError("not_ready")))
    assert (refused["code"], refused["ref"]) == ("not_ready", "s")


def test_subscribe_refusals_are_error_frames() -> None:
    unauthenticated = session()
    [refused] = sent(subscribe(unauthenticated, ref="1", channel="orders"))
    assert refused["code"] == "auth_required"
    machine = authenticated(claims("alice"))  # no orders:read
    assert sent(subscribe(machine, ref="2", channel="orders"))[0]["code"] == "forbidden"
    assert sent(subscribe(machine, ref="3", channel="nope"))[0]["code"] == "unknown_channel"
    assert sent(subscribe(machine, ref="4", channel="my_notifications",
                          filter="title=eq.x"))[0]["code"] == "bad_filter"


def test_the_subscription_limit_and_duplicates() -> None:
    machine = NativeSession(CHANNELS, Limits(max_subscriptions=1), "c1")
    [verify] = machine.receive(frame(type="auth", token="t"))
    assert isinstance(verify, Verify)
    verify.then(claims("alice", "orders:read"))
    [request] = subscribe(machine, channel="orders")
    assert isinstance(request, Subscribe)
    request.then(subscription("orders"))
    assert sent(subscribe(machine, channel="orders"))[0]["code"] == "already_subscribed"
    assert sent(subscribe(machine, channel="my_notifications"))[0]["code"] == (
        "too_many_subscriptions"
    )


def test_unsubscribe_leaves_the_topic() -> None:
    machine = authenticated()
    [request] = subscribe(machine, channel="orders")
    assert isinstance(request, Subscribe)
    request.then(subscription("orders"))
    outputs = machine.receive(frame(type="unsubscribe", ref="u", topic="orders"))
    assert outputs[0] == Unsubscribe("orders")
    assert sent(outputs) == [{"type": "unsubscribed", "ref": "u", "topic": "orders",
                              "reason": None}]
    assert machine.subscriptions == {}
    [again] = sent(machine.receive(frame(type="unsubscribe", topic="orders")))
    assert again["code"] == "not_subscribed"


def test_refresh_ends_the_subscriptions_the_new_token_may_not_read() -> None:
    machine = authenticated(claims("alice", "orders:read"))
    for channel, topic in (("orders", "orders"),
                           ("my_notifications", "my_notifications:user_id=alice")):
        [request] = subscribe(machine, channel=channel)
        assert isinstance(request, Subscribe)
        request.then(subscription(topic))
    [verify] = machine.receive(frame(type="refresh", ref="r", token="new"))
    assert isinstance(verify, Verify)
    outputs = verify.then(claims("bob", expires_at=NOW + 900))  # another user, no scope
    assert [o for o in outputs if isinstance(o, Unsubscribe)] == [
        Unsubscribe("orders"), Unsubscribe("my_notifications:user_id=alice")
    ]
    frames = sent(outputs)
    assert [(f["topic"], f["reason"]) for f in frames[:2]] == [
        ("orders", "forbidden"), ("my_notifications:user_id=alice", "partition_changed")
    ]
    assert frames[2] == {"type": "refreshed", "ref": "r", "expires_at": NOW + 900}
    assert machine.subscriptions == {}


def test_a_refused_refresh_keeps_the_old_token() -> None:
    machine = authenticated()
    [verify] = machine.receive(frame(type="refresh", ref="r", token="bad"))
    assert isinstance(verify, Verify)
    [refused] = sent(verify.then(GatewayError("token_expired")))
    assert (refused["code"], refused["ref"]) == ("token_expired", "r")
    assert machine.claims is not None and machine.claims.subject == "alice"


def test_refuse_answers_with_an_error_frame() -> None:
    [refused] = sent(session().refuse(GatewayError("rate_limited")))
    assert refused["code"] == "rate_limited"


def test_the_renderer_shares_one_encoded_frame_per_event() -> None:
    event = TopicEvent("orders", 9, "5eed00010", MessagePayload(b'{"id":"m"}'))
    text, wire = RENDERER.event(event)
    assert RENDERER.event(event) == (text, wire) and event.encoded(CODEC)[0] is text
    assert loads(text) == {"type": "event", "topic": "orders", "offset": 9,
                           "epoch": "5eed00010", "message": {"id": "m"}}
    assert wire is not None and wire.endswith(text.encode())
    gap = loads(RENDERER.gap(GapNotice("orders", 9, "5eed00010", "slot_invalidated")))
    assert gap == {"type": "gap", "topic": "orders", "epoch": "5eed00010", "offset": 9,
                   "reason": "slot_invalidated"}


def with_role(token_claims: Claims, *scopes: str) -> Claims:
    return token_claims.with_roles(frozenset({"support"}), frozenset(scopes))


def test_a_revoked_role_ends_the_subscriptions_it_granted_with_forbidden() -> None:
    held = with_role(claims("alice"), "orders:read")
    machine = authenticated(held)
    for channel in ("orders", "my_notifications"):
        [request] = subscribe(machine, ref="s", channel=channel)
        assert isinstance(request, Subscribe)
        request.then(subscription(request.handle))  # type: ignore[arg-type]
    outputs = machine.reauthorize(lambda c: c.with_roles(frozenset(), frozenset()))
    assert outputs[0] == Unsubscribe("orders")
    assert sent(outputs) == [
        {"type": "unsubscribed", "ref": None, "topic": "orders", "reason": "forbidden"}
    ]
    assert list(machine.subscriptions) == ["my_notifications:user_id=alice"]


def test_unchanged_claims_change_nothing_and_a_grant_lets_the_next_subscribe_succeed() -> None:
    machine = authenticated(claims("alice"))
    assert list(machine.reauthorize(lambda c: c)) == []
    [refused] = sent(subscribe(machine, ref="s", channel="orders"))
    assert refused["code"] == "forbidden"
    assert list(machine.reauthorize(lambda c: with_role(c, "orders:read"))) == []
    [request] = subscribe(machine, ref="s", channel="orders")
    assert isinstance(request, Subscribe) and request.base == "orders"


def test_an_sse_stream_ends_when_a_revocation_ends_its_subscription() -> None:
    machine = NativeSession(CHANNELS, Limits(), "c1", name="sse", clock=lambda: NOW,
                            one_subscription=True)
    machine.start()
    [verify] = machine.receive(frame(type="auth", token="t"))
    assert isinstance(verify, Verify)
    verify.then(with_role(claims("alice"), "orders:read"))
    [request] = subscribe(machine, ref="sse", channel="orders")
    assert isinstance(request, Subscribe)
    request.then(subscription("orders"))
    outputs = machine.reauthorize(lambda c: c.with_roles(frozenset(), frozenset()))
    assert isinstance(outputs[-1], Fail) and outputs[-1].error.code == "forbidden"
