"""One uncached token check in process: ``python -m bench.tokencheck``.

Verifies ``--tokens`` distinct HS256 tokens (the shape ``rtgw token`` mints), ``--passes``
times, with the token cache off, as a connection with a new token does. Prints microseconds per
check (noisy on a shared machine). For figures the load does not move, run it under callgrind
twice::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/tok.out \\
        .venv/bin/python -m bench.tokencheck --passes 3

and the same with ``--passes 1``: the difference of the two instruction counts, divided by
2,000, is the cost of one check (start-up and minting cancel out).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import time

from gateway.auth import AuthConfig, Verifier

SECRET = "bench-tokencheck-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def hs256(claims: dict[str, object]) -> str:
    """A token signed with ``SECRET``, minted here so that the bench needs no JWT library."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = header + b"." + payload
    signature = _b64(hmac.digest(SECRET.encode(), signing_input, hashlib.sha256))
    return (signing_input + b"." + signature).decode()


async def check_all(verifier: Verifier, tokens: list[str], passes: int) -> None:
    for _ in range(passes):
        for token in tokens:
            await verifier.verify(token)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tokencheck", description=__doc__)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    now = int(time.time())
    tokens = [
        hs256({"sub": f"user-{i}", "aud": "authenticated", "role": "authenticated", "iat": now,
               "exp": now + 3600, "scope": "orders:read"})
        for i in range(args.tokens)
    ]
    verifier = Verifier(AuthConfig(hs256_secret=SECRET, token_cache_size=0))
    started = time.perf_counter()
    asyncio.run(check_all(verifier, tokens, args.passes))
    checks = args.tokens * args.passes
    elapsed = time.perf_counter() - started
    print(f"{checks:,} uncached HS256 checks: {elapsed / checks * 1e6:.1f} µs each")


if __name__ == "__main__":
    main()
