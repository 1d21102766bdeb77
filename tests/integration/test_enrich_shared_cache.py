"""The shared lookup cache (RTGW_CACHE=redis) with real gateways, real Postgres and real Redis:
two ``rtgw serve`` processes share it and are both kept current by the stream; when Redis is
down the stream flows and lookups go to the database."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import redis

from gateway.enrich import CACHE_RETRY_S
from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import (
    Gateway,
    connect,
    drop_slot,
    free_port,
    rtgw_serve,
    serve_env,
    start_gateway,
    stop_process,
    token,
    wait_ready,
)
from tests.integration.test_enrichment import customer, metric, order_for
from tests.redis_server import RedisServer


async def test_two_processes_share_the_cache_and_both_see_a_change(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], redis_url: str
) -> None:
    prefix = f"test:{secrets.token_hex(6)}"  # the two share it; no other test does
    slots = [f"test_{secrets.token_hex(4)}" for _ in range(2)]
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    processes = [
        await rtgw_serve(serve_env(pg.dsn, slot, port, cache="redis", cache_prefix=prefix,
                                   redis_url=redis_url))
        for slot, port in zip(slots, ports, strict=True)
    ]
    try:
        for url in urls:
            await wait_ready(url, 60)
        async with (
            connect(f"ws://127.0.0.1:{ports[0]}/v1/ws") as first,
            connect(f"ws://127.0.0.1:{ports[1]}/v1/ws") as second,
        ):
            for client in (first, second):
                await client.auth(token())
                await client.subscribe("orders")
            buyer = customer(db, "Ada")
            queries = await metric(urls[1], "rtgw_enrich_queries_total")
            hits = await metric(urls[1], "rtgw_enrich_hits_total")
            # The second process waits until the first has looked the customer up.
            os.kill(processes[1].pid, signal.SIGSTOP)
            try:
                order = order_for(db, buyer)
                [event] = await first.events(1)
                assert event["change"]["new"]["customer"] == {"name": "Ada", "tier": "gold"}
            finally:
                os.kill(processes[1].pid, signal.SIGCONT)
            [event] = await second.events(1)
            assert event["change"]["new"]["customer"] == {"name": "Ada", "tier": "gold"}
            assert await metric(urls[1], "rtgw_enrich_queries_total") == queries  # from Redis
            assert await metric(urls[1], "rtgw_enrich_hits_total") == hits + 1

            db.execute("UPDATE customers SET name = 'Ada L.' WHERE id = %s", (buyer,))
            db.execute("UPDATE orders SET status = 'paid' WHERE id = %s", (order,))
            for client in (first, second):
                [event] = await client.events(1)
                assert event["change"]["new"]["customer"]["name"] == "Ada L."
    finally:
        for process in processes:
            await stop_process(process)
        for slot in slots:
            drop_slot(pg.dsn, slot)


@pytest.fixture
async def cached(pg: EmbeddedPostgres, private_redis: RedisServer) -> AsyncIterator[Gateway]:
    """A gateway whose lookup cache is the test's own Redis, which the test may kill."""
    gateway = await start_gateway(pg.dsn, cache="redis", redis_url=private_redis.url,
                                  cache_prefix="test")
    try:
        yield gateway
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)


async def test_with_redis_down_the_stream_flows_and_the_database_answers(
    cached: Gateway, db: psycopg.Connection[Any], private_redis: RedisServer
) -> None:
    gateway = cached
    async with connect(gateway.ws_url) as client:
        await client.auth(token())
        await client.subscribe("orders")
        buyer = customer(db, "Grace")
        order_for(db, buyer)
        await client.events(1)
        private_redis.kill()
        db.execute("UPDATE customers SET name = 'Grace H.' WHERE id = %s", (buyer,))
        for _ in range(3):
            order_for(db, buyer)
        for event in await client.events(3):
            assert event["change"]["new"]["customer"]["name"] == "Grace H."
        assert await metric(gateway.http_url, "rtgw_enrich_cache_errors_total") >= 1

        private_redis.start()  # back, empty: the gateway resets it and uses it again
        await asyncio.sleep(CACHE_RETRY_S)
        order_for(db, buyer)
        await client.events(1)
        hits = await metric(gateway.http_url, "rtgw_enrich_hits_total")
        order_for(db, buyer)
        [event] = await client.events(1)
        assert event["change"]["new"]["customer"]["name"] == "Grace H."
        assert await metric(gateway.http_url, "rtgw_enrich_hits_total") == hits + 1


async def test_a_cache_that_missed_a_drop_is_reset_before_it_is_trusted_again(
    cached: Gateway, db: psycopg.Connection[Any], private_redis: RedisServer
) -> None:
    gateway = cached
    async with connect(gateway.ws_url) as client:
        await client.auth(token())
        await client.subscribe("orders")
        buyer = customer(db, "Ada")
        order_for(db, buyer)
        await client.events(1)  # Ada is in the cache
        # Redis refuses writes (out of memory): the rename's drop is lost, Ada stays.
        admin = redis.Redis.from_url(private_redis.url)
        admin.config_set("maxmemory", 1)
        try:
            db.execute("UPDATE customers SET name = 'Ada L.' WHERE id = %s", (buyer,))
            order_for(db, buyer)
            [event] = await client.events(1)
            assert event["change"]["new"]["customer"]["name"] == "Ada L."
            assert await metric(gateway.http_url, "rtgw_enrich_cache_errors_total") >= 1
        finally:
            admin.config_set("maxmemory", 0)
            admin.close()
        await asyncio.sleep(CACHE_RETRY_S)
        order_for(db, buyer)
        [event] = await client.events(1)  # Redis still holds "Ada": it must not be served
        assert event["change"]["new"]["customer"]["name"] == "Ada L."
