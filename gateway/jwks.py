"""The one JWKS fetcher: GET a JWKS document and keep its usable signing keys, by ``kid``; and
the signature check with such a key.

Used by token verification (``auth.Verifier``, from a worker thread) and by ``rtgw check``, so
both accept exactly the same keys: asymmetric (RSA, EC, OKP), ``use`` absent or ``sig``, with a
``kid``, loadable by PyJWT and long enough for it. Unusable entries are logged and skipped.
This module is the only one that imports PyJWT (and so ``cryptography``): only a gateway with a
JWKS URL loads it.
"""

from __future__ import annotations

import http.client
import json
import logging
import urllib.error
import urllib.request
from typing import Literal

import jwt

from gateway.errors import GatewayError, RtgwError

log = logging.getLogger("rtgw.jwks")

MAX_BYTES = 1024 * 1024
KEY_TYPES = frozenset({"RSA", "EC", "OKP"})  # symmetric keys are never taken from a URL
_JWS = jwt.PyJWS(options={"enforce_minimum_key_length": True})


class JwksError(RtgwError):
    """The JWKS could not be used; the message is for logs and clients. ``reason`` is stable:
    ``unreachable`` (no answer), ``http`` (an error status, in ``status``), ``not_json``, or
    ``not_jwks`` (too large, or no ``keys`` list)."""

    def __init__(
        self,
        reason: Literal["unreachable", "http", "not_json", "not_jwks"],
        message: str,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


def fetch(url: str, timeout: float) -> dict[str, jwt.PyJWK]:
    """The usable signing keys of the JWKS at ``url``, by kid (possibly none). Blocking: run it
    in a thread. ``timeout`` bounds each socket operation. Raises ``JwksError``."""
    return parse(download(url, timeout))


def download(url: str, timeout: float) -> object:
    """GET ``url`` (at most ``MAX_BYTES``) and parse it as JSON. Raises ``JwksError``."""
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "rtgw"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise JwksError("http", f"HTTP {exc.code} {exc.reason}".strip(), exc.code) from None
    except TimeoutError:
        raise JwksError("unreachable", f"no answer within {timeout:g}s") from None
    except urllib.error.URLError as exc:
        raise JwksError("unreachable", str(exc.reason)) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise JwksError("unreachable", text) from None
    if len(body) > MAX_BYTES:
        raise JwksError("not_jwks", f"the JWKS is larger than {MAX_BYTES} bytes")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise JwksError("not_json", "the JWKS is not valid JSON") from None


def parse(document: object) -> dict[str, jwt.PyJWK]:
    """The usable signing keys of a JWKS document, by kid. Raises ``JwksError`` when it has no
    ``keys`` list; skips (and logs) each unusable entry."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("not_jwks", "the JWKS has no 'keys' list")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            log.warning("JWKS: skipping a key without a kid")
            continue
        if entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") not in KEY_TYPES:
            log.warning(
                "JWKS: skipping key %r: kty %r is not an asymmetric key type", kid, entry.get("kty")
            )
            continue
        if kid in keys:
            log.warning("JWKS: skipping a second key with kid %r", kid)
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            log.warning("JWKS: skipping key %r: %s", kid, exc)
            continue
        weakness = key.Algorithm.check_key_length(key.key)
        if weakness is not None:
            log.warning("JWKS: skipping key %r: %s", kid, weakness)
            continue
        keys[kid] = key
    return keys


def verify(token: str, key: jwt.PyJWK, alg: str) -> bytes:
    """The payload of ``token`` (read strictly before, ``gateway.tokens``) once ``key``
    verifies its ``alg`` signature. Raises ``GatewayError`` with the refusal's code."""
    try:
        payload: bytes = _JWS.decode_complete(token, key, algorithms=[alg])["payload"]
    except jwt.InvalidSignatureError:
        raise GatewayError("token_signature", "the token signature does not verify") from None
    except jwt.InvalidAlgorithmError:
        raise GatewayError(
            "token_algorithm", f"alg {alg!r} does not match the key the token names"
        ) from None
    except jwt.InvalidKeyError:
        raise GatewayError("token_key_unknown", "the key the token names cannot be used") from None
    except jwt.PyJWTError:
        raise GatewayError("token_malformed", "the token is not a valid JWS") from None
    return payload
