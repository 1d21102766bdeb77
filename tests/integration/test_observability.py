"""What an operator sees: /metrics, /healthz, /readyz, JSON errors over HTTP, and JSON logs.

A real gateway on a real port, real WebSocket clients, real Postgres.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
import websockets
from prometheus_client.parser import text_string_to_metric_families

from gateway import logs
from gateway.app import create_app
from gateway.metrics import _task_metrics
from gateway.settings import Settings
from gateway.tasks.base import TaskStats
from tests.conftest import REPO, TEST_SECRET, Gateway, connect, free_port, insert_orders, token

DASHBOARD = REPO / "deploy" / "grafana" / "rtgw-dashboard.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(gateway: Gateway) -> Samples:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{gateway.http_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def wait_for(gateway: Gateway, check: Any, wait_s: float = 10.0) -> Samples:
    """Scrape until ``check(samples)`` holds."""
    import asyncio
    import time

    deadline = time.monotonic() + wait_s
    while True:
        samples = await scrape(gateway)
        if check(samples):
            return samples
        assert time.monotonic() < deadline, "metrics never reached the expected values"
        await asyncio.sleep(0.1)


async def test_metrics_count_connections_changes_deliveries_latency_and_refusals(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    before = await scrape(gateway)
    insert = ("rtgw_changes_received_total", {"table": "public.orders", "op": "INSERT"})
    async with connect(gateway.ws_url) as a, connect(gateway.ws_url) as b:
        await a.auth(token())
        await b.auth(token())
        await a.subscribe("orders")
        await b.subscribe("orders")
        await b.subscribe("orders", filter="status=eq.paid")
        during = await scrape(gateway)
        assert value(during, "rtgw_connections", transport="native") == 2
        assert value(during, "rtgw_subscriptions", transport="native") == 3
        assert value(during, "rtgw_source_streaming") == 1
        assert value(during, "rtgw_history_replayed") == 1

        insert_orders(db, 3)
        await a.events(3)
        await b.events(3)
        after = await wait_for(
            gateway,
            lambda s: value(s, insert[0], **insert[1]) >= value(before, insert[0], **insert[1]) + 3
            and value(s, "rtgw_delivery_latency_seconds_count")
            > value(before, "rtgw_delivery_latency_seconds_count"),
        )
        # Counted once per publish: 3 events to 2 subscribers of one topic.
        delivered = value(after, "rtgw_messages_delivered_total") - value(
            before, "rtgw_messages_delivered_total"
        )
        assert delivered == 6
        kept = value(after, "rtgw_history_events") - value(before, "rtgw_history_events")
        assert kept == 3  # every change is kept for resume, once, however many subscribers
        latency = value(after, "rtgw_delivery_latency_seconds_sum") - value(
            before, "rtgw_delivery_latency_seconds_sum"
        )
        assert 0 < latency < 5

    async with connect(gateway.ws_url) as bad:
        refused = await bad.auth("not-a-jwt")
        assert refused["code"] == "token_malformed"
        with pytest.raises(websockets.ConnectionClosed):
            await bad.recv()
    end = await wait_for(gateway, lambda s: value(s, "rtgw_connections", transport="native") == 0)
    assert value(end, "rtgw_subscriptions", transport="native") == 0
    failures = "rtgw_auth_failures_total"
    assert value(end, failures, code="token_malformed") == value(
        before, failures, code="token_malformed"
    ) + 1
    closed = {"transport": "native", "code": "4001", "reason": "token_malformed"}
    left = {"transport": "native", "code": "client", "reason": "client_left"}
    assert value(end, "rtgw_disconnects_total", **closed) == value(
        before, "rtgw_disconnects_total", **closed
    ) + 1
    assert value(end, "rtgw_disconnects_total", **left) == value(
        before, "rtgw_disconnects_total", **left
    ) + 2


async def test_replication_lag_is_sampled_in_bytes(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    samples = await wait_for(gateway, lambda s: ("rtgw_replication_lag_bytes", frozenset()) in s)
    assert value(samples, "rtgw_replication_lag_bytes") >= 0


async def test_every_metric_the_grafana_dashboard_queries_is_exported(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    # Make every labelled series appear at least once: a change, a refusal, a disconnect.
    async with connect(gateway.ws_url) as client:
        await client.auth(token())
        await client.subscribe("orders")
        insert_orders(db, 1)
        await client.events(1)
    async with connect(gateway.ws_url) as bad:
        await bad.auth("not-a-jwt")
    samples = await wait_for(
        gateway,
        lambda s: ("rtgw_replication_lag_bytes", frozenset()) in s
        and value(s, "rtgw_delivery_latency_seconds_count") > 0,
    )
    exported = {name for name, _ in samples}
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
        for name in re.findall(r"\brtgw_[a-z_]+", target["expr"])
    }
    # Tasks are not configured here: their series are the ones the gateway renders for them.
    counts = {"orders.t": 1}
    stats = TaskStats(enqueued=counts, succeeded=counts, retried=counts, dead_lettered=counts)
    exported |= {sample.name for family in _task_metrics(stats) for sample in family.samples}
    assert len(queried) >= 10
    assert {"rtgw_slot_owner", "rtgw_enrich_hits_total", "rtgw_roles_revocations_total",
            "rtgw_tasks_dead_lettered_total", "rtgw_tasks_queue_depth"} <= queried
    assert queried - exported == set()


async def test_healthz_and_readyz(gateway: Gateway) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{gateway.http_url}/healthz")).json() == {"status": "ok"}
        ready = await http.get(f"{gateway.http_url}/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready", "slot_owner": True}


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "jwt_secret": TEST_SECRET, "channels": REPO / "channels", "port": free_port(),
        "slot": "unused_slot", "publication": "rtgw",
    }
    return Settings(**{**values, **overrides})


async def _serve(settings: Settings, **app_kwargs: Any) -> tuple[uvicorn.Server, Any]:
    import asyncio

    from gateway.server import uvicorn_config

    app = create_app(settings, **app_kwargs)
    server = uvicorn.Server(uvicorn_config(app, settings, "warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done()
        await asyncio.sleep(0.02)
    return server, task


async def test_readyz_is_503_while_postgres_is_unreachable() -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    settings = _settings(database_url=dead)
    server, task = await _serve(settings)
    url = f"http://127.0.0.1:{settings.port}"
    try:
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{url}/healthz")).status_code == 200
            ready = await http.get(f"{url}/readyz")
            assert ready.status_code == 503
            assert ready.json()["code"] == "not_ready"
            metrics = await http.get(f"{url}/metrics")
            assert "rtgw_source_streaming 0.0" in metrics.text
    finally:
        server.should_exit = True
        await task


async def test_every_http_error_is_json_with_a_stable_code(gateway: Gateway) -> None:
    async with httpx.AsyncClient() as http:
        missing = await http.get(f"{gateway.http_url}/nope")
        assert missing.status_code == 404
        assert missing.json() == {"code": "not_found", "message": "no endpoint at /nope"}
        wrong = await http.post(f"{gateway.http_url}/healthz")
        assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"
        assert "allow" in wrong.headers


async def test_validation_and_unexpected_errors_are_json_without_a_trace(
    pg: Any,
) -> None:
    settings = _settings(database_url=pg.dsn)
    app = create_app(settings)

    @app.get("/probe/{number}")
    async def probe(number: int) -> dict[str, int]:
        if number == 0:
            raise RuntimeError("secret internals")
        return {"number": number}

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        assert (await http.get("/probe/3")).json() == {"number": 3}
        invalid = await http.get("/probe/three")
        assert invalid.status_code == 422
        assert invalid.json()["code"] == "invalid_request"
        assert "number" in invalid.json()["message"]
        broken = await http.get("/probe/0")
        assert broken.status_code == 500
        assert broken.json() == {
            "code": "internal_error", "message": "An unexpected error; it was logged.",
        }
        assert "secret internals" not in broken.text and "Traceback" not in broken.text


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The gateway's log configuration, writing into a buffer."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    logs.configure("json", "info")
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        yield stream
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


async def test_logs_are_json_with_connection_ids_and_never_tokens(
    gateway: Gateway, json_logs: io.StringIO
) -> None:
    good, expired = token(), token(ttl=-60)
    async with connect(gateway.ws_url) as client:
        ready = await client.auth(good)
        await client.subscribe("orders")
    async with connect(gateway.ws_url, additional_headers={"Authorization": f"Bearer {expired}"}
                       ) as late:
        assert (await late.recv())["code"] == "token_expired"
    logging.getLogger("rtgw.test").info("a caller logged %s and Bearer %s", good, expired)

    import asyncio

    await asyncio.sleep(0.2)
    text = json_logs.getvalue()
    assert good not in text and expired not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)
    mine = [line for line in lines if line.get("connection_id") == ready["connection_id"]]
    assert [line["message"] for line in mine] == [
        "connection opened (native)", "connection closed: by the client (client_left)",
    ]
    refused = [line for line in lines if "token_expired" in line["message"]]
    assert refused and all("connection_id" in line for line in refused)
    assert any("[redacted]" in line["message"] for line in lines)


def test_json_formatter_redacts_tokens_in_exceptions() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "auth %s", ("eyJa.eyJb.c",), None)
    try:
        raise ValueError("Bearer abc.def")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["message"] == "auth [redacted]"
    assert "abc.def" not in line["exc"] and "[redacted]" in line["exc"]


def test_dashboard_file_is_valid_grafana_json() -> None:
    dashboard = json.loads(Path(DASHBOARD).read_text(encoding="utf-8"))
    assert dashboard["uid"] == "rtgw"
    assert all(panel.get("datasource") for panel in dashboard["panels"] if "targets" in panel)


async def test_readyz_is_503_while_replication_is_down_and_200_once_it_recovers(
    gateway: Gateway, db: psycopg.Connection[Any]
) -> None:
    import asyncio
    import time

    db.execute(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s",
        (gateway.settings.slot,),
    )
    seen: list[int] = []
    deadline = time.monotonic() + 15
    async with httpx.AsyncClient() as http:
        while not (503 in seen and seen[-1] == 200):
            assert time.monotonic() < deadline, seen
            response = await http.get(f"{gateway.http_url}/readyz")
            if response.status_code == 503:
                assert response.json()["code"] == "not_ready"
                assert "not streaming" in response.json()["message"]
            if not seen or seen[-1] != response.status_code:
                seen.append(response.status_code)
            await asyncio.sleep(0.01)
    assert seen[-2:] == [503, 200]
