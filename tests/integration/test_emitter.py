"""The Postgres source's emitter (group commit) on a real database: calls made while a write
runs share the next write, a failure refuses every call it carried, and what waits is bounded."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import GatewayError
from gateway.sources.embedded import EmbeddedPostgres
from gateway.sources.postgres.emitter import Emitter
from tests.conftest import free_port

PREFIX = "rtgw.test"  # not rtgw's own prefix: no gateway reads these back


async def test_calls_made_together_share_one_write(pg: EmbeddedPostgres) -> None:
    emitter = Emitter(pg.dsn, PREFIX)
    try:
        await emitter.emit([])  # nothing to write: no statement
        await emitter.emit([b"first"])
        assert emitter.writes == 1
        await asyncio.gather(*(emitter.emit([b"%d" % n, b"more"]) for n in range(20)))
        assert emitter.writes == 2  # one statement, so one transaction, for all twenty
    finally:
        await emitter.close()


async def test_a_database_that_does_not_take_them_refuses_every_call_of_the_write() -> None:
    emitter = Emitter(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", PREFIX)
    try:
        outcomes = await asyncio.gather(
            *(emitter.emit([b"lost"]) for _ in range(3)), return_exceptions=True
        )
        assert [getattr(outcome, "code", outcome) for outcome in outcomes] == ["not_ready"] * 3
        assert emitter.writes == 0
    finally:
        await emitter.close()


async def test_bytes_waiting_beyond_the_bound_are_refused(pg: EmbeddedPostgres) -> None:
    emitter = Emitter(pg.dsn, PREFIX, max_waiting_bytes=10)
    try:
        first = asyncio.create_task(emitter.emit([b"12345"]))
        await asyncio.sleep(0)  # it waits for its write
        with pytest.raises(GatewayError) as refused:
            await emitter.emit([b"123456"])
        assert refused.value.code == "not_ready"
        await first
        await emitter.emit([b"1234567890"])  # nothing waits any more
        assert emitter.writes == 2
    finally:
        await emitter.close()


async def test_a_database_that_never_answers_is_given_up_on_and_the_next_write_retries() -> None:
    silent: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    emitter = Emitter(f"postgresql://postgres@127.0.0.1:{port}/postgres", PREFIX,
                      write_timeout_s=0.3)
    try:
        for attempt in range(2):  # a write given up on does not leave the next one stuck
            with pytest.raises(GatewayError) as refused:
                await asyncio.wait_for(emitter.emit([b"lost"]), 5)
            assert refused.value.code == "not_ready"
            assert refused.value.message == (
                "the database did not answer within 0.3 s; the event may still be published"
            )
            assert len(silent) == attempt + 1  # each write connected anew
        assert emitter.writes == 0
    finally:
        await emitter.close()
        for writer in silent:
            writer.close()
        server.close()
        await server.wait_closed()
