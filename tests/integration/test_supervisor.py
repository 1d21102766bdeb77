"""sources.base.Supervisor: the reconnect loop every source runs, driven by fake sessions."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from gateway.sources.base import Backoff, Supervisor, first_line

log = logging.getLogger("test.supervisor")


class Lost(Exception):
    pass


async def test_sessions_are_retried_with_backoff_and_report_why_they_ended() -> None:
    supervisor = Supervisor(Backoff(0.01, 0.02), lambda exc: f"lost: {first_line(exc)}", log,
                            "test stopped", (Lost,))
    states: list[tuple[bool, str | None, int]] = []
    ended = asyncio.Event()

    async def session() -> None:
        states.append((supervisor.streaming, supervisor.last_error, supervisor.sessions))
        if len(states) == 3:
            ended.set()
            await asyncio.Event().wait()  # streams until cancelled
        supervisor.up()
        states.append((supervisor.streaming, supervisor.last_error, supervisor.sessions))
        raise Lost(f"socket closed {len(states)}\nmore")

    task = asyncio.create_task(supervisor.run(session))
    await asyncio.wait_for(ended.wait(), 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert states == [
        (False, None, 0), (True, None, 1),
        (False, "lost: socket closed 2", 1),
    ]
    assert not supervisor.streaming


async def test_an_unexpected_error_is_logged_reported_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in a session (not one of the errors it supervises) must not end the source
    silently: it is logged with its traceback, shown in ``last_error``, and retried."""
    supervisor = Supervisor(Backoff(0.01, 0.02), first_line, log, "test stopped", (Lost,))
    attempts = 0
    retried = asyncio.Event()

    async def session() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 2:
            retried.set()
            await asyncio.Event().wait()
        supervisor.up()
        raise KeyError("a bug")

    with caplog.at_level(logging.ERROR, logger="test.supervisor"):
        task = asyncio.create_task(supervisor.run(session))
        await asyncio.wait_for(retried.wait(), 5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert supervisor.last_error == "internal_error: KeyError: 'a bug'"
    [record] = caplog.records
    assert record.exc_info is not None and "unexpected error" in record.getMessage()
