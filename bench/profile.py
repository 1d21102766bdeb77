"""Profile rtgw's fan-out hot path: ``python -m bench.profile [--n 1000] [--rate 20]``.

Starts rtgw (pinned to CPU 0), N subscribers and the Postgres writer as ``bench.fanout`` does,
holds a fixed rate, and samples the server with ``py-spy record --format raw`` (install py-spy
into the venv first: ``.venv/bin/pip install py-spy``). Prints where the samples fall: the
functions with the most self time and the most inclusive time.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench.fanout import embedded_postgres
from bench.harness import Plan, Session
from bench.procs import pin, raise_fd_limit

# Where a sample's innermost frame lives says which layer the time belongs to. Time in C (a
# socket write, a Future's set_result, the cyclic GC an allocation triggers) is charged by
# py-spy to the Python line that called into it.
LAYERS = (
    ("cyclic GC (--native)", ("gc_collect", "_traverse")),
    ("idle: waiting in epoll (--native)", ("epoll_wait", "epoll_pwait")),
    ("socket write (transport.write)", ("websockets_sansio_impl.py:506", "write (libc")),
    ("waking writer tasks (Event.set/wait)", ("locks.py",)),
    ("event loop", ("runners.py", "base_events.py", "asyncio/events.py")),
    ("ASGI send path (Starlette, uvicorn)", ("starlette", "_exception_handler.py",
                                             "websockets_sansio_impl.py", "transport/socket.py")),
    ("websockets framing", ("websockets/protocol.py", "websockets/frames.py")),
    ("rtgw sessions, outbox and hub", ("session.py", "connection.py", "hub.py", "codec.py")),
    ("rtgw source, decoding, routing, encoding", ("sources/postgres/", "router.py",
                                                 "encoding.py", "events.py", "changes.py",
                                                 "channels.py", "psycopg")),
)


def layer_of(frame: str) -> str:
    for name, needles in LAYERS:
        if any(needle in frame for needle in needles):
            return name
    return "other"


def summarize(folded: Path, top: int) -> str:
    layers: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        frames = [f.split(" (", 1)[0] + " " + f.rsplit("/", 1)[-1].rstrip(")")
                  for f in stack.split(";")]
        self_time[frames[-1]] += samples
        layers[layer_of(stack.split(";")[-1])] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"{total} samples", "", "by layer (self time):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in layers.most_common()]
    lines += ["", "self time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in self_time.most_common(top)]
    lines += ["", "inclusive time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--workload", choices=("topic", "partitioned"), default="topic")
    parser.add_argument("--rate", type=float, default=20.0, help="events (changes) per second")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--native", action="store_true", help="include C frames (e.g. the GC)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/rtgw-fanout-profile.txt"))
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    pin(1)
    raise_fd_limit()
    plan = Plan(args.n, args.workload, 0, 1, 0, 1, 1, 1)
    with embedded_postgres() as pg:
        session = Session("rtgw", plan, pg.dsn, "profile-secret-" + "x" * 32)
        try:
            print(session.ask_clients("connect"))
            session.set_rate(args.rate)
            time.sleep(2)
            subprocess.run(
                [py_spy, "record", "--pid", str(session.server.pid), "--duration",
                 str(args.seconds), "--rate", "250", "--format", "raw", "--output",
                 str(args.out), *(["--native"] if args.native else ["--nonblocking"])],
                check=True,
            )
        finally:
            session.close()
    print(summarize(args.out, args.top))


def summarize_file() -> None:
    """``python -c 'from bench.profile import summarize_file; summarize_file()' FILE``"""
    print(summarize(Path(sys.argv[1]), 30))


if __name__ == "__main__":
    main()
