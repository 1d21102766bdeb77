"""gateway.sources.base.Backoff: the reconnect delays every source uses."""

from __future__ import annotations

from gateway.sources.base import Backoff


def test_delays_double_up_to_the_maximum() -> None:
    backoff = Backoff(0.5, 4.0)
    assert [backoff.next(0.1) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_long_healthy_session_starts_over() -> None:
    backoff = Backoff(0.5, 30.0, healthy_s=30.0)
    for _ in range(4):
        backoff.next(1.0)
    assert backoff.next(31.0) == 0.5
    assert backoff.next(1.0) == 1.0


def test_retry_at_once_then_back_to_the_initial_delay() -> None:
    backoff = Backoff(0.5, 30.0)
    backoff.next(1.0)
    backoff.next(1.0)
    backoff.retry_at_once()
    assert backoff.next(100.0) == 0.0  # even after a long session: now means now
    assert backoff.next(1.0) == 0.5
