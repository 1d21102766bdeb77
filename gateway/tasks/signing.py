"""Standard Webhooks signatures (https://www.standardwebhooks.com, v1): HMAC-SHA256 of
``{webhook-id}.{webhook-timestamp}.{body}`` keyed by the secret ``whsec_<base64>``, sent as
``webhook-signature: v1,<base64>``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from gateway.errors import ConfigError

SECRET_PREFIX = "whsec_"
KEY_BYTES = (24, 64)  # the specification's bounds for a symmetric key


def secret_key(secret: str) -> bytes:
    """The HMAC key a ``whsec_`` secret holds. Raises ``ConfigError``."""
    problem = (
        f"RTGW_WEBHOOK_SECRET must be {SECRET_PREFIX} followed by the base64 of "
        f"{KEY_BYTES[0]} to {KEY_BYTES[1]} random bytes (openssl rand -base64 32)"
    )
    if not secret.startswith(SECRET_PREFIX):
        raise ConfigError(problem)
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(problem) from None
    if not KEY_BYTES[0] <= len(key) <= KEY_BYTES[1]:
        raise ConfigError(problem)
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">``."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of one delivery attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id, timestamp, body),
    }
