"""gateway.tokens against PyJWT, the reference: on a table of valid and hostile tokens and of
secrets, it accepts only what PyJWT accepts (with the same payload) and refuses everything PyJWT
refuses; where it is stricter, the table says so."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import get_default_algorithms

from gateway import auth, tokens
from gateway.errors import GatewayError

SECRET = "rtgw-unit-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEF"
NOW = int(time.time())
CLAIMS = {"sub": "user-1", "aud": "authenticated", "exp": NOW + 3600, "scope": "a b"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(head: str, body: str, secret: str = SECRET) -> str:
    """``head.body`` with its HS256 signature, the segments exactly as given."""
    signature = jwt.get_algorithm_by_name("HS256").sign(f"{head}.{body}".encode(), secret.encode())
    return f"{head}.{body}.{b64(signature)}"


def signed(header: object, payload: bytes | None = None, raw_header: bytes | None = None) -> str:
    """A token with this header (as given, even when PyJWT would not write it), HS256-signed."""
    head = b64(raw_header if raw_header is not None else json.dumps(header).encode())
    return sign(head, b64(json.dumps(CLAIMS).encode() if payload is None else payload))


def signature_with(char: str) -> str:
    """A valid token whose signature segment holds ``char``."""
    for n in range(10_000):
        token = jwt.encode({**CLAIMS, "n": n}, SECRET, algorithm="HS256")
        if char in token.rsplit(".", 1)[1]:
            return token
    raise AssertionError(char)


VALID = jwt.encode(CLAIMS, SECRET, algorithm="HS256")
HEAD, BODY, SIG = VALID.split(".")
OTHER = jwt.encode({**CLAIMS, "sub": "user-2"}, SECRET, algorithm="HS256")


def flip_last(segment: str) -> str:
    """The same bytes spelled with non-zero unused bits in the last character."""
    last = segment[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return segment[:-1] + alphabet[alphabet.index(last) + 1]


# (name, token, stricter): ``stricter`` marks a token PyJWT accepts and gateway.tokens refuses.
TABLE: list[tuple[str, str, bool]] = [
    ("valid", VALID, False),
    ("valid with kid", jwt.encode(CLAIMS, SECRET, algorithm="HS256", headers={"kid": "k1"}), False),
    ("header with spaces", signed(None, raw_header=b' { "alg" : "HS256" } '), False),
    ("header in UTF-16", signed(None, raw_header='{"alg":"HS256"}'.encode("utf-16")), True),
    ("duplicate alg, last wins", signed(None, raw_header=b'{"alg":"none","alg":"HS256"}'), False),
    ("wrong secret", jwt.encode(CLAIMS, "x" * 64, algorithm="HS256"), False),
    ("payload swapped", f"{HEAD}.{OTHER.split('.')[1]}.{SIG}", False),
    ("signature swapped", f"{HEAD}.{BODY}.{OTHER.split('.')[2]}", False),
    ("signature empty", f"{HEAD}.{BODY}.", False),
    ("signature truncated", f"{HEAD}.{BODY}.{SIG[:-4]}", False),
    ("signature spelled non-canonically", f"{HEAD}.{BODY}.{flip_last(SIG)}", False),
    ("signature padded", f"{HEAD}.{BODY}.{SIG}=", True),
    ("payload padded, signed so", sign(HEAD, b64(b"{}") + "="), True),
    ("header padded past a multiple of 4", f"{HEAD}==.{BODY}.{SIG}", False),
    ("signature with '+' for '-'", signature_with("-").replace("-", "+"), False),
    ("signature with '/' for '_'", signature_with("_").replace("_", "/"), False),
    ("a space", f"{HEAD}.{BODY}. {SIG}", False),
    ("a newline", f"{HEAD}.{BODY}.{SIG}\n", False),
    ("non-ASCII", f"{HEAD}.{BODY}.{SIG}é", False),
    ("two segments", f"{HEAD}.{BODY}", False),
    ("four segments", f"{HEAD}.{BODY}.{SIG}.{SIG}", False),
    ("payload with a dot", f"{HEAD}.{BODY[:4]}.{BODY[4:]}.{SIG}", False),
    ("empty header", f".{BODY}.{SIG}", False),
    ("a segment of 4n+1 characters", f"{HEAD}.{BODY}A.{SIG}", False),
    ("header not JSON", signed(None, raw_header=b"alg=HS256"), False),
    ("header a list", signed(["alg", "HS256"]), False),
    ("header nested too deep", signed(None, raw_header=b"[" * 100_000), False),
    ("alg none", b64(b'{"alg":"none"}') + f".{BODY}.", False),
    ("alg HS384 on an HS256 signature", signed({"alg": "HS384"}), False),
    ("no alg", signed({"typ": "JWT"}), False),
    ("kid a number", signed({"alg": "HS256", "kid": 7}), False),
    ("crit unknown", signed({"alg": "HS256", "crit": ["exp"], "exp": 1}), False),
    ("crit empty", signed({"alg": "HS256", "crit": []}), False),
    ("crit b64 with b64 true", signed({"alg": "HS256", "crit": ["b64"], "b64": True}), True),
    ("b64 false, payload detached",
     signed(None, b"", raw_header=b'{"alg":"HS256","b64":false,"crit":["b64"]}'), False),
    ("b64 false without crit", signed({"alg": "HS256", "b64": False}, b""), False),
    ("b64 true alone", signed({"alg": "HS256", "b64": True}), True),
    ("payload not JSON, signed", signed({"alg": "HS256"}, b"not json"), False),
]


def pyjwt_reads(token: str) -> bytes | None:
    """The payload PyJWT verifies under SECRET with HS256 allowed; None when it refuses."""
    try:
        payload: bytes = jwt.PyJWS().decode_complete(token, SECRET, algorithms=["HS256"])["payload"]
    except jwt.PyJWTError:
        return None
    return payload


def ours_reads(token: str) -> bytes | None:
    try:
        compact = tokens.read(token)
    except GatewayError as exc:
        assert exc.code == "token_malformed"
        return None
    alg = compact.header.get("alg")
    if alg != "HS256" or not tokens.hmac_verifies(compact, alg, SECRET.encode()):
        return None
    return compact.payload


@pytest.mark.parametrize(("name", "token", "stricter"), TABLE, ids=[row[0] for row in TABLE])
def test_the_verifier_agrees_with_pyjwt(name: str, token: str, stricter: bool) -> None:
    reference, ours = pyjwt_reads(token), ours_reads(token)
    if stricter:
        assert reference is not None and ours is None
    else:
        assert ours == reference


def test_the_table_has_tokens_both_accept() -> None:
    assert sum(pyjwt_reads(token) is not None for _, token, _ in TABLE) >= 5


def test_a_signed_payload_that_is_not_json_is_read_and_left_to_the_claims_check() -> None:
    compact = tokens.read(signed({"alg": "HS256"}, b"not json"))
    assert compact.payload == b"not json"
    assert tokens.hmac_verifies(compact, "HS256", SECRET.encode())


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_each_hmac_algorithm(alg: str) -> None:
    token = jwt.encode(CLAIMS, SECRET, algorithm=alg)
    compact = tokens.read(token)
    assert tokens.hmac_verifies(compact, alg, SECRET.encode())
    assert not tokens.hmac_verifies(compact, alg, SECRET.encode() + b"!")


def test_minted_tokens_are_what_pyjwt_reads() -> None:
    token = tokens.mint_token(SECRET, "user-9", ["orders:read", "x"], 60, audience="aud-1")
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], audience="aud-1")
    assert payload["sub"] == "user-9" and payload["scope"] == "orders:read x"
    assert payload["role"] == "authenticated" and payload["exp"] - payload["iat"] == 60


def test_the_asymmetric_algorithms_are_pyjwts() -> None:
    known = set(get_default_algorithms()) - {"none"} - set(tokens.HMAC_ALGORITHMS)
    assert auth.ASYMMETRIC_ALGORITHMS == known


def _pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _der_as_text() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der.decode("latin-1")


SECRETS: list[tuple[str, str, bool]] = [
    ("32 bytes", "k" * 32, False),
    ("31 bytes", "k" * 31, False),
    ("a PEM public key", _pem(), False),
    ("a PEM public key, CRLF", _pem().replace("\n", "\r\n"), False),
    ("an OpenSSH public key", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO" + "x" * 40, False),
    ("a JWK", json.dumps({"kty": "oct", "k": "x" * 43}), False),
    ("a JWK in a list", json.dumps({"keys": [{"kty": "RSA", "n": "x" * 40}]}), False),
    ("a JWK nested too deep", "[" * 5000 + '{"kty": "oct"}' + "]" * 5000, False),
    ("JSON without kty", json.dumps({"secret": "x" * 40}), False),
    # DER has a NUL in every key; spelled as text it is refused here and not by PyJWT
    ("DER as text", _der_as_text(), True),
]


def pyjwt_refuses(secret: str, alg: str) -> bool:
    algorithm = get_default_algorithms()[alg]
    try:
        key = algorithm.prepare_key(secret.encode())
    except jwt.InvalidKeyError:
        return True
    return algorithm.check_key_length(key) is not None


@pytest.mark.parametrize(("name", "secret", "stricter"), SECRETS, ids=[row[0] for row in SECRETS])
@pytest.mark.parametrize("alg", ["HS256", "HS512"])
def test_a_secret_is_refused_whenever_pyjwt_refuses_it(
    name: str, secret: str, stricter: bool, alg: str
) -> None:
    try:
        tokens.check_secret(secret, [alg])
    except ValueError:
        refused = True
    else:
        refused = False
    if stricter:
        assert refused and not pyjwt_refuses(secret, alg)
    else:
        assert refused == pyjwt_refuses(secret, alg)


def test_check_secret_returns_the_bytes_and_names_the_length() -> None:
    assert tokens.check_secret("k" * 64, ["HS256", "HS512"]) == b"k" * 64
    with pytest.raises(ValueError, match="HS512 needs a longer secret"):
        tokens.check_secret("k" * 40, ["HS256", "HS512"])


def test_read_leaves_the_payload_as_bytes_for_after_the_signature() -> None:
    compact = tokens.read(VALID)
    assert isinstance(compact.payload, bytes)
    assert json.loads(compact.payload) == CLAIMS
    assert compact.signing_input == f"{HEAD}.{BODY}".encode()
    assert isinstance(compact.header, dict) and compact.header["alg"] == "HS256"
