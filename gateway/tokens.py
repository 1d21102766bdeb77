"""Development tokens: what ``rtgw token`` and the demo mint (HS256, with ``exp``)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import jwt


def mint_token(
    secret: str, sub: str, scopes: Sequence[str], ttl_s: int, audience: str = "authenticated"
) -> str:
    """A signed token for ``sub`` with ``scopes`` (space-separated in ``scope``), valid
    ``ttl_s`` seconds, in the shape Supabase issues (``role: authenticated``)."""
    now = int(time.time())
    claims = {
        "sub": sub,
        "aud": audience,
        "role": "authenticated",
        "iat": now,
        "exp": now + ttl_s,
        "scope": " ".join(scopes),
    }
    return jwt.encode(claims, secret, algorithm="HS256")
