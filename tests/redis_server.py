"""Real Redis for the tests: the machine's on 6379 when it answers, else one started here.

Tests share the machine's Redis with every other test run on the machine, so every key a test
writes must carry a name unique to that test (the gateway's keys carry its slot's name, which
tests make unique); nothing here flushes a database. A test that restarts or kills Redis uses
its own ``RedisServer``, never the machine's."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

MACHINE_REDIS = ("127.0.0.1", 6379)


def answers(host: str, port: int, wait_s: float = 0.5) -> bool:
    """Whether a Redis answers PING at ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), wait_s) as sock:
        sock.settimeout(wait_s)
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on a free port, keeping nothing on disk; it can be stopped
    (SIGKILL, like a crash) and started again on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port if port is not None else _free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="rtgw-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, wait_s: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/services installs it)")
        self._process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self._dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + wait_s
        while not answers("127.0.0.1", self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """Stop at once (SIGKILL): what it held is gone, as after a crash."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
        self._process = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)


def forget(url: str, namespace: str) -> None:
    """Delete the keys a test wrote under ``namespace`` (and nothing else)."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
