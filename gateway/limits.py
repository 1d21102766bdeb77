"""Limits, rate and count limiting, sans-I/O: the time is passed in."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from gateway.errors import GatewayError


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may do and hold."""

    max_frame_bytes: int = 64 * 1024
    max_outbox_bytes: int = 4 * 1024 * 1024
    max_subscriptions: int = 100
    auth_timeout_s: float = 10.0
    max_messages_per_s: float = 20.0  # client frames; bursts of twice that are allowed
    idle_timeout_s: float = 60.0  # Phoenix: close after this long without a frame from the client



@dataclass(slots=True)
class TokenBucket:
    """Allows ``rate`` events per second on average, bursts of up to ``burst``."""

    rate: float
    burst: float
    _tokens: float = field(init=False)
    _stamp: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a TokenBucket needs rate > 0 and burst >= 1")
        self._tokens = self.burst

    def allow(self, now: float) -> bool:
        """Take one token at monotonic time ``now``; False when none is left."""
        if self._stamp is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class ProxySet:
    """The load balancers and proxies in front of the gateway (RTGW_TRUSTED_PROXIES): addresses
    and networks (``10.0.0.0/8``) whose ``X-Forwarded-For`` names the real client. Raises
    ``ValueError`` for an entry that is neither."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.entries = entries
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None

    def __contains__(self, address: str) -> bool:
        if not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)


class ConnectionCounter:
    """Open connections per client address, at most ``limit`` each."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the per-address connection limit must be >= 1")
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, address: str) -> bool:
        count = self._open.get(address, 0)
        if count >= self.limit:
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)

    def __len__(self) -> int:
        return len(self._open)

    def count(self, address: str) -> int:
        return self._open.get(address, 0)


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """What an HTTP request's head (request line and headers) may be."""

    max_bytes: int = 16 * 1024
    max_line_bytes: int = 8 * 1024
    max_lines: int = 100
    timeout_s: float = 5.0


@dataclass(slots=True)
class HeadMeter:
    """Measures a request's head as its bytes arrive, before any parser buffers them.
    ``feed`` returns how many bytes of ``data`` belong to the head once the head is complete
    (its empty line seen), None while it goes on, and raises ``GatewayError`` (code
    ``request_head_too_large``) as soon as a limit is passed."""

    limits: HeadLimits
    total: int = 0
    lines: int = 0
    line: int = 0  # bytes of the line being read
    blank: bool = True  # the line being read has nothing but line-end bytes so far

    def feed(self, data: bytes) -> int | None:
        limits, start = self.limits, 0
        while True:
            end = data.find(b"\n", start)
            stop = len(data) if end < 0 else end + 1
            size = stop - start
            self.blank = self.blank and not data[start:stop].strip(b"\r\n")
            self.line += size
            self.total += size
            if self.line > limits.max_line_bytes or self.total > limits.max_bytes:
                raise GatewayError(
                    "request_head_too_large",
                    f"request heads are limited to {limits.max_bytes} bytes, "
                    f"{limits.max_line_bytes} per line",
                )
            if end < 0:
                return None
            if not self.blank:  # a request or header line
                self.lines += 1
                if self.lines > limits.max_lines:
                    raise GatewayError(
                        "request_head_too_large",
                        f"request heads are limited to {limits.max_lines} lines",
                    )
            elif self.lines:  # an empty line after them: the head is complete
                return end + 1
            self.line, self.blank = 0, True
            start = end + 1
