"""gateway.phoenix.session: the Supabase-compatible state machine, driven by hand (no socket,
no event loop): Phoenix frames in, outputs out, results fed to the continuations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.auth import Claims
from gateway.changes import Change, ChangeId, Column, Op
from gateway.channels import load_channels
from gateway.encoding import dumps_text, loads
from gateway.errors import GatewayError
from gateway.events import GapNotice, TopicEvent
from gateway.hub import Subscription
from gateway.limits import Limits
from gateway.phoenix import frames as phoenix
from gateway.phoenix.session import SUBSCRIBED, JoinedChannel, PhoenixSession
from gateway.router import ChannelPayload
from gateway.session import (
    AwaitStream,
    Fail,
    Outputs,
    Send,
    Subscribe,
    Timer,
    Unsubscribe,
    Verify,
)

CHANNELS = load_channels(Path(__file__).resolve().parents[3] / "channels")
NOW = 1_800_000_000.0
TOPIC = "realtime:room"


class Live:
    def __init__(self, live: bool = True) -> None:
        self.live = live

    def __call__(self) -> bool:
        return self.live


def session(live: Live | None = None, max_subscriptions: int = 100) -> PhoenixSession:
    return PhoenixSession(
        phoenix.Serializer("2.0.0"), CHANNELS, Limits(max_subscriptions=max_subscriptions),
        api_key="anon-key", live=live or Live(), clock=lambda: NOW,
    )


def claims(sub: str = "alice", *scopes: str) -> Claims:
    return Claims(raw={"sub": sub}, subject=sub, scopes=frozenset(scopes),
                  expires_at=NOW + 300, role="authenticated")


def join_frame(*bindings: dict[str, Any], token: str | None = "user-token") -> str:
    payload: dict[str, Any] = {"config": {"postgres_changes": list(bindings)}}
    if token is not None:
        payload["access_token"] = token
    return dumps_text(["1", "1", TOPIC, "phx_join", payload])


def sent(outputs: Outputs) -> list[list[Any]]:
    return [loads(output.frame) for output in outputs if isinstance(output, Send)]


def join(machine: PhoenixSession, *bindings: dict[str, Any], token_claims: Claims) -> Outputs:
    """Join, let the stream be ready and the token verify: the outputs of the join."""
    [wait] = machine.receive(join_frame(*bindings))
    assert isinstance(wait, AwaitStream) and wait.since is None
    [verify] = wait.then(None)
    assert isinstance(verify, Verify) and verify.token == "user-token"
    return verify.then(token_claims)


def test_heartbeats_are_answered_and_unknown_phoenix_events_refused() -> None:
    machine = session()
    assert sent(machine.receive('[null,"7","phoenix","heartbeat",{}]')) == [
        [None, "7", "phoenix", "phx_reply", {"status": "ok", "response": {}}]
    ]
    [reply] = sent(machine.receive('[null,"8","phoenix","other",{}]'))
    assert reply[4]["status"] == "error"


def test_a_join_echoes_its_bindings_subscribes_and_announces_once_live() -> None:
    machine = session()
    binding = {"event": "INSERT", "schema": "public", "table": "orders"}
    outputs = join(machine, binding, token_claims=claims("alice", "orders:read"))
    frames = sent(outputs)
    echoed = frames[0][4]["response"]["postgres_changes"]
    assert frames[0][3] == "phx_reply" and frames[0][4]["status"] == "ok"
    assert echoed == [{**binding, "id": phoenix.binding_id(binding)}]
    [request] = [o for o in outputs if isinstance(o, Subscribe)]
    assert (request.handle, request.channel, request.base, request.filter) == (
        (TOPIC, "orders"), "orders", "orders", None
    )
    assert request.then(Subscription("orders", 1, "e", None, ())) == ()
    assert [o.name for o in outputs if isinstance(o, Timer)] == [TOPIC]  # the token's expiry
    assert frames[-1][3] == "system" and frames[-1][4]["message"] == SUBSCRIBED
    assert list(machine.joined) == [TOPIC]


def test_subscribed_waits_until_the_source_streams() -> None:
    live = Live(False)
    machine = session(live)
    outputs = join(machine, {"table": "orders"}, token_claims=claims("a", "orders:read"))
    assert SUBSCRIBED not in str(sent(outputs))
    [check] = [o for o in outputs if isinstance(o, Timer) and o.name == f"live {TOPIC}"]
    assert check.at == NOW + 0.25 and check.then is not None
    assert isinstance(check.then()[0], Timer)  # still not live: check again later
    live.live = True
    [announced] = sent(check.then())
    assert announced[4]["message"] == SUBSCRIBED


def test_a_join_the_token_may_not_read_fails_with_the_reason() -> None:
    [reply] = sent(join(session(), {"table": "orders"}, token_claims=claims("alice")))
    assert reply[3] == "phx_reply" and reply[4]["status"] == "error"
    assert reply[4]["response"]["reason"].startswith("forbidden: ")


def test_a_bad_filter_is_reported_after_an_ok_reply() -> None:
    machine = session()
    outputs = join(machine, {"table": "notifications", "filter": "title=eq.x"},
                   token_claims=claims("alice"))
    frames = sent(outputs)
    assert frames[0][4]["status"] == "ok"
    assert frames[1][3] == "system" and frames[1][4]["status"] == "error"
    assert frames[1][4]["message"].startswith("bad_filter: ")
    assert not [o for o in outputs if isinstance(o, Subscribe)] and not machine.joined


def test_a_join_without_a_token_uses_the_api_key_and_a_stream_not_ready_refuses() -> None:
    machine = session()
    [wait] = machine.receive(join_frame({"table": "orders"}, token=None))
    assert isinstance(wait, AwaitStream)
    [verify] = wait.then(None)
    assert isinstance(verify, Verify) and verify.token == "anon-key"
    [reply] = sent(wait.then(GatewayError("not_ready")))
    assert reply[4]["response"]["reason"].startswith("not_ready: ")


def test_the_subscription_limit_counts_topics_over_every_joined_channel() -> None:
    machine = session(max_subscriptions=1)
    both = ({"table": "orders"}, {"table": "notifications"})
    [reply] = sent(join(machine, *both, token_claims=claims("a", "orders:read")))
    assert reply[4]["response"]["reason"].startswith("too_many_subscriptions: ")


def test_leave_unsubscribes_and_closes_the_channel() -> None:
    machine = session()
    join(machine, {"table": "orders"}, token_claims=claims("a", "orders:read"))
    outputs = machine.receive(dumps_text(["1", "2", TOPIC, "phx_leave", {}]))
    assert Unsubscribe((TOPIC, "orders")) in outputs
    assert [f[3] for f in sent(outputs)] == ["phx_reply", "phx_close"]
    assert machine.joined == {}


def test_a_refreshed_token_for_other_rows_closes_the_channel_but_not_the_socket() -> None:
    machine = session()
    join(machine, {"table": "notifications"}, token_claims=claims("alice"))
    [verify] = machine.receive(dumps_text(["1", "3", TOPIC, "access_token",
                                           {"access_token": "bob-token"}]))
    assert isinstance(verify, Verify)
    outputs = verify.then(claims("bob"))
    assert Unsubscribe((TOPIC, "my_notifications:user_id=alice")) in outputs
    error, close = sent(outputs)
    assert error[3] == "system" and error[4]["message"].startswith("forbidden: ")
    assert close[3] == "phx_close"
    assert not any(isinstance(o, Fail) for o in outputs) and machine.joined == {}


def test_a_token_that_expires_closes_its_channel() -> None:
    machine = session()
    outputs = join(machine, {"table": "orders"}, token_claims=claims("a", "orders:read"))
    [expiry] = [o for o in outputs if isinstance(o, Timer) and o.name == TOPIC]
    assert expiry.at == NOW + 300 and expiry.then is not None
    frames = sent(expiry.then())
    assert frames[0][4]["message"].startswith("token_expired: ") and frames[1][3] == "phx_close"


def test_a_bad_frame_fails_the_socket_with_system_errors_on_joined_channels() -> None:
    machine = session()
    join(machine, {"table": "orders"}, token_claims=claims("a", "orders:read"))
    [fail] = machine.receive("[1,2]")
    assert isinstance(fail, Fail) and fail.error.code == "bad_frame"
    [system] = [loads(f) for f in machine.fatal_frames(fail.error, None)]
    assert system[2] == TOPIC and system[4]["message"].startswith("bad_frame: ")


def test_a_joined_channel_renders_only_the_operations_its_bindings_want() -> None:
    machine = session()
    binding = {"event": "UPDATE", "table": "orders"}
    join(machine, binding, token_claims=claims("a", "orders:read"))
    joined: JoinedChannel = machine.joined[TOPIC]
    row = {"id": 1, "status": "paid"}
    columns = (Column("id", "int8"), Column("status", "text"))

    def event(op: Op) -> TopicEvent:
        change = Change(ChangeId(1, 0), "public", "orders", op, 0, columns, new=row, old=row)
        return TopicEvent("orders", 1, "e", ChannelPayload(change, CHANNELS.get("orders")))

    assert joined.event(event(Op.INSERT)) is None
    rendered = joined.event(event(Op.UPDATE))
    assert rendered is not None
    push = loads(rendered[0])
    assert push[:4] == [None, None, TOPIC, "postgres_changes"]
    assert push[4]["ids"] == [phoenix.binding_id(binding)]
    assert push[4]["data"]["record"] == row and push[4]["data"]["type"] == "UPDATE"
    gap = loads(joined.gap(GapNotice("orders", 1, "e", "slot_invalidated")))
    assert gap[3] == "system" and "slot_invalidated" in gap[4]["message"]


def test_a_change_several_bindings_want_goes_out_once_with_all_their_ids() -> None:
    machine = session()
    paid = {"event": "*", "table": "orders", "filter": "status=eq.paid"}
    every = {"event": "INSERT", "table": "orders"}
    outputs = join(machine, paid, every, token_claims=claims("a", "orders:read"))
    keys = sorted(o.handle[1] for o in outputs if isinstance(o, Subscribe))
    assert keys == ["orders", "orders?status=eq.paid"]  # two hub topics
    joined = machine.joined[TOPIC]
    columns = (Column("id", "int8"), Column("status", "text"))

    def deliveries(op: Op, status: str) -> list[list[Any]]:
        """What the joined channel sends when the hub hands it the change on each topic."""
        change = Change(ChangeId(1, 0), "public", "orders", op, 0, columns,
                        new={"id": 1, "status": status})
        payload = ChannelPayload(change, CHANNELS.get("orders"))
        rendered = [joined.event(TopicEvent(key, 1, "e", payload)) for key in keys]
        return [loads(frame[0]) for frame in rendered if frame is not None]

    both = deliveries(Op.INSERT, "paid")
    assert [push[4]["ids"] for push in both] == [
        sorted([phoenix.binding_id(paid), phoenix.binding_id(every)])
    ]
    assert [push[4]["ids"] for push in deliveries(Op.INSERT, "open")] == [
        [phoenix.binding_id(every)]
    ]
    assert [push[4]["ids"] for push in deliveries(Op.UPDATE, "paid")] == [
        [phoenix.binding_id(paid)]
    ]
    assert deliveries(Op.UPDATE, "open") == []


def test_a_revoked_role_ends_the_channel_with_a_channel_error_and_a_close() -> None:
    machine = session()
    held = claims("alice").with_roles(frozenset({"support"}), frozenset({"orders:read"}))
    join(machine, {"table": "orders"}, token_claims=held)
    outputs = machine.reauthorize(lambda c: c.with_roles(frozenset(), frozenset()))
    assert Unsubscribe((TOPIC, "orders")) in outputs
    error, close = sent(outputs)
    assert error[:4] == ["1", "1", TOPIC, "phx_error"]
    assert error[4]["reason"].startswith(
        "forbidden: You no longer have permission to read from this Channel topic: room"
    )
    assert close[3] == "phx_close" and machine.joined == {}


def test_a_role_change_that_still_grants_every_binding_keeps_the_channel() -> None:
    machine = session()
    join(machine, {"table": "notifications"}, token_claims=claims("alice"))
    granted = machine.reauthorize(
        lambda c: c.with_roles(frozenset({"admin"}), frozenset({"orders:read"}))
    )
    assert list(granted) == [] and list(machine.joined) == [TOPIC]
    assert machine.joined[TOPIC].claims.roles == {"admin"}
    assert list(machine.reauthorize(lambda c: c)) == []
