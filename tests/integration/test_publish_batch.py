"""POST /v1/publish/batch, and many publishes at once, against a running gateway with real
clients: every accepted event reaches the subscribers allowed to see it once, in order, with
the offsets its receipt names; a refused batch publishes nothing; the bounds answer with their
codes."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from gateway.sources.embedded import EmbeddedPostgres
from gateway.tokens import mint_token
from tests.conftest import (
    TEST_SECRET,
    Client,
    Gateway,
    bearer,
    connect,
    drop_slot,
    service_token,
    start_gateway,
    token,
)


def _note(partition: str | None, n: int) -> dict[str, Any]:
    channel = "orders" if partition is None else "my_notifications"
    return {"channel": channel, "event": "note", "payload": {"n": n}, "partition": partition}


async def _subscribed(client: Client, user: str, channel: str, scopes: tuple[str, ...]) -> None:
    await client.auth(token(user, scopes=scopes))
    assert (await client.subscribe(channel))["type"] == "subscribed"


async def test_a_batch_reaches_each_partition_in_order_with_the_offsets_of_its_receipts(
    gateway: Gateway,
) -> None:
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    async with connect(gateway.ws_url) as to_alice, connect(gateway.ws_url) as to_bob, \
            connect(gateway.ws_url) as to_orders, httpx.AsyncClient(
                base_url=gateway.http_url) as http:
        await _subscribed(to_alice, alice, "my_notifications", ())
        await _subscribed(to_bob, bob, "my_notifications", ())
        await _subscribed(to_orders, "reader", "orders", ("orders:read",))
        events = [_note(alice, 0), _note(bob, 1), _note(None, 2), _note(alice, 3), _note(bob, 4)]
        sent = await http.post("/v1/publish/batch", headers=bearer(service_token()),
                               json={"events": events})
        assert sent.status_code == 200, sent.text
        published = sent.json()["published"]
        assert [item["delivered"] for item in published] == [1, 1, 1, 1, 1]
        offsets = [item["topics"][0]["offset"] for item in published]
        assert offsets == sorted(set(offsets))  # one transaction, in the request's order

        for client, wanted in ((to_alice, [0, 3]), (to_bob, [1, 4]), (to_orders, [2])):
            received = await client.events(len(wanted))
            assert [frame["message"]["payload"]["n"] for frame in received] == wanted
            for frame, n in zip(received, wanted, strict=True):
                receipt = published[n]
                assert frame["message"]["id"] == receipt["id"]
                assert [frame["offset"], frame["epoch"]] == [
                    receipt["topics"][0]["offset"], receipt["topics"][0]["epoch"]
                ]
            assert await client.silent_for(0.3)  # nobody else's event, nothing twice


async def test_a_refused_batch_publishes_none_of_its_events(gateway: Gateway) -> None:
    user = str(uuid.uuid4())
    publisher = mint_token(TEST_SECRET, user, ["orders:read", "rtgw:publish"], 60)
    async with connect(gateway.ws_url) as client, httpx.AsyncClient(
        base_url=gateway.http_url
    ) as http:
        await _subscribed(client, "reader", "orders", ("orders:read",))

        async def post(events: list[dict[str, Any]]) -> httpx.Response:
            return await http.post("/v1/publish/batch", headers=bearer(publisher),
                                   json={"events": events})

        elsewhere = await post([_note(None, 0), _note(None, 1), _note("someone-else", 2)])
        assert (elsewhere.status_code, elsewhere.json()["code"]) == (403, "forbidden")
        assert elsewhere.json()["message"].startswith("events.2: ")
        unknown = await post([_note(None, 0), {**_note(None, 1), "channel": "nope"}])
        assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_channel")
        assert unknown.json()["message"].startswith("events.1: ")
        malformed = await post([_note(None, 0), {**_note(None, 1), "event": "has space"}])
        assert (malformed.status_code, malformed.json()["code"]) == (400, "bad_request")
        assert malformed.json()["message"].startswith("events.1.event:")

        last = await post([_note(None, 3)])
        assert last.status_code == 200, last.text
        [event] = await client.events(1)
        assert event["message"]["payload"] == {"n": 3}  # nothing of the refused batches came
        assert await client.silent_for(0.3)


async def test_the_batch_bounds_answer_with_their_codes(pg: EmbeddedPostgres) -> None:
    gateway = await start_gateway(pg.dsn, max_publish_batch=3, max_publish_bytes=2048,
                                  max_publish_batch_bytes=4096)
    try:
        async with httpx.AsyncClient(base_url=gateway.http_url) as http:
            async def post(body: Any) -> httpx.Response:
                return await http.post("/v1/publish/batch", headers=bearer(service_token()),
                                       json=body)

            many = await post({"events": [_note(None, n) for n in range(4)]})
            assert (many.status_code, many.json()["code"]) == (413, "batch_too_large")
            big = {**_note(None, 1), "payload": {"text": "x" * 2100}}
            one_too_big = await post({"events": [_note(None, 0), big]})
            assert (one_too_big.status_code, one_too_big.json()["code"]) == (
                413, "payload_too_large"
            )
            assert one_too_big.json()["message"].startswith("events.1: ")
            body_too_big = await post({"events": [{**big, "payload": {"t": "x" * 1500}}] * 3})
            assert (body_too_big.status_code, body_too_big.json()["code"]) == (
                413, "payload_too_large"
            )
            empty = await post({"events": []})
            assert (empty.status_code, empty.json()["code"]) == (400, "bad_request")
            no_token = await http.post("/v1/publish/batch", json={"events": [_note(None, 0)]})
            assert (no_token.status_code, no_token.json()["code"]) == (401, "auth_required")
            fits = await post({"events": [_note(None, n) for n in range(3)]})
            assert fits.status_code == 200 and len(fits.json()["published"]) == 3
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)


async def test_concurrent_publishes_each_arrive_once_at_the_offset_they_were_given(
    gateway: Gateway,
) -> None:
    """Publishes that arrive together are written together (group commit): each still gets
    its own offset, and the subscriber receives each once, in offset order."""
    async with connect(gateway.ws_url) as client, httpx.AsyncClient(
        base_url=gateway.http_url, limits=httpx.Limits(max_connections=50)
    ) as http:
        await _subscribed(client, "reader", "orders", ("orders:read",))
        answers = await asyncio.gather(*(
            http.post("/v1/publish", headers=bearer(service_token()), json=_note(None, n))
            for n in range(40)
        ))
        assert all(answer.status_code == 200 for answer in answers)
        given = {answer.json()["id"]: answer.json()["topics"][0]["offset"] for answer in answers}
        received = await client.events(40)
        assert {frame["message"]["id"]: frame["offset"] for frame in received} == given
        assert [frame["offset"] for frame in received] == sorted(given.values())
        assert await client.silent_for(0.3)


async def test_a_publish_the_database_refused_is_counted_and_the_next_one_goes_through(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as http:
        async def post(events: list[dict[str, Any]]) -> httpx.Response:
            return await http.post("/v1/publish/batch", headers=bearer(service_token()),
                                   json={"events": events})

        assert (await post([_note(None, 0), _note(None, 1)])).status_code == 200
        before = await _counts(http)
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE query LIKE '%pg_logical_emit_message%' AND pid <> pg_backend_pid()")
        lost = await post([_note(None, 2), _note(None, 3), _note(None, 4)])
        assert (lost.status_code, lost.json()["code"]) == (503, "not_ready")
        assert "did not take" in lost.json()["message"]  # nothing of it was stored
        assert (await post([_note(None, 5)])).status_code == 200  # on a new connection
        after = await _counts(http)
        assert (after[0] - before[0], after[1] - before[1]) == (1, 3)


async def _counts(http: httpx.AsyncClient) -> tuple[float, float]:
    """``rtgw_published_events_total`` and ``rtgw_publish_failures_total``."""
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families((await http.get("/metrics")).text)
        for sample in family.samples
    }
    return samples["rtgw_published_events_total"], samples["rtgw_publish_failures_total"]
