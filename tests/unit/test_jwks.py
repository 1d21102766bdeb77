"""gateway.jwks.parse: which entries of a JWKS document become usable signing keys."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.jwks import JwksError, parse


@pytest.fixture(scope="module")
def rsa_entry() -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": "rsa", "use": "sig"}


def ec_entry(kid: str, **extra: Any) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    return {**json.loads(ECAlgorithm.to_jwk(key.public_key())), "kid": kid, **extra}


def test_rsa_ec_and_okp_keys_are_usable_by_kid(rsa_entry: dict[str, Any]) -> None:
    okp = json.loads(OKPAlgorithm.to_jwk(ed25519.Ed25519PrivateKey.generate().public_key()))
    keys = parse({"keys": [rsa_entry, ec_entry("ec"), {**okp, "kid": "okp"}]})
    assert sorted(keys) == ["ec", "okp", "rsa"]
    assert keys["okp"].key_type == "OKP" and keys["rsa"].key_type == "RSA"


def test_unusable_entries_are_skipped(rsa_entry: dict[str, Any]) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    keys = parse({"keys": [
        {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},  # never from a URL
        {**json.loads(RSAAlgorithm.to_jwk(weak.public_key())), "kid": "weak"},
        ec_entry("enc", use="enc"),
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        {k: v for k, v in rsa_entry.items() if k != "kid"},
        "not an object",
        rsa_entry,
        ec_entry("rsa"),  # a second key with the same kid: the first one stays
    ]})
    assert list(keys) == ["rsa"] and keys["rsa"].key_type == "RSA"


def test_an_empty_key_list_is_a_jwks_without_keys() -> None:
    assert parse({"keys": []}) == {}


@pytest.mark.parametrize("document", [{"no": "keys"}, {"keys": "x"}, [], "keys", None])
def test_a_document_without_a_keys_list_is_refused(document: object) -> None:
    with pytest.raises(JwksError) as info:
        parse(document)
    assert info.value.reason == "not_jwks" and "'keys' list" in str(info.value)
