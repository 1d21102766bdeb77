"""Where a webhook may go: never into the gateway's own networks (loopback, private,
link-local, shared, reserved, multicast) unless ``RTGW_WEBHOOK_ALLOW_PRIVATE=true``. Every
address a host resolves to is checked: at start, and again before each delivery, which then
connects to a checked address (DNS cannot answer differently in between: no rebinding)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from gateway.errors import RtgwError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(RtgwError):
    """A webhook's host resolves to an address it may not reach."""


def refused(address: Address) -> bool:
    """Whether ``address`` is not on the public internet (or embeds an IPv4 one that is not)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None and refused(embedded):
            return True
    return address.is_multicast or not address.is_global


def port_of(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def resolve(url: str, allow_private: bool) -> list[str]:
    """The addresses of ``url``'s host, each checked. Blocking (DNS). Raises ``TargetRefused``,
    or ``OSError`` when the host does not resolve."""
    host = urlsplit(url).hostname
    assert host, "channels.py checked the URL"
    infos = socket.getaddrinfo(host, port_of(url), type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for address in addresses:
            if refused(ipaddress.ip_address(address)):
                raise TargetRefused(
                    f"{host} resolves to {address}, which is not a public address; set "
                    "RTGW_WEBHOOK_ALLOW_PRIVATE=true to allow loopback and private targets"
                )
    return addresses
