"""What an idle gateway holds: ``python -m bench.idle``.

Starts ``rtgw serve`` on an embedded Postgres 18 (the demo channels, no client), waits until it
is ready, and prints its RSS (median of ``--rounds`` processes). Then, in a fresh interpreter,
what the imports ``rtgw serve`` makes at start cost, package by package in import order (a
package's figure includes the standard library modules it is the first to load).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import time

from bench.fanout import embedded_postgres
from bench.harness import free_port, rtgw_env, rtgw_serve, wait_listening
from bench.procs import rss_kb

# In the order ``gateway.cli`` and ``gateway.app`` load them.
PACKAGES = (
    "orjson", "pydantic", "pydantic_settings", "fastapi", "uvicorn", "uvloop", "psycopg",
    "prometheus_client", "gateway.app", "gateway.cli",
)
PROBE = """
import sys
def rss():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS"))
last = start = rss()
print(f"interpreter: {start / 1024:.1f} MB")
for name in sys.argv[1:]:
    __import__(name)
    now = rss()
    print(f"  + {name}: {(now - last) / 1024:.1f} MB")
    last = now
print(f"after the imports: {last / 1024:.1f} MB")
for name in ("redis", "rq", "jwt", "cryptography"):  # loaded only when configured
    print(("loaded: " if name in sys.modules else "not loaded: ") + name)
"""


def idle_rss_mb(dsn: str, slot: str) -> float:
    port = free_port()
    server = rtgw_serve(rtgw_env(dsn, "idle-" + "x" * 32, port, slot))
    try:
        wait_listening(port, "/readyz", 60)
        time.sleep(1.0)  # the source's first status update, the lag sampler's first query
        return rss_kb(server.pid) / 1024
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with embedded_postgres() as pg:
        figures = [idle_rss_mb(pg.dsn, f"idle_{secrets.token_hex(3)}") for _ in range(args.rounds)]
    print(f"rtgw serve, ready, no client: {statistics.median(figures):.1f} MB RSS "
          f"(median of {args.rounds}: {', '.join(f'{f:.1f}' for f in figures)})")
    subprocess.run([sys.executable, "-c", PROBE, *PACKAGES], check=True)


if __name__ == "__main__":
    main()
