"""The JWS compact form (RFC 7515) with the standard library: read strictly, and HMAC tokens
(HS256/384/512) signed and verified, so that a deployment with a shared secret never loads
PyJWT or ``cryptography`` (``gateway.jwks`` does, for the asymmetric algorithms).

Read strictly: three unpadded base64url segments in their one canonical spelling, a header that
is a JSON object in UTF-8 (as RFC 7515 has it; PyJWT also reads UTF-16 and UTF-32) with a string
``kid`` if any, and no ``crit`` or ``b64`` (no extension is supported, so none can be
critical). The payload is read as UTF-8 JSON too (``auth.Verifier``). HMACs are compared in
constant time. The secret rules are PyJWT's (which stays the reference in the tests), or
stricter.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.encoding import loads
from gateway.errors import GatewayError

__all__ = ["HMAC_ALGORITHMS", "Compact", "check_secret", "hmac_verifies", "mint_token", "read"]

# alg -> its hash; the minimum secret length is the digest size (RFC 7518 section 3.2)
HMAC_ALGORITHMS: dict[str, Callable[[], Any]] = {
    "HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512,
}
_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
# The last character of a segment whose length is 2 or 3 (mod 4) carries 4 or 2 unused bits,
# which the canonical spelling leaves zero.
_LAST = {2: frozenset(b"AQgw"), 3: frozenset(b"AEIMQUYcgkosw048")}
_NOT_A_JWT = "the token is not a JWT (header.payload.signature)"
_PEM = re.compile(r"----[- ]BEGIN [A-Z0-9 ]+[- ]----")
_SSH = ("ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521")


@dataclass(frozen=True, slots=True)
class Compact:
    """A token read, not verified: its header, the bytes its signature covers, its payload and
    its signature (decoded)."""

    header: dict[str, Any]
    signing_input: bytes
    payload: bytes
    signature: bytes


def read(token: str) -> Compact:
    """``token`` read strictly; ``GatewayError`` ``token_malformed`` when it is not a JWS."""
    if not isinstance(token, str) or not token:
        raise GatewayError("token_malformed", "the token is empty or not a string")
    if not token.isascii():
        raise GatewayError("token_malformed", _NOT_A_JWT)
    raw = token.encode("ascii")
    parts = raw.split(b".")
    if len(parts) != 3 or not parts[0]:
        raise GatewayError("token_malformed", _NOT_A_JWT)
    header_b64, payload_b64, signature_b64 = parts
    try:
        header = loads(_decode(header_b64))
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict) or not isinstance(header.get("kid", ""), str):
        raise GatewayError("token_malformed", _NOT_A_JWT)
    if "crit" in header or "b64" in header:
        raise GatewayError("token_malformed", "the token header has crit or b64 (unsupported)")
    return Compact(header, raw[: raw.rindex(b".")], _decode(payload_b64), _decode(signature_b64))


def _decode(segment: bytes) -> bytes:
    """An unpadded base64url segment in its canonical spelling, decoded."""
    remainder = len(segment) % 4
    if (remainder == 1 or _SEGMENT.fullmatch(segment) is None
            or (remainder and segment[-1] not in _LAST[remainder])):
        raise GatewayError("token_malformed", _NOT_A_JWT)
    return binascii.a2b_base64(segment.translate(_TO_STANDARD) + b"=" * (-remainder % 4))


def hmac_verifies(compact: Compact, alg: str, secret: bytes) -> bool:
    """Whether ``compact`` carries the ``alg`` HMAC of its signing input under ``secret``."""
    expected = hmac.digest(secret, compact.signing_input, HMAC_ALGORITHMS[alg])
    return hmac.compare_digest(compact.signature, expected)


def check_secret(secret: str, algs: Sequence[str]) -> bytes:
    """``secret`` as bytes, refused (``ValueError``) whenever PyJWT refuses or warns about it
    for one of the HMAC ``algs``: empty, shorter than the hash, or key material of another
    kind (PEM, OpenSSH, a JWK, or DER, which always holds a NUL), which an attacker could use
    to sign a token with a public key."""
    key = secret.encode("utf-8")
    looks_like = _key_kind(secret)
    if looks_like is not None:
        raise ValueError(f"AuthConfig.hs256_secret looks like {looks_like}, not an HMAC secret")
    for alg in sorted(algs):
        needed = HMAC_ALGORITHMS[alg]().digest_size
        if len(key) < needed:
            raise ValueError(
                f"AuthConfig.hs256_secret is {len(key)} bytes; {alg} needs a longer secret "
                f"(at least {needed} bytes)"
            )
    return key


def _key_kind(secret: str) -> str | None:
    if _PEM.search(secret) is not None:
        return "a PEM key or certificate"
    if secret.startswith(_SSH):
        return "an OpenSSH key"
    if "\0" in secret:
        return "binary key material (it holds a NUL)"
    try:
        found: list[Any] = [json.loads(secret, parse_int=lambda _: 0)]
    except RecursionError:
        return "a JWK" if secret.lstrip("\ufeff \t\r\n")[:1] in ("{", "[") else None
    except ValueError:
        return None
    while found:
        node = found.pop()
        if isinstance(node, dict):
            if "kty" in node:
                return "a JWK"
            found.extend(node.values())
        elif isinstance(node, list):
            found.extend(node)
    return None


def mint_token(
    secret: str, sub: str, scopes: Sequence[str], ttl_s: int, audience: str = "authenticated"
) -> str:
    """A development token (what ``rtgw token`` and the demo hand out): HS256-signed for
    ``sub`` with ``scopes`` (space-separated in ``scope``), valid ``ttl_s`` seconds, in the
    shape Supabase issues (``role: authenticated``)."""
    now = int(time.time())
    claims = {
        "sub": sub,
        "aud": audience,
        "role": "authenticated",
        "iat": now,
        "exp": now + ttl_s,
        "scope": " ".join(scopes),
    }
    signing_input = _encode({"alg": "HS256", "typ": "JWT"}) + b"." + _encode(claims)
    signature = hmac.digest(secret.encode("utf-8"), signing_input, hashlib.sha256)
    return (signing_input + b"." + _b64(signature)).decode("ascii")


def _encode(value: dict[str, Any]) -> bytes:
    return _b64(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def _b64(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_TO_URLSAFE)
