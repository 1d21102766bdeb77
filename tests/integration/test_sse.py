"""GET /v1/sse: a real HTTP client reading a real event stream from a running gateway."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import jwt
import psycopg

from gateway.node import Node
from tests.conftest import TEST_SECRET, Gateway, eventually, sse_events, take, token


def _insert_notification(db: psycopg.Connection[Any], user: str, title: str) -> None:
    db.execute("INSERT INTO notifications (user_id, title) VALUES (%s, %s)", (user, title))


async def test_sse_streams_a_partitioned_channel_and_resumes_with_last_event_id(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    user, other = str(uuid.uuid4()), str(uuid.uuid4())
    headers = {"Authorization": f"Bearer {token(user, scopes=())}"}
    async with httpx.AsyncClient(base_url=gateway.http_url, timeout=20) as http:
        async with http.stream(
            "GET", "/v1/sse", params={"channel": "my_notifications"}, headers=headers
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = sse_events(response)
            ready, subscribed = await take(stream, 2)
            assert ready["event"] == "ready" and subscribed["event"] == "subscribed"
            _insert_notification(db, other, "not yours")
            _insert_notification(db, user, "first")
            _insert_notification(db, user, "second")
            first, second = await take(stream, 2)
        assert first["data"]["change"]["new"]["title"] == "first"
        assert second["data"]["change"]["new"]["title"] == "second"
        epoch = second["data"]["epoch"]
        assert second["id"] == f"{epoch}:{second['data']['offset']}"

        _insert_notification(db, user, "while away")
        await asyncio.sleep(0.5)
        resume = {**headers, "Last-Event-ID": first["id"]}
        async with http.stream(
            "GET", "/v1/sse", params={"channel": "my_notifications"}, headers=resume
        ) as response:
            stream = sse_events(response)
            _, subscribed, replayed, missed = await take(stream, 4)
        assert subscribed["data"]["recovered"] is True
        assert [replayed["data"]["change"]["new"]["title"], missed["data"]["change"]["new"][
            "title"]] == ["second", "while away"]
    # Closing the HTTP response ends the server-side connection and frees its address slot.
    node: Node = gateway.server.config.app.state.node
    await eventually(lambda: not node.connections and not node.addresses.count("127.0.0.1"))


async def test_sse_refusals_are_json_before_the_stream(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as http:
        async def get(params: dict[str, str], headers: dict[str, str] | None = None) -> Any:
            response = await http.get("/v1/sse", params=params, headers=headers or {})
            return response.status_code, response.json()["code"]

        bearer = {"Authorization": f"Bearer {token(scopes=())}"}
        assert await get({"channel": "orders"}, bearer) == (403, "forbidden")
        assert await get({"channel": "nope"}, bearer) == (404, "unknown_channel")
        assert await get({"channel": "my_notifications", "filter": "title=eq.x"}, bearer) == (
            400, "bad_filter",
        )
        assert await get({"channel": "orders"}) == (401, "auth_required")
        long_lived = token(ttl=3600)
        assert await get({"channel": "orders", "access_token": long_lived}) == (
            401, "token_claims",
        )
        bad_id = {**bearer, "Last-Event-ID": "garbage"}
        assert await get({"channel": "my_notifications"}, bad_id) == (400, "bad_request")


async def test_sse_accepts_a_short_lived_query_token(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    user = str(uuid.uuid4())
    now = int(time.time())
    short = jwt.encode(
        {"sub": user, "aud": "authenticated", "iat": now, "exp": now + 60},
        TEST_SECRET, algorithm="HS256",
    )
    async with httpx.AsyncClient(base_url=gateway.http_url, timeout=20) as http:
        params = {"channel": "my_notifications", "access_token": short}
        async with http.stream("GET", "/v1/sse", params=params) as response:
            assert response.status_code == 200
            stream = sse_events(response)
            await take(stream, 2)
            _insert_notification(db, user, "via query token")
            (event,) = await take(stream, 1)
    assert event["data"]["change"]["new"]["title"] == "via query token"
