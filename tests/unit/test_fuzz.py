"""Fuzzing (hypothesis) over everything a client or an operator hands the gateway as text: the
native and Phoenix frames (through the real session state machines), filters, channel files
and tokens. Any input gives a clean refusal (a ``GatewayError`` with a known code, or a
``ConfigError``) or a valid result, never another exception."""

from __future__ import annotations

import base64
import string
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth import AuthConfig, Claims, Verifier
from gateway.channels import load_channels
from gateway.encoding import dumps_text, loads
from gateway.errors import SPECS, ConfigError, GatewayError
from gateway.filters import parse_filter
from gateway.limits import Limits
from gateway.native.session import NativeSession
from gateway.phoenix import frames as phoenix
from gateway.phoenix.session import PhoenixSession
from gateway.session import AwaitStream, Fail, Outputs, Send, Verify

CHANNELS = load_channels(Path(__file__).resolve().parents[2] / "channels")
SECRET = "fuzz-secret-" + "x" * 40
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)
NATIVE_TYPES = st.sampled_from(["auth", "refresh", "subscribe", "unsubscribe", "ping", "x", 1])
NATIVE_FRAMES = st.dictionaries(
    st.sampled_from(["type", "ref", "token", "channel", "filter", "since", "topic"]), JSON
).map(dumps_text) | st.builds(
    lambda kind, rest: dumps_text({"type": kind, **rest}),
    NATIVE_TYPES, st.dictionaries(st.sampled_from(["ref", "channel", "filter", "since"]), JSON),
) | st.text() | st.binary()
PHOENIX_FRAMES = st.lists(JSON, min_size=5, max_size=5).map(dumps_text) | st.builds(
    lambda topic, event, payload: dumps_text([None, "1", topic, event, payload]),
    st.sampled_from(["phoenix", "realtime:x", ""]) | st.text(),
    st.sampled_from(["phx_join", "phx_leave", "heartbeat", "access_token", "broadcast"]),
    JSON,
) | st.text() | st.binary()


def claims() -> Claims:
    return Claims(raw={"sub": "u"}, subject="u", scopes=frozenset({"orders:read"}),
                  expires_at=2e9, role="authenticated")


def settle(outputs: Outputs) -> list[Any]:
    """Resolve every continuation the way a driver would (the stream ready, the token valid),
    and check every frame sent is JSON."""
    done: list[Any] = []
    for output in outputs:
        match output:
            case Verify(_, then):
                done += settle(then(claims()))
            case AwaitStream(_, then):
                done += settle(then(None))
            case Send(frame):
                loads(frame)
                done.append(output)
            case Fail(error):
                assert error.code in SPECS
                done.append(output)
            case _:
                done.append(output)
    return done


@FUZZ
@given(st.lists(NATIVE_FRAMES, max_size=6))
def test_any_native_frames_are_answered_never_raised(frames: list[str | bytes]) -> None:
    session = NativeSession(CHANNELS, Limits(), "fuzz")
    settle(session.start())
    for frame in frames:
        settle(session.receive(frame))


@FUZZ
@given(st.lists(PHOENIX_FRAMES, max_size=6), st.sampled_from(["1.0.0", "2.0.0"]))
def test_any_phoenix_frames_are_answered_never_raised(frames: list[str | bytes], vsn: str) -> None:
    session = PhoenixSession(phoenix.Serializer(vsn), CHANNELS, Limits(), "key", lambda: True)
    for frame in frames:
        settle(session.receive(frame))


@FUZZ
@given(st.text() | st.text(alphabet="abcdeq=.,()\"\\ inltg0123456789", max_size=60))
def test_any_filter_text_parses_or_is_refused_as_bad_filter(text: str) -> None:
    try:
        parsed = parse_filter(text)
    except GatewayError as exc:
        assert exc.code == "bad_filter"
    else:
        assert parse_filter(parsed.key).key == parsed.key  # the canonical key reads back


TOML_VALUES = st.sampled_from([
    '"public.orders"', '["INSERT"]', '["orders:read"]', '["id"]', "1", "true", '"x"', "[]",
    '{ column = "user_id", claim = "sub" }', '{ column = 1 }', '"a.b.c"', '["nope"]',
])
TOML_KEYS = st.sampled_from(
    ["table", "operations", "scopes", "columns", "filterable", "partition", "bogus"]
)


@FUZZ
@given(
    st.lists(st.tuples(st.text(string.ascii_lowercase + "_-", min_size=1, max_size=8),
                       st.dictionaries(TOML_KEYS, TOML_VALUES, max_size=6)), max_size=3)
    | st.text().map(lambda text: [("raw", {"": text})]),
)
def test_any_channel_file_loads_or_says_what_is_wrong(
    tmp_path_factory: Any, channels: list[tuple[str, dict[str, str]]]
) -> None:
    folder = tmp_path_factory.mktemp("channels")
    if channels and channels[0][0] == "raw":
        text = channels[0][1][""]
    else:
        text = "".join(
            f"[channels.{name}]\n" + "".join(f"{key} = {value}\n" for key, value in body.items())
            for name, body in channels
        )
    (folder / "c.toml").write_text(text, encoding="utf-8")
    try:
        loaded = load_channels(folder)
    except ConfigError as exc:
        assert str(exc).startswith(str(folder)) or "c.toml" in str(exc)
    else:
        assert len(loaded) >= 1


def verify_now(verifier: Verifier, token: str) -> Claims:
    """``Verifier.verify`` for HS256 tokens never waits: drive it without an event loop."""
    coroutine = verifier.verify(token)
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: Claims = done.value
        return result
    coroutine.close()
    raise AssertionError("an HS256 verification waited for I/O")


TOKEN_PARTS = st.text(string.ascii_letters + string.digits + "-_=.", max_size=40)


@FUZZ
@given(st.text() | st.lists(TOKEN_PARTS, min_size=1, max_size=4).map(".".join)
       | st.builds(lambda header, payload: ".".join((header, payload, "sig")),
                   JSON.map(lambda v: _b64(v)), JSON.map(lambda v: _b64(v))))
def test_any_token_is_verified_or_refused_with_a_token_code(token: str) -> None:
    verifier = Verifier(AuthConfig(hs256_secret=SECRET))
    try:
        verify_now(verifier, token)
    except GatewayError as exc:
        assert exc.code.startswith("token_") or exc.code == "auth_unavailable", exc.code


def _b64(value: Any) -> str:
    return base64.urlsafe_b64encode(dumps_text(value).encode()).decode().rstrip("=")
