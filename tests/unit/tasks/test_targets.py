"""gateway.tasks.targets: which addresses a webhook may not reach."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.tasks.targets import refused


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "0.0.0.0", "224.0.0.1", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1",
        "::ffff:169.254.169.254", "2002:a00:1::1", "::",
    ],
)
def test_loopback_private_link_local_and_disguised_ones_are_refused(address: str) -> None:
    assert refused(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert not refused(ipaddress.ip_address(address))
