"""gateway.limits: the token bucket and the per-address connection counter."""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError
from gateway.limits import ConnectionCounter, HeadLimits, HeadMeter, ProxySet, TokenBucket


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


def test_proxy_set_holds_addresses_and_networks() -> None:
    proxies = ProxySet(("10.1.0.0/16", "192.0.2.7", "::1"))
    assert "10.1.200.3" in proxies and "192.0.2.7" in proxies and "::1" in proxies
    assert "10.2.0.1" not in proxies and "192.0.2.8" not in proxies
    assert "unknown" not in proxies  # a peer with no IP address is never a proxy
    assert "127.0.0.1" not in ProxySet(())


def test_proxy_set_refuses_what_is_not_an_address() -> None:
    with pytest.raises(ValueError, match="'lb.internal' is not an IP address or network"):
        ProxySet(("lb.internal",))


def test_counter_refuses_a_zero_limit() -> None:
    with pytest.raises(ValueError):
        ConnectionCounter(0)


# --- HeadMeter: request heads measured as their bytes arrive ------------------------------


def meter(**limits: float) -> HeadMeter:
    return HeadMeter(HeadLimits(**limits))  # type: ignore[arg-type]


def test_a_head_ends_at_its_empty_line_whatever_the_chunks() -> None:
    head = b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\nbody"
    whole = meter()
    assert whole.feed(head) == len(head) - 4
    assert (whole.lines, whole.total) == (3, len(head) - 4)
    chunked = meter()
    ends = [chunked.feed(head[i : i + 1]) for i in range(len(head) - 4)]
    assert ends[:-1] == [None] * (len(ends) - 1) and ends[-1] == 1  # "\r" and "\n" apart too


def test_blank_lines_before_the_request_line_do_not_end_it() -> None:
    assert meter().feed(b"\r\n\nGET / HTTP/1.1\r\n\r\n") == 21
    assert meter().feed(b"a\nb\n\n") == 5  # a one-byte line is a line, not the end


def test_the_total_the_line_and_the_line_count_are_bounded() -> None:
    with pytest.raises(GatewayError) as total:
        meter(max_bytes=100).feed(b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 20)
    assert total.value.code == "request_head_too_large"
    long = meter(max_line_bytes=50)
    assert long.feed(b"GET / HTTP/1.1\r\nX-Long: ") is None
    with pytest.raises(GatewayError):
        long.feed(b"v" * 43)  # the line grows across chunks: 8 + 43 > 50
    with pytest.raises(GatewayError) as lines:
        meter(max_lines=3).feed(b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n")
    assert "3 lines" in lines.value.message
