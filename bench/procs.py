"""Process plumbing shared by the benchmark: CPU pinning, /proc readings, JSON-line control.

Every benchmark process is controlled over its stdin (one command per line) and answers on its
stdout (one JSON object per line), so no control traffic shares the sockets being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import os
import resource
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any

import orjson

from bench.pacer import Pacer

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def pin(cpu: int) -> None:
    """Run this process on one CPU (when the machine has it)."""
    available = os.sched_getaffinity(0)
    if cpu in available or len(available) > cpu:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


def raise_fd_limit(wanted: int = 65_536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (Postgres: the postmaster and its backends).
    Children that exit during a window are not counted."""
    total = 0.0
    try:
        total += cpu_seconds(pid)
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as children:
            for child in children.read().split():
                total += cpu_seconds(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def core_busy_seconds() -> list[float]:
    """Seconds each CPU spent busy (anything but idle and I/O wait) since boot, from
    /proc/stat: what every process on the machine used, ours and the neighbours'."""
    busy = []
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            name, *ticks = line.split()
            if name.startswith("cpu") and name != "cpu":
                counts = [int(tick) for tick in ticks]
                busy.append((sum(counts[:8]) - counts[3] - counts[4]) / CLOCK_TICKS)
    return busy


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * PAGE_KB


def emit(message: dict[str, Any]) -> None:
    """Answer the controller: one JSON object per line on stdout."""
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.buffer.flush()


async def stdin_lines() -> AsyncIterator[str]:
    """Lines of stdin, read without blocking the event loop; ends at EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield line.decode().strip()


async def serve_commands(handle: Callable[[list[str]], Awaitable[bool]]) -> None:
    """Feed each stdin line (split on whitespace) to ``handle`` until it returns False or EOF."""
    async for line in stdin_lines():
        if line and not await handle(line.split()):
            return


async def serve_table(commands: Mapping[str, Callable[..., Any]]) -> None:
    """Say ``{"ready": true}``, then answer each stdin line ``NAME ARG...`` with what
    ``commands[NAME](ARG...)`` returns (awaited when it is awaitable), until ``quit`` or EOF."""

    async def handle(words: list[str]) -> bool:
        name, *args = words
        action = commands.get(name)
        if action is None:
            emit({"error": f"unknown command {words!r}"})
            return True
        answer = action(*args)
        emit(await answer if inspect.isawaitable(answer) else answer)
        return name != "quit"

    emit({"ready": True})
    await serve_commands(handle)


async def serve_pacer_commands(
    pacer: Pacer, stats: Callable[[], dict[str, Any]] = dict
) -> None:
    """The control protocol of every paced process: ``rate R`` and ``stats`` on stdin."""

    async def handle(words: list[str]) -> bool:
        match words:
            case ["rate", rate]:
                pacer.set_rate(float(rate))
                emit({"ok": True, "rate": pacer.rate})
            case ["stats"]:
                emit({**stats(), "sent": pacer.sent})
            case _:
                emit({"error": f"unknown command {words!r}"})
        return True

    await serve_commands(handle)


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (uvicorn uses it too), else on asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main)
        return
    uvloop.run(main)


LOAD_CLIENT_CPU = 1


def client_token(mode: str, secret: str, index: int) -> str:
    """Load client ``index``'s token: a partitioned client's own user (``bench.writer.user_id``),
    otherwise one reader of ``orders``."""
    from bench.writer import user_id
    from gateway.tokens import mint_token

    if mode == "partitioned":
        return mint_token(secret, user_id(index), [], 3600)
    return mint_token(secret, "bench", ["orders:read"], 3600)


def load_client_main(prog: str, make_load: Callable[[str, int, int, str, str], Any]) -> None:
    """A load-client process: ``--url --n --first --mode --secret --concurrency``, pinned to
    ``LOAD_CLIENT_CPU``; ``make_load(url, first, n, mode, secret)`` answers the commands
    ``connect``, ``start``, ``stop``, ``count`` (its ``counts``) and ``quit`` on stdin."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--first", type=int, default=0, help="index of the first client")
    parser.add_argument("--mode", choices=("baseline", "topic", "partitioned"), required=True)
    parser.add_argument("--secret", default="")
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    pin(LOAD_CLIENT_CPU)
    raise_fd_limit()

    async def serve() -> None:
        load = make_load(args.url, args.first, args.n, args.mode, args.secret)
        await serve_table({
            "connect": lambda: load.connect(args.concurrency), "start": load.start,
            "stop": load.stop, "count": load.counts, "quit": load.quit,
        })

    run(serve())
