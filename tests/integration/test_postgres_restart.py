"""A gateway never stands in the way of a DBA: Postgres' fast shutdown finishes while rtgw is
attached with history kept (streaming, and idle), and clients lose nothing across the restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest

from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import (
    Gateway,
    connect,
    embedded_cluster,
    insert_order,
    start_gateway,
    token,
    wait_ready,
)

STOP_BOUND_S = 15.0  # a fast stop takes well under a second without rtgw


@pytest.fixture
def cluster() -> Iterator[EmbeddedPostgres]:
    with embedded_cluster("restart") as server:
        yield server


@pytest.fixture
async def attached(cluster: EmbeddedPostgres) -> AsyncIterator[Gateway]:
    """A gateway on the cluster, keeping the default history (so the slot is confirmed only as
    far as the oldest event kept)."""
    gateway = await start_gateway(cluster.dsn)
    try:
        yield gateway
    finally:
        await gateway.stop()


def order(dsn: str, status: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return insert_order(conn, status)


async def timed_fast_stop(cluster: EmbeddedPostgres) -> float:
    started = time.monotonic()
    await asyncio.to_thread(cluster.stop, "fast", STOP_BOUND_S)
    return time.monotonic() - started


async def test_a_fast_stop_under_a_steady_stream_finishes_and_nothing_is_lost(
    cluster: EmbeddedPostgres, attached: Gateway
) -> None:
    async with connect(attached.ws_url) as client:
        await client.auth(token())
        await client.subscribe("orders", filter="status=eq.steady")
        written: list[int] = []

        async def write_steadily() -> None:
            while True:
                with contextlib.suppress(psycopg.OperationalError):
                    written.append(await asyncio.to_thread(order, cluster.dsn, "steady"))
                await asyncio.sleep(0.02)

        writer = asyncio.create_task(write_steadily())
        await asyncio.sleep(1.0)
        stop_s = await timed_fast_stop(cluster)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        assert stop_s < STOP_BOUND_S
        before = list(written)

        await asyncio.to_thread(cluster.start)
        after = [await asyncio.to_thread(order, cluster.dsn, "steady") for _ in range(3)]
        events = await client.events(len(before) + len(after), wait_s=30)
        ids = [event["change"]["new"]["id"] for event in events]
        assert ids == before + after  # every committed row, once, in order
        assert await client.silent_for(0.3)


async def test_a_fast_stop_with_an_idle_gateway_holding_history_finishes(
    cluster: EmbeddedPostgres, attached: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(5):
        order(cluster.dsn, "kept")  # history holds these: the slot is confirmed before them
    await asyncio.sleep(1.5)  # idle
    with caplog.at_level(logging.INFO, logger="rtgw.source.postgres"):
        assert await timed_fast_stop(cluster) < STOP_BOUND_S
        await asyncio.to_thread(cluster.start)
        await wait_ready(attached.http_url)
        await attached.stop()
    messages = [record.getMessage() for record in caplog.records]
    assert any("confirmed past the history kept" in m for m in messages)
    # The slot no longer keeps that history: no note claims it for the next process.
    assert any(m.startswith("no history note") for m in messages)
