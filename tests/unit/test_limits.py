"""gateway.limits: the token bucket and the per-address connection counter."""

from __future__ import annotations

import pytest

from gateway.limits import ConnectionCounter, TokenBucket


def test_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.allow(0.05) is False  # half a token refilled
    assert bucket.allow(0.1) is True  # one token after 0.1 s at 10/s
    assert bucket.allow(0.1) is False


def test_bucket_refills_only_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=100, burst=2)
    assert bucket.allow(0.0) and bucket.allow(0.0)
    assert [bucket.allow(100.0) for _ in range(3)] == [True, True, False]


def test_sustained_rate_is_enforced() -> None:
    bucket = TokenBucket(rate=50, burst=5)
    allowed = sum(bucket.allow(i / 1000) for i in range(10_000))  # 1,000/s for 10 s
    assert 500 <= allowed <= 506


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0.5)])
def test_bucket_refuses_nonsense(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=rate, burst=burst)


def test_counter_limits_each_address() -> None:
    counter = ConnectionCounter(limit=2)
    assert counter.acquire("a") and counter.acquire("a")
    assert counter.acquire("a") is False
    assert counter.acquire("b") is True
    counter.release("a")
    assert counter.count("a") == 1 and counter.acquire("a") is True
    for _ in range(2):
        counter.release("a")
    counter.release("b")
    assert len(counter) == 0  # released addresses are forgotten: the map stays bounded
    counter.release("never-seen")
    assert counter.count("never-seen") == 0


def test_counter_refuses_a_zero_limit() -> None:
    with pytest.raises(ValueError):
        ConnectionCounter(0)
