"""Shared fixtures: a real Postgres with wal_level=logical, a real gateway on a real port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
import uvicorn
import websockets

from gateway.app import create_app
from gateway.demo import apply_migrations
from gateway.encoding import dumps_text, loads
from gateway.server import uvicorn_config
from gateway.settings import Settings
from gateway.sources.embedded import EmbeddedPostgres
from gateway.tokens import mint_token
from tests.redis_server import MACHINE_REDIS, RedisServer, answers

REPO = Path(__file__).resolve().parent.parent
RTGW = str(Path(sys.executable).with_name("rtgw"))
TEST_SECRET = "test-secret-" + "x" * 40
# The Supabase-compatible endpoint's apikey: like Supabase's anon key, a JWT (role anon, no
# scopes) that also serves as the token of a join that carries none.
API_KEY = mint_token(TEST_SECRET, "anon", (), 24 * 3600)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``supabase_cloud`` need a real Supabase project: without its credentials
    (SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY) they are deselected, not run."""
    if os.environ.get("SUPABASE_URL") and os.environ.get("SUPABASE_SERVICE_ROLE_KEY"):
        return
    cloud = [item for item in items if item.get_closest_marker("supabase_cloud")]
    if cloud:
        config.hook.pytest_deselected(items=cloud)
        items[:] = [item for item in items if item not in cloud]


def _remove_stale_clusters() -> None:
    """Stop clusters left behind by test runs that were killed (their pid is gone)."""
    for folder in Path("/var/tmp").glob("rtgw-tests-*"):
        pid = int(folder.name.rsplit("-", 1)[1])
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, 0)
            continue
        for cluster in folder.iterdir():  # pgdata, and spare clusters of destructive tests
            EmbeddedPostgres(cluster).destroy()
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def embedded_cluster(name: str) -> Iterator[EmbeddedPostgres]:
    """A fresh embedded Postgres 18 (wal_level=logical) with the migrations applied."""
    server = EmbeddedPostgres(Path(f"/var/tmp/rtgw-tests-{os.getpid()}/{name}"))
    server.destroy()
    server.init({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                 "max_connections": "300"})  # hundreds of concurrent writers in some tests
    server.start()
    apply_migrations(server.dsn)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def pg() -> Iterator[EmbeddedPostgres]:
    """One embedded Postgres cluster for the whole test session."""
    _remove_stale_clusters()
    with embedded_cluster("pgdata") as server:
        yield server
    with contextlib.suppress(OSError):
        server.data_dir.parent.rmdir()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis shared by the session's tests: the machine's when it answers on 6379, else
    one started for the session. Keys must be unique per test (tests/redis_server.py)."""
    if answers(*MACHINE_REDIS):
        yield "redis://127.0.0.1:6379/0"
        return
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, started, which the test may kill and start again."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def db(pg: EmbeddedPostgres) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        yield conn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def token(sub: str = "user-a", scopes: tuple[str, ...] = ("orders:read",), ttl: int = 300) -> str:
    return mint_token(TEST_SECRET, sub, scopes, ttl)


def service_token() -> str:
    """A Supabase-style service-role token (it may publish to every channel)."""
    now = int(time.time())
    claims = {"sub": "backend", "aud": "authenticated", "role": "service_role", "exp": now + 60}
    return jwt.encode(claims, TEST_SECRET, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Gateway:
    settings: Settings
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.settings.port}/v1/ws"

    @property
    def realtime_url(self) -> str:
        """The Supabase-compatible base URL, as realtime-py and realtime-js take it."""
        return f"http://127.0.0.1:{self.settings.port}/realtime/v1"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 20)


async def start_gateway(dsn: str, **overrides: Any) -> Gateway:
    """Run create_app(settings) under uvicorn on a free port and wait for /readyz."""
    values: dict[str, Any] = {
        "database_url": dsn,
        "jwt_secret": TEST_SECRET,
        "channels": REPO / "channels",
        "port": free_port(),
        "slot": f"test_{secrets.token_hex(4)}",
        "publication": "rtgw",
        "api_key": API_KEY,
    }
    values.update(overrides)
    settings = Settings(**values)
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings, "warning"))
    gateway = Gateway(settings, server, asyncio.create_task(server.serve()))
    await wait_ready(gateway.http_url)
    return gateway


async def wait_ready(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}/readyz never answered 200")
            await asyncio.sleep(0.05)


def serve_env(dsn: str, slot: str, port: int, **settings: str) -> dict[str, str]:
    """The environment of an ``rtgw serve`` process; ``settings`` are RTGW_* names without
    the prefix, lower case (``history_size="10"``)."""
    return {
        **os.environ, "RTGW_DATABASE_URL": dsn, "RTGW_JWT_SECRET": TEST_SECRET,
        "RTGW_PORT": str(port), "RTGW_CHANNELS": str(REPO / "channels"), "RTGW_SLOT": slot,
        **{f"RTGW_{name.upper()}": value for name, value in settings.items()},
    }


async def rtgw_serve(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(RTGW, "serve", env=env, cwd=REPO)


async def stop_process(process: asyncio.subprocess.Process | None) -> None:
    if process is not None and process.returncode is None:
        process.terminate()
        async with asyncio.timeout(20):
            await process.wait()


def drop_slot(dsn: str, slot: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(100):
            try:
                conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name = %s",
                    (slot,),
                )
                return
            except psycopg.errors.ObjectInUse:
                time.sleep(0.05)


@pytest.fixture
async def gateway(pg: EmbeddedPostgres) -> AsyncIterator[Gateway]:
    running = await start_gateway(pg.dsn)
    try:
        yield running
    finally:
        await running.stop()
        drop_slot(pg.dsn, running.settings.slot)


class Client:
    """A real WebSocket client speaking the native protocol, with helpers for tests."""

    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket

    async def send(self, frame: dict[str, Any]) -> None:
        await self.socket.send(dumps_text(frame))

    async def recv(self, wait_s: float = 10.0) -> dict[str, Any]:
        message = await asyncio.wait_for(self.socket.recv(), wait_s)
        frame: dict[str, Any] = loads(message)
        return frame

    async def auth(self, jwt: str) -> dict[str, Any]:
        await self.send({"type": "auth", "token": jwt})
        return await self.recv()

    async def subscribe(self, channel: str, **extra: Any) -> dict[str, Any]:
        await self.send({"type": "subscribe", "ref": "s", "channel": channel, **extra})
        return await self.recv()

    async def events(self, count: int, wait_s: float = 10.0) -> list[dict[str, Any]]:
        found = []
        while len(found) < count:
            frame = await self.recv(wait_s)
            if frame["type"] == "event":
                found.append(frame)
        return found

    async def silent_for(self, seconds: float) -> bool:
        """True when nothing arrives for ``seconds``."""
        return await silent_for(self.socket, seconds)


async def silent_for(socket: websockets.ClientConnection, seconds: float) -> bool:
    """True when nothing arrives on ``socket`` for ``seconds``."""
    try:
        await asyncio.wait_for(socket.recv(), seconds)
    except TimeoutError:
        return True
    return False


@contextlib.asynccontextmanager
async def connect(url: str, **kwargs: Any) -> AsyncIterator[Client]:
    async with websockets.connect(url, **kwargs) as socket:
        yield Client(socket)


async def eventually(check: Callable[[], bool], wait_s: float = 5.0) -> None:
    """Wait until ``check()`` holds; TimeoutError after ``wait_s``. For state the server owns
    and offers no event for, such as its connection set."""
    async with asyncio.timeout(wait_s):
        while not check():  # noqa: ASYNC110 - polling state another component owns
            await asyncio.sleep(0.05)


def insert_order(db: psycopg.Connection[Any], status: str = "pending", total: float = 5) -> int:
    """Commit one order (for a new customer) and return its id."""
    customer = db.execute("INSERT INTO customers (name) VALUES ('test') RETURNING id").fetchone()
    assert customer is not None
    row = db.execute(
        "INSERT INTO orders (customer_id, status, total) VALUES (%s, %s, %s) RETURNING id",
        (customer[0], status, total),
    ).fetchone()
    assert row is not None
    return int(row[0])


def insert_orders(db: psycopg.Connection[Any], count: int) -> list[int]:
    """Commit ``count`` orders (for a new customer) in one statement; their ids."""
    customer = db.execute("INSERT INTO customers (name) VALUES ('test') RETURNING id").fetchone()
    assert customer is not None
    rows = db.execute(
        "INSERT INTO orders (customer_id) SELECT %s FROM generate_series(1, %s) RETURNING id",
        (customer[0], count),
    ).fetchall()
    return [row[0] for row in rows]


def insert_statuses(db: psycopg.Connection[Any], customer: int, *statuses: str) -> None:
    """Commit one order of ``customer`` per status, in order."""
    for status in statuses:
        db.execute("INSERT INTO orders (customer_id, status) VALUES (%s, %s)", (customer, status))


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parse SSE events: {"event", "id", "data"} (comments skipped)."""
    current: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line == "":
            if current:
                yield current
            current = {}
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(": ")
            current[field] = loads(value) if field == "data" else value


async def take(stream: AsyncIterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    found = []
    async with asyncio.timeout(15):
        async for event in stream:
            found.append(event)
            if len(found) == count:
                return found
    return found
