"""GET /v1/channels and POST /v1/publish against a running gateway, with real clients."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from gateway.tokens import mint_token
from tests.conftest import TEST_SECRET, Gateway, bearer, connect, service_token, token


async def test_channels_lists_only_what_the_token_may_read(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as http:
        everything = await http.get("/v1/channels", headers=bearer(token("u-1")))
        assert everything.status_code == 200
        by_name = {c["name"]: c for c in everything.json()}
        assert set(by_name) == {"orders", "my_notifications"}
        assert by_name["orders"]["filterable"] == ["customer_id", "id", "status", "total"]
        assert by_name["my_notifications"]["topic"] == "my_notifications:user_id=u-1"
        assert by_name["my_notifications"]["partition"] == {"column": "user_id", "claim": "sub"}

        no_scope = await http.get("/v1/channels", headers=bearer(token("u-1", scopes=())))
        assert [c["name"] for c in no_scope.json()] == ["my_notifications"]

        missing = await http.get("/v1/channels")
        assert missing.status_code == 401
        assert missing.json()["code"] == "auth_required"
        expired = await http.get("/v1/channels", headers=bearer(token(ttl=-60)))
        assert (expired.status_code, expired.json()["code"]) == (401, "token_expired")


async def test_publish_reaches_subscribers_with_offsets(gateway: Gateway) -> None:
    user = str(uuid.uuid4())
    async with connect(gateway.ws_url) as client, httpx.AsyncClient(
        base_url=gateway.http_url
    ) as http:
        await client.auth(token(user, scopes=()))
        subscribed = await client.subscribe("my_notifications")
        sent = await http.post(
            "/v1/publish",
            headers=bearer(service_token()),
            json={"channel": "my_notifications", "event": "hello", "payload": {"n": 1},
                  "partition": user},
        )
        assert sent.status_code == 200, sent.text
        result: dict[str, Any] = sent.json()
        assert result["delivered"] == 1
        event = await client.recv()
        assert event["type"] == "event" and event["offset"] > subscribed["offset"]
        assert result["topics"] == [
            {"topic": subscribed["topic"], "offset": event["offset"], "epoch": event["epoch"]}
        ]
        assert event["message"]["event"] == "hello" and event["message"]["payload"] == {"n": 1}
        assert event["message"]["id"] == result["id"]


async def test_publish_refusals(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as http:
        async def post(as_token: str, body: Any) -> httpx.Response:
            return await http.post("/v1/publish", headers=bearer(as_token), json=body)

        plain = await post(token(), {"channel": "orders", "event": "e", "payload": {}})
        assert (plain.status_code, plain.json()["code"]) == (403, "forbidden")
        assert "rtgw:publish" in plain.json()["message"]

        publisher = mint_token(TEST_SECRET, "u-2", ["orders:read", "rtgw:publish"], 60)
        ok = await post(publisher, {"channel": "orders", "event": "e", "payload": {"a": 1}})
        assert ok.status_code == 200 and ok.json()["delivered"] == 0

        other = await post(publisher, {"channel": "my_notifications", "event": "e",
                                       "payload": {}, "partition": "someone-else"})
        assert (other.status_code, other.json()["code"]) == (403, "forbidden")

        bad = await post(publisher, {"channel": "orders", "event": "has space", "payload": {}})
        assert (bad.status_code, bad.json()["code"]) == (400, "bad_request")
        assert bad.json()["message"].startswith("event:")

        unknown = await post(publisher, {"channel": "nope", "event": "e", "payload": {}})
        assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_channel")

        needs_partition = await post(
            service_token(), {"channel": "my_notifications", "event": "e", "payload": {}}
        )
        assert (needs_partition.status_code, needs_partition.json()["code"]) == (
            400, "bad_request",
        )

        huge = await post(publisher, {"channel": "orders", "event": "e",
                                      "payload": {"x": "y" * 70_000}})
        assert (huge.status_code, huge.json()["code"]) == (413, "payload_too_large")

        not_json = await http.post("/v1/publish", headers=bearer(publisher), content=b"{nope")
        assert (not_json.status_code, not_json.json()["code"]) == (400, "bad_request")
