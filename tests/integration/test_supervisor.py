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


async def test_an_error_it_does_not_supervise_ends_run() -> None:
    supervisor = Supervisor(Backoff(0.01, 0.02), first_line, log, "test stopped", (Lost,))

    async def session() -> None:
        supervisor.up()
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        await supervisor.run(session)
    assert not supervisor.streaming and supervisor.last_error is None
