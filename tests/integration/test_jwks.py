"""gateway.jwks.fetch over real HTTP: the keys, or a JwksError whose reason says what went
wrong."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.jwks import MAX_BYTES, JwksError, fetch
from tests.conftest import free_port
from tests.integration import test_auth
from tests.integration.test_auth import JwksServer, rsa_jwk

server = test_auth.server  # the auth tests' fixture: a JWKS server on a free port


def test_fetch_returns_the_usable_keys_by_kid(server: JwksServer) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server.jwks = {"keys": [rsa_jwk(key, "k1"), {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"}]}
    assert list(fetch(server.url, 5.0)) == ["k1"]
    assert server.requests == 1


@pytest.mark.parametrize(
    ("status", "body", "reason", "message"),
    [
        (404, b"{}", "http", "HTTP 404 Not Found"),
        (200, b"<html>", "not_json", "the JWKS is not valid JSON"),
        (200, b'{"no": "keys"}', "not_jwks", "the JWKS has no 'keys' list"),
        (200, b" " * (MAX_BYTES + 1), "not_jwks", f"the JWKS is larger than {MAX_BYTES} bytes"),
    ],
)
def test_fetch_says_why_an_answer_is_not_a_jwks(
    server: JwksServer, status: int, body: bytes, reason: str, message: str
) -> None:
    server.status, server.body = status, body
    with pytest.raises(JwksError) as info:
        fetch(server.url, 5.0)
    assert (info.value.reason, str(info.value)) == (reason, message)
    assert info.value.status == (status if reason == "http" else None)


def test_fetch_without_an_answer_is_unreachable(server: JwksServer) -> None:
    server.delay_s = 1.0
    with pytest.raises(JwksError) as info:
        fetch(server.url, 0.2)
    assert (info.value.reason, str(info.value)) == ("unreachable", "no answer within 0.2s")
    with pytest.raises(JwksError) as info:
        fetch(f"http://127.0.0.1:{free_port()}/jwks.json", 5.0)
    assert info.value.reason == "unreachable" and "refused" in str(info.value)
