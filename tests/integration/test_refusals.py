"""Every refusal on /v1/ws: a stable error code, a documented close code, nothing else lost."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import time
from typing import Any

import httpx
import jwt
import psycopg
import pytest
import websockets

from gateway.encoding import loads
from tests.conftest import TEST_SECRET, Client, Gateway, connect, start_gateway, token


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": "user-a", "aud": "authenticated", "exp": int(time.time()) + 300,
        "scope": "orders:read",
    }
    claims.update(overrides)
    return claims


def bad_tokens() -> dict[str, tuple[str, str, int]]:
    """Minted when a test runs (not at import: a long suite would let them expire first)."""
    return {
        "expired": (jwt.encode(_claims(exp=int(time.time()) - 60), TEST_SECRET), "token_expired",
                    4003),
        "wrong_secret": (jwt.encode(_claims(), "another-secret-" + "y" * 40), "token_signature",
                         4001),
        "alg_none": (f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}.", "token_algorithm",
                     4001),
        "hs512": (jwt.encode(_claims(), TEST_SECRET + "z" * 30, algorithm="HS512"),
                  "token_algorithm", 4001),
        "wrong_audience": (jwt.encode(_claims(aud="somebody-else"), TEST_SECRET), "token_audience",
                           4001),
        "no_exp": (jwt.encode({k: v for k, v in _claims().items() if k != "exp"}, TEST_SECRET),
                   "token_claims", 4001),
        "garbage": ("not-a-jwt", "token_malformed", 4001),
    }


async def _closed_with(client: Client) -> int:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await client.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


@pytest.mark.parametrize("case", sorted(bad_tokens()))
async def test_bad_tokens_are_refused_with_their_own_code(gateway: Gateway, case: str) -> None:
    bad, code, close_code = bad_tokens()[case]
    async with connect(gateway.ws_url) as client:
        await client.send({"type": "auth", "ref": "a1", "token": bad})
        error = await client.recv()
        assert error == {"type": "error", "code": code, "message": error["message"], "ref": "a1"}
        assert bad not in error["message"]
        assert await _closed_with(client) == close_code


async def test_bad_bearer_header_is_refused_the_same_way(gateway: Gateway) -> None:
    bad, code, close_code = bad_tokens()["wrong_secret"]
    async with connect(gateway.ws_url, additional_headers={"Authorization": f"Bearer {bad}"}) as c:
        assert (await c.recv())["code"] == code
        assert await _closed_with(c) == close_code


async def test_bearer_header_authenticates(gateway: Gateway) -> None:
    headers = {"Authorization": f"Bearer {token('hdr-user')}"}
    async with connect(gateway.ws_url, additional_headers=headers) as client:
        ready = await client.recv()
        assert ready["type"] == "ready" and ready["sub"] == "hdr-user"
        assert (await client.subscribe("orders"))["type"] == "subscribed"


async def test_missing_scope_is_forbidden_and_connection_stays_usable(gateway: Gateway) -> None:
    async with connect(gateway.ws_url) as client:
        await client.auth(token(scopes=("something:else",)))
        refused = await client.subscribe("orders")
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        assert "orders:read" in refused["message"] and refused["ref"] == "s"
        await client.send({"type": "ping", "ref": "p"})
        assert await client.recv() == {"type": "pong", "ref": "p"}
        allowed = await client.subscribe("my_notifications")
        assert allowed["type"] == "subscribed"


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1,2]", "JSON object"),
        ('{"type":"dance"}', "unknown frame type"),
        ('{"type":"subscribe"}', "'channel'"),
        ('{"type":"subscribe","channel":"orders","since":{"offset":-1,"epoch":"e"}}', "since"),
    ],
)
async def test_malformed_frames_get_an_error_and_the_connection_stays_usable(
    gateway: Gateway, db: psycopg.Connection[Any], frame: str, fragment: str
) -> None:
    async with connect(gateway.ws_url) as client:
        await client.auth(token())
        assert (await client.subscribe("orders"))["type"] == "subscribed"
        await client.socket.send(frame)
        error = await client.recv()
        assert error["type"] == "error" and error["code"] == "bad_frame"
        assert fragment in error["message"]
        assert "Traceback" not in error["message"]
        customer = db.execute("INSERT INTO customers (name) VALUES ('M') RETURNING id").fetchone()
        assert customer is not None
        db.execute("INSERT INTO orders (customer_id) VALUES (%s)", (customer[0],))
        (event,) = await client.events(1)
        assert event["change"]["new"]["customer_id"] == customer[0]


async def test_other_refusals_have_codes(gateway: Gateway) -> None:
    async with connect(gateway.ws_url) as client:
        await client.send({"type": "subscribe", "ref": "early", "channel": "orders"})
        assert (await client.recv())["code"] == "auth_required"
        await client.auth(token())
        await client.send({"type": "auth", "ref": "again", "token": token()})
        assert (await client.recv())["code"] == "already_authenticated"
        assert (await client.subscribe("nope"))["code"] == "unknown_channel"
        assert (await client.subscribe("orders", filter="status=like.x"))["code"] == "bad_filter"
        unfilterable = await client.subscribe("orders", filter="created_at=gt.2020-01-01")
        assert unfilterable["code"] == "bad_filter" and "created_at" in unfilterable["message"]
        assert (await client.subscribe("orders"))["type"] == "subscribed"
        assert (await client.subscribe("orders"))["code"] == "already_subscribed"
        await client.send({"type": "unsubscribe", "ref": "u", "topic": "orders"})
        assert await client.recv() == {
            "type": "unsubscribed", "ref": "u", "topic": "orders", "reason": None,
        }
        await client.send({"type": "unsubscribe", "ref": "u2", "topic": "orders"})
        assert (await client.recv())["code"] == "not_subscribed"


async def test_oversized_frame_closes_with_1009(gateway: Gateway) -> None:
    async with connect(gateway.ws_url, max_size=None) as client:
        await client.auth(token())
        await client.socket.send("x" * (gateway.settings.max_frame_bytes + 1))
        assert await _closed_with(client) == 1009


async def test_auth_timeout_closes_with_4002(pg: Any) -> None:
    gateway = await start_gateway(pg.dsn, auth_timeout_s=0.3)
    try:
        async with connect(gateway.ws_url) as client:
            assert (await client.recv())["code"] == "auth_timeout"
            assert await _closed_with(client) == 4002
    finally:
        await gateway.stop()


async def test_foreign_origin_is_rejected_at_the_handshake(gateway: Gateway) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(gateway.ws_url, origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    assert loads(refused.value.response.body)["code"] == "origin_forbidden"
    host = gateway.ws_url.split("/")[2]
    async with connect(gateway.ws_url, origin=f"http://{host}") as same_origin:
        assert (await same_origin.auth(token()))["type"] == "ready"


async def test_token_expiry_mid_connection_closes_4003_unless_refreshed(gateway: Gateway) -> None:
    async with connect(gateway.ws_url) as stays, connect(gateway.ws_url) as lapses:
        await stays.auth(token(ttl=2))
        await lapses.auth(token(ttl=2))
        await stays.send({"type": "refresh", "ref": "r", "token": token(ttl=60)})
        refreshed = await stays.recv()
        assert refreshed["type"] == "refreshed" and refreshed["expires_at"] > time.time() + 30
        expired = await lapses.recv(wait_s=10)
        assert expired["code"] == "token_expired"
        assert await _closed_with(lapses) == 4003
        await asyncio.sleep(0.5)
        await stays.send({"type": "ping", "ref": "still"})
        assert await stays.recv() == {"type": "pong", "ref": "still"}


async def test_refresh_that_drops_a_scope_ends_that_subscription(gateway: Gateway) -> None:
    async with connect(gateway.ws_url) as client:
        await client.auth(token())
        await client.subscribe("orders")
        await client.subscribe("my_notifications")
        await client.send({"type": "refresh", "ref": "r", "token": token(scopes=())})
        ended = await client.recv()
        assert ended == {
            "type": "unsubscribed", "ref": None, "topic": "orders", "reason": "forbidden",
        }
        assert (await client.recv())["type"] == "refreshed"
        await client.send({"type": "refresh", "ref": "bad", "token": "garbage"})
        kept = await client.recv()
        assert kept["code"] == "token_malformed" and kept["ref"] == "bad"
        await client.send({"type": "ping", "ref": "alive"})
        assert await client.recv() == {"type": "pong", "ref": "alive"}


async def test_slow_consumer_is_closed_4008_without_slowing_others(
    pg: Any, db: psycopg.Connection[Any]
) -> None:
    gateway = await start_gateway(pg.dsn, max_outbox_bytes=1024 * 1024, max_frame_bytes=4096)
    try:
        # The slow client stops reading: a tiny receive buffer, one queued message at most.
        tiny = socket.socket()
        tiny.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        tiny.connect(("127.0.0.1", gateway.settings.port))
        async with (
            connect(gateway.ws_url, sock=tiny, max_queue=1) as slow,
            connect(gateway.ws_url, max_queue=None) as fast,
        ):
            await slow.auth(token())
            await fast.auth(token())
            await slow.subscribe("orders")
            await fast.subscribe("orders")
            customer = db.execute(
                "INSERT INTO customers (name) VALUES ('S') RETURNING id"
            ).fetchone()
            assert customer is not None
            # 5,000 events of 2 KB in steps of 250 (500 KB, half the outbox), the fast client
            # reading each step before the next: it keeps up even when the machine is busy and
            # the test's client gets little CPU, while the slow one falls 10 MB behind.
            received = []
            for _ in range(20):
                db.execute(
                    "INSERT INTO orders (customer_id, status) "
                    "SELECT %s, repeat('s', 2000) FROM generate_series(1, 250)",
                    (customer[0],),
                )
                received += await fast.events(250, wait_s=30)
            assert len(received) == 5000
            codes = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    frame = loads(await asyncio.wait_for(slow.socket.recv(), 10))
                    codes.append(frame.get("code"))
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008
            assert codes[-1] == "slow_consumer"
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{gateway.http_url}/metrics")).text
        assert re.search(
            r'^rtgw_disconnects_total\{code="4008",reason="slow_consumer",transport="native"\} '
            r"[1-9]", metrics, re.MULTILINE,
        ), metrics
    finally:
        await gateway.stop()
