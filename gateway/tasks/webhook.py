"""The webhook delivery job that ``rtgw worker`` runs: one signed POST per attempt, to an
address checked just before (gateway/tasks/targets.py). A delivery succeeds on a 2xx answer;
anything else (another status, a redirect, a timeout, a refused target) raises, and RQ retries
it on the schedule the job carries, then keeps it as a dead letter."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from urllib.parse import urlsplit

from gateway.errors import RtgwError
from gateway.settings import Settings
from gateway.tasks.signing import secret_key, signed_headers
from gateway.tasks.targets import port_of, resolve

MAX_RESPONSE_BYTES = 64 * 1024  # read of an answer's body (it is not used)


class DeliveryFailed(RtgwError):
    """The receiver did not take the delivery (the message says how)."""


class _Pinned(http.client.HTTPConnection):
    """HTTP to ``host`` at a given address (the one that was checked)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedTLS(http.client.HTTPSConnection):
    """HTTPS to ``host`` at a given address; the certificate must name ``host``."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address
        self.tls = ssl.create_default_context()

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


def deliver(url: str, msg_id: str, body: str) -> int:
    """POST ``body`` (JSON) to ``url`` with the Standard Webhooks headers; the answer's status.
    Raises ``DeliveryFailed``, ``TargetRefused`` or ``OSError`` (all retried)."""
    settings = Settings()
    if settings.webhook_secret is None:
        raise DeliveryFailed("RTGW_WEBHOOK_SECRET is not set where rtgw worker runs")
    key = secret_key(settings.webhook_secret)
    addresses = resolve(url, settings.webhook_allow_private)
    data = body.encode()
    headers = {
        "content-type": "application/json",
        "user-agent": "rtgw",
        **signed_headers(key, msg_id, int(time.time()), data),
    }
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    kind = _PinnedTLS if parts.scheme == "https" else _Pinned
    host, port = parts.hostname, port_of(url)
    assert host, "channels.py checked the URL"
    failure: OSError | None = None
    for address in addresses:  # the first that accepts a connection gets the request
        connection = kind(host, port, address, settings.webhook_timeout_s)
        try:
            try:
                connection.connect()
            except OSError as exc:
                failure = exc
                continue
            connection.request("POST", path, body=data, headers=headers)
            response = connection.getresponse()
            response.read(MAX_RESPONSE_BYTES)
        finally:
            connection.close()
        if not 200 <= response.status < 300:
            raise DeliveryFailed(f"{url} answered HTTP {response.status}")
        return response.status
    raise DeliveryFailed(f"{url}: no address of {host} accepted a connection: {failure}")
