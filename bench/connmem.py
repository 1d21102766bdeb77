"""What an idle connection holds, by the line that allocated it: ``python -m bench.connmem``.

Starts rtgw as ``bench.connect`` does, under ``tracemalloc`` (``bench.servers rtgw --snapshots
DIR``), opens and closes ``--n`` connections once (a warm-up), snapshots the server's Python
allocations, opens ``--n`` connections again (``bench.connect``'s client: the token in the
header, ``subscribe`` to ``orders``) and, a second later, snapshots again: as they are and after
a full garbage collection. Prints per connection the Python allocations the connections hold,
the cyclic garbage they left for the collector, and the lines that allocated the most.
"""

from __future__ import annotations

import argparse
import gc
import secrets
import sysconfig
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from bench.fanout import embedded_postgres
from bench.harness import REPO, Child, free_port, wait_listening
from bench.procs import pin, raise_fd_limit

PREFIXES = ("site-packages/", f"{REPO}/", f"{sysconfig.get_paths()['stdlib']}/")


def start_snapshots(folder: Path) -> None:
    """In the server: trace allocations, and dump a snapshot to ``folder/TAG.tm`` whenever
    ``folder/TAG.want`` appears (after a full collection, unless TAG starts with ``raw``)."""
    tracemalloc.start()

    def watch() -> None:
        while True:
            for want in sorted(folder.glob("*.want")):
                if not want.stem.startswith("raw"):
                    gc.collect()
                tracemalloc.take_snapshot().dump(str(folder / f"{want.stem}.tm"))
                want.unlink()
            time.sleep(0.05)

    threading.Thread(target=watch, name="bench-snapshots", daemon=True).start()


def snapshot(folder: Path, tag: str) -> tracemalloc.Snapshot:
    want = folder / f"{tag}.want"
    want.touch()
    while want.exists():
        time.sleep(0.05)
    return tracemalloc.Snapshot.load(str(folder / f"{tag}.tm"))


def open_clients(port: int, n: int, secret: str) -> Child:
    """``bench.connect``'s load client with ``n`` connections open (``stop`` closes them)."""
    client = Child(
        "bench.loadclient", "--url", f"ws://127.0.0.1:{port}/v1/ws", "--n", str(n),
        "--mode", "topic", f"--secret={secret}", "--concurrency", "100",
    )
    client.read()
    answer = client.ask("connect")
    if answer["failed"]:
        client.stop()
        raise RuntimeError(f"{answer['failed']} connections failed: {answer}")
    return client


def close_clients(client: Child) -> None:
    try:
        client.ask("quit")
    finally:
        client.stop()


def total(snap: tracemalloc.Snapshot) -> int:
    return sum(stat.size for stat in snap.statistics("filename"))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.connmem", description=__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--top", type=int, default=30, help="how many lines to print")
    args = parser.parse_args()
    n = args.n
    pin(1)
    raise_fd_limit()
    with embedded_postgres() as pg, tempfile.TemporaryDirectory() as tmp:
        folder, secret, port = Path(tmp), secrets.token_urlsafe(32), free_port()
        server = Child("bench.servers", "rtgw", "--port", str(port), "--dsn", pg.dsn,
                       f"--secret={secret}", f"--snapshots={folder}")
        try:
            wait_listening(port, "/readyz", 120)
            close_clients(open_clients(port, n, secret))  # a warm-up: opened and closed
            time.sleep(1.0)
            before = snapshot(folder, "before")
            client = open_clients(port, n, secret)
            try:
                time.sleep(1.0)
                raw, held = snapshot(folder, "raw"), snapshot(folder, "held")
            finally:
                close_clients(client)
        finally:
            server.stop()
    stats = held.compare_to(before, "lineno")
    print(f"N = {n:,}: {(total(held) - total(before)) / n:,.0f} bytes of Python allocations per "
          f"idle connection ({sum(s.count_diff for s in stats) / n:.1f} blocks); "
          f"{(total(raw) - total(held)) / n:,.0f} bytes of cyclic garbage per connection left "
          "for the collector")
    print("bytes and blocks per connection, by the line that allocated them:")
    for stat in stats[: args.top]:
        frame = stat.traceback[0]
        where = frame.filename
        for prefix in PREFIXES:
            where = where.split(prefix)[-1]
        print(f"{stat.size_diff / n:8,.0f} {stat.count_diff / n:6.2f}  {where}:{frame.lineno}")


if __name__ == "__main__":
    main()
