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
import time

from gateway.auth import AuthConfig, Verifier
from gateway.tokens import mint_token

SECRET = "bench-tokencheck-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


async def check_all(verifier: Verifier, tokens: list[str], passes: int) -> None:
    for _ in range(passes):
        for token in tokens:
            await verifier.verify(token)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tokencheck", description=__doc__)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    tokens = [mint_token(SECRET, f"user-{i}", ["orders:read"], 3600) for i in range(args.tokens)]
    verifier = Verifier(AuthConfig(hs256_secret=SECRET, token_cache_size=0))
    started = time.perf_counter()
    asyncio.run(check_all(verifier, tokens, args.passes))
    checks = args.tokens * args.passes
    elapsed = time.perf_counter() - started
    print(f"{checks:,} uncached HS256 checks: {elapsed / checks * 1e6:.1f} µs each")


if __name__ == "__main__":
    main()
