"""What a hostile client can send below the protocols, against a real gateway: oversized and
slow request heads, ping floods that never read the pongs, text that is not UTF-8. Each is
answered with a status and a JSON error (or a close code), bounded in memory, logged at info,
and leaves the gateway serving everyone else."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bench.raw_http import PING, TEXT, frame, open_raw, read_answer, upgrade
from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import Gateway, start_gateway

HEAD = "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.fixture
async def guarded(pg: EmbeddedPostgres) -> AsyncIterator[Gateway]:
    """A gateway with small limits: a 1 s head deadline and 4 connections per address."""
    gateway = await start_gateway(
        pg.dsn, head_timeout_s=1.0, max_connections_per_ip=4, max_frame_bytes=1024,
        max_outbox_bytes=64 * 1024, max_messages_per_s=1000,
    )
    try:
        yield gateway
    finally:
        await gateway.stop()


async def healthy(gateway: Gateway) -> float:
    """/healthz answers 200: how long it took, in seconds."""
    started = time.perf_counter()
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{gateway.http_url}/healthz")).status_code == 200
    return time.perf_counter() - started


@pytest.mark.parametrize(
    "head",
    [
        HEAD + "Authorization: Bearer " + "x" * 1_000_000 + "\r\n\r\n",  # a 1 MB header
        HEAD + "X-Line: " + "y" * 9 * 1024 + "\r\n\r\n",  # a 9 KB header line
        HEAD + "".join(f"X-{n}: {n}\r\n" for n in range(200)) + "\r\n",  # 200 header lines
    ],
    ids=["1MB-authorization", "9KB-line", "200-lines"],
)
async def test_an_oversized_head_gets_431_json_and_a_close(gateway: Gateway, head: str) -> None:
    reader, writer = await open_raw(gateway.settings.port)
    writer.write(head.encode())
    answer = await read_answer(reader)
    writer.close()
    assert answer.status == 431
    assert answer.body is not None and answer.body["code"] == "request_head_too_large"
    await healthy(gateway)


async def test_a_header_flood_is_cut_off_within_the_limit(gateway: Gateway) -> None:
    """Streaming header lines for ever: refused after ~16 KB, not after 64 MB."""
    reader, writer = await open_raw(gateway.settings.port)
    writer.write(HEAD.encode())
    sent = 0
    with pytest.raises((ConnectionResetError, BrokenPipeError)):  # noqa: PT012
        for number in range(64 * 1024):
            writer.write(f"X-Flood-{number}: {'z' * 1000}\r\n".encode())
            sent += 1
            await writer.drain()
            await asyncio.sleep(0)
    assert sent < 1000  # at most about a megabyte left before the gateway closed
    writer.close()
    await healthy(gateway)


async def test_slow_heads_time_out_and_count_against_the_address(guarded: Gateway) -> None:
    port = guarded.settings.port
    slow = [await open_raw(port) for _ in range(4)]
    for _, writer in slow:
        writer.write(HEAD.encode())  # a head that never ends
    refused_reader, refused_writer = await open_raw(port)  # the fifth from this address
    refused = await read_answer(refused_reader, wait_s=2)
    refused_writer.close()
    assert refused.status == 429 and refused.body is not None
    assert refused.body["code"] == "too_many_connections"

    started = time.monotonic()
    answers = [await read_answer(reader, wait_s=5) for reader, _ in slow]
    assert time.monotonic() - started < 3
    assert {(a.status, a.body["code"] if a.body else None) for a in answers} == {
        (408, "request_head_timeout")
    }
    for _, writer in slow:
        writer.close()
    await healthy(guarded)  # their slots are free again


async def test_a_ping_flood_that_never_reads_is_dropped_and_memory_stays_bounded(
    pg: EmbeddedPostgres,
) -> None:
    """Pings answered as fast as they come (a rate no limit stops), pongs never read: once
    64 KB of pongs wait on the server (the outbox bound) the client is dropped."""
    flooded = await start_gateway(pg.dsn, max_frame_bytes=1024, max_outbox_bytes=64 * 1024,
                                  max_messages_per_s=10_000_000)
    try:
        reader, writer = await upgrade(flooded.settings.port, receive_buffer=4096)
        ping = frame(PING, b"p" * 125)
        pings = 0
        dropped: BaseException | None = None
        try:
            async with asyncio.timeout(20):
                while True:
                    writer.write(ping * 100)
                    pings += 100
                    await writer.drain()
                    await asyncio.sleep(0)
        except (ConnectionResetError, BrokenPipeError) as exc:
            dropped = exc
        assert dropped is not None, f"still connected after {pings} pings"
        writer.close()
        assert await healthy(flooded) < 1.0
    finally:
        await flooded.stop()


async def test_pings_beyond_the_rate_are_not_answered(gateway: Gateway) -> None:
    reader, writer = await upgrade(gateway.settings.port)
    writer.write(frame(PING, b"x") * 200)  # the default rate: 20/s, bursts of 40
    await writer.drain()
    pongs = 0
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            while True:
                header = await reader.readexactly(2)
                assert header[0] & 0x0F == 0xA  # a pong
                await reader.readexactly(header[1] & 0x7F)
                pongs += 1
    assert 40 <= pongs <= 52
    writer.close()


async def test_text_that_is_not_utf8_closes_1007_without_a_traceback(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await upgrade(gateway.settings.port)
    with caplog.at_level(logging.INFO):
        writer.write(frame(TEXT, b"\xff\xfe not utf-8"))
        await writer.drain()
        header = await asyncio.wait_for(reader.readexactly(2), 5)
        assert header[0] & 0x0F == 0x8  # a close frame
        body = await reader.readexactly(header[1] & 0x7F)
        assert int.from_bytes(body[:2], "big") == 1007
    writer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert any("not UTF-8" in r.getMessage() for r in caplog.records)


async def test_refused_upgrades_are_info_lines_with_their_code(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await open_raw(gateway.settings.port)
    with caplog.at_level(logging.INFO):
        writer.write((HEAD + "Upgrade: websocket\r\nConnection: Upgrade\r\nOrigin: "
                      "https://evil.example\r\nSec-WebSocket-Key: "
                      "dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        answer = await read_answer(reader)
    writer.close()
    assert answer.status == 403 and answer.body is not None
    assert answer.body["code"] == "origin_forbidden"
    errors: list[Any] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert any("origin_forbidden" in r.getMessage() and r.levelno == logging.INFO
               for r in caplog.records)
