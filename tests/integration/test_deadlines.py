"""gateway.deadlines: many timers on one loop timer, behaving as the loop's ``call_later``."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.deadlines import Deadlines


async def test_callbacks_run_once_in_time_order_and_same_times_in_the_order_set() -> None:
    deadlines = Deadlines()
    ran: list[str] = []
    done = asyncio.get_running_loop().create_future()
    deadlines.call_later(0.03, ran.append, "c")
    deadlines.call_later(0.01, ran.append, "a")
    deadlines.call_later(0.02, ran.append, "b1")
    deadlines.call_later(0.02, ran.append, "b2")
    deadlines.call_later(0.04, done.set_result, None)
    assert len(deadlines) == 5
    await asyncio.wait_for(done, 5)
    assert ran == ["a", "b1", "b2", "c"]
    assert len(deadlines) == 0


async def test_a_cancelled_callback_never_runs() -> None:
    deadlines = Deadlines()
    ran: list[str] = []
    done = asyncio.get_running_loop().create_future()
    first = deadlines.call_later(0.01, ran.append, "cancelled")
    deadlines.call_later(0.02, ran.append, "kept")
    deadlines.call_later(0.03, done.set_result, None)
    first.cancel()
    first.cancel()  # twice is harmless
    assert first.cancelled() and len(deadlines) == 2
    await asyncio.wait_for(done, 5)
    assert ran == ["kept"]


async def test_an_earlier_deadline_set_later_still_runs_first() -> None:
    deadlines = Deadlines()
    ran: list[str] = []
    done = asyncio.get_running_loop().create_future()
    deadlines.call_later(5.0, ran.append, "late")
    deadlines.call_later(0.01, ran.append, "early")
    deadlines.call_later(0.02, done.set_result, None)
    await asyncio.wait_for(done, 2)  # the loop timer was moved to the earlier deadline
    assert ran == ["early"]


async def test_a_callback_may_set_and_cancel_deadlines_and_an_error_spares_the_others() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    deadlines = Deadlines()
    ran: list[str] = []
    done = loop.create_future()
    victim = deadlines.call_later(0.02, ran.append, "cancelled by another")

    def first() -> None:
        ran.append("first")
        victim.cancel()
        deadlines.call_later(0.0, ran.append, "set by first")
        deadlines.call_later(0.01, done.set_result, None)

    def failing() -> None:
        raise ValueError("boom")

    try:
        deadlines.call_later(0.01, first)
        deadlines.call_later(0.01, failing)
        deadlines.call_later(0.01, ran.append, "after the error")
        await asyncio.wait_for(done, 5)
    finally:
        loop.set_exception_handler(None)
    assert ran == ["first", "after the error", "set by first"]
    assert [type(context["exception"]) for context in errors] == [ValueError]


async def test_cancelled_deadlines_do_not_pile_up() -> None:
    deadlines = Deadlines()
    for _ in range(10_000):
        deadlines.call_later(60.0, print).cancel()  # a connection's auth deadline, say
    kept = deadlines.call_later(60.0, print)
    assert len(deadlines) == 1
    assert len(deadlines._heap) <= 2 * 64 + 1  # the heap was rebuilt without them
    kept.cancel()
