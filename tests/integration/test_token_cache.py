"""The verified-token cache (``auth.TokenCache``): a token seen before skips its signature check,
but never outlives its ``exp``, a key withdrawn from the JWKS, or the cache's bound; a forged
token never matches a cached one."""

from __future__ import annotations

import time
import types

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway import auth
from gateway.auth import AuthConfig, Verifier
from tests.integration import test_auth
from tests.integration.test_auth import (
    SECRET,
    JwksServer,
    claims,
    hs256,
    jwks_verifier,
    refused,
    rsa_jwk,
    signed,
)

# The auth tests' fixtures: a JWKS server on a free port, two RSA keys.
server, rsa_key, rsa_key_2 = test_auth.server, test_auth.rsa_key, test_auth.rsa_key_2


class Clock:
    """``auth``'s wall clock, moved by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fake = types.SimpleNamespace(time=lambda: self.now, monotonic=time.monotonic)
        monkeypatch.setattr(auth, "time", fake)


async def test_a_token_seen_before_is_a_hit_and_has_the_same_claims() -> None:
    verifier = Verifier(AuthConfig(hs256_secret=SECRET))
    token = hs256(claims(scope="orders:read"))
    first = await verifier.verify(token)
    assert (verifier.tokens.hits, verifier.tokens.misses) == (0, 1)
    again = await verifier.verify(token)
    assert again is first and again.scopes == {"orders:read"}
    assert (verifier.tokens.hits, verifier.tokens.misses) == (1, 1)


async def test_a_cached_token_that_expires_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    clock.install(monkeypatch)
    verifier = Verifier(AuthConfig(hs256_secret=SECRET, leeway_s=5.0))
    exp = int(clock.now) + 60
    token = hs256(claims(exp=exp))
    await verifier.verify(token)
    clock.now = exp + 4.9  # inside the leeway: still good, from the cache
    assert (await verifier.verify(token)).subject == "user-1"
    assert verifier.tokens.hits == 1
    clock.now = exp + 5.0  # exp + leeway: the verifier refuses it, and so must the cache
    await refused(verifier, token, "token_expired")
    assert verifier.refusals == {"token_expired": 1}
    assert len(verifier.tokens) == 0


async def test_a_token_not_yet_valid_is_never_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    clock.install(monkeypatch)
    verifier = Verifier(AuthConfig(hs256_secret=SECRET, leeway_s=0.0))
    token = hs256(claims(nbf=int(clock.now) + 30))
    await refused(verifier, token, "token_claims")
    assert len(verifier.tokens) == 0
    clock.now += 31
    assert (await verifier.verify(token)).subject == "user-1"


async def test_a_forged_token_never_hits_the_cache() -> None:
    verifier = Verifier(AuthConfig(hs256_secret=SECRET))
    token = hs256(claims())
    await verifier.verify(token)
    header, payload, signature = token.split(".")
    other = "A" if signature[0] != "A" else "B"
    for forged in (f"{header}.{payload}.{other}{signature[1:]}", f"{header}.{payload}.",
                   f"{header}.{payload}"):
        await refused(verifier, forged, "token_signature" if forged.count(".") == 2
                      else "token_malformed")
    assert verifier.tokens.hits == 0
    assert len(verifier.tokens) == 1


async def test_the_bound_holds_least_recently_used_out() -> None:
    verifier = Verifier(AuthConfig(hs256_secret=SECRET, token_cache_size=2))
    first, second, third = (hs256(claims(sub=f"user-{i}")) for i in range(3))
    await verifier.verify(first)
    await verifier.verify(second)
    await verifier.verify(first)  # a hit: now the most recently used
    await verifier.verify(third)  # evicts second
    assert len(verifier.tokens) == 2
    assert verifier.tokens.hits == 1
    await verifier.verify(first)
    assert verifier.tokens.hits == 2
    await verifier.verify(second)
    assert verifier.tokens.hits == 2  # it had been evicted: checked again
    assert len(verifier.tokens) == 2


async def test_a_size_of_zero_caches_nothing() -> None:
    verifier = Verifier(AuthConfig(hs256_secret=SECRET, token_cache_size=0))
    token = hs256(claims())
    await verifier.verify(token)
    await verifier.verify(token)
    assert (len(verifier.tokens), verifier.tokens.hits) == (0, 0)


async def test_a_jwks_key_rotation_drops_the_tokens_it_had_verified(
    server: JwksServer, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    server.jwks = {"keys": [rsa_jwk(rsa_key, "old")]}
    verifier = jwks_verifier(server, jwks_min_refetch_s=0.0)
    old_token = signed(rsa_key, "RS256", "old")
    await verifier.verify(old_token)
    await verifier.verify(old_token)
    assert verifier.tokens.hits == 1

    server.jwks = {"keys": [rsa_jwk(rsa_key_2, "new")]}  # "old" is withdrawn
    assert (await verifier.verify(signed(rsa_key_2, "RS256", "new", sub="u2"))).subject == "u2"
    assert server.requests == 2
    assert len(verifier.tokens) == 1  # the refetch dropped the old key's token
    await refused(verifier, old_token, "token_key_unknown")
    assert verifier.tokens.hits == 1


async def test_a_key_replaced_under_the_same_kid_is_not_trusted_from_the_cache(
    server: JwksServer, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    server.jwks = {"keys": [rsa_jwk(rsa_key, "k")]}
    verifier = jwks_verifier(server, jwks_min_refetch_s=0.0)
    old_token = signed(rsa_key, "RS256", "k")
    await verifier.verify(old_token)
    server.jwks = {"keys": [rsa_jwk(rsa_key_2, "k"), rsa_jwk(rsa_key_2, "other")]}
    await verifier.verify(signed(rsa_key_2, "RS256", "other"))  # an unknown kid: refetch
    assert server.requests == 2
    await refused(verifier, old_token, "token_signature")  # checked against the new "k"


def test_a_negative_size_is_refused() -> None:
    with pytest.raises(ValueError):
        Verifier(AuthConfig(hs256_secret=SECRET, token_cache_size=-1))
