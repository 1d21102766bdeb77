"""Channels' tasks end to end: real Postgres, real Redis, a real ``rtgw worker`` process and a
local HTTP receiver. A job runs with the change as JSON; a receiver that fails twice still gets
each event, with one webhook-id and a valid signature (checked here by an implementation of the
Standard Webhooks scheme of the test's own); dead letters are listed and replayed; private
targets are refused; a SIGKILLed ``rtgw serve`` and a Redis outage lose no task and repeat
none, and with two gateways on one slot only the owner enqueues."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.encoding import loads
from gateway.errors import ConfigError
from gateway.settings import Settings
from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import (
    RTGW,
    TEST_SECRET,
    Gateway,
    connect,
    drop_slot,
    eventually,
    free_port,
    insert_order,
    rtgw_serve,
    serve_env,
    start_gateway,
    stop_process,
    token,
    wait_ready,
)
from tests.redis_server import RedisServer

SECRET = "whsec_" + base64.b64encode(b"a test signing key of 32 bytes!!").decode()
RETRIES = "1,1,1"  # seconds: RQ's scheduler runs them about a second apart
JOBS = '''
import json

from rq import get_current_job


def record(change_json):
    job = get_current_job()
    entry = json.dumps({"job": job.id, "change": json.loads(change_json)})
    job.connection.rpush(f"test:{job.origin}:calls", entry)


def fail(change_json):
    raise RuntimeError("the receipt service is down")
'''


def channels_with(folder: Path, task: str) -> Path:
    """A channels folder: the orders channel with one task (``task``: its keys)."""
    folder.mkdir()
    (folder / "orders.toml").write_text(
        '[channels.orders]\ntable = "public.orders"\nscopes = ["orders:read"]\n'
        f'columns = ["id", "status", "total"]\n\n[channels.orders.tasks.t]\n{task}\n',
        encoding="utf-8",
    )
    return folder


# -- a webhook receiver, and the Standard Webhooks check of the test's own -------------------


@dataclass
class Attempt:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """Answers 500 to the first ``failures`` attempts of each webhook-id (all of them while
    ``down``), then 204; records every attempt."""

    failures: int = 0
    down: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            earlier = sum(1 for a in self.attempts if a.headers.get("webhook-id") ==
                          headers.get("webhook-id"))
            status = 500 if self.down or earlier < self.failures else 204
            self.attempts.append(Attempt(headers, body, status))
            return status

    def delivered(self) -> dict[str, Attempt]:
        """The successful attempt of each webhook-id."""
        with self.lock:
            return {a.headers["webhook-id"]: a for a in self.attempts if a.status == 204}

    def of(self, msg_id: str) -> list[Attempt]:
        with self.lock:
            return [a for a in self.attempts if a.headers.get("webhook-id") == msg_id]


@contextlib.contextmanager
def receiving(receiver: Receiver) -> Iterator[str]:
    """Serve ``receiver`` on a local port; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["content-length"]))
            status = receiver.answer({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/orders"
    finally:
        server.shutdown()
        server.server_close()


def verifies(attempt: Attempt, secret: str, tolerance_s: int = 300) -> bool:
    """The receiver's side of Standard Webhooks: HMAC-SHA256 of "id.timestamp.body" keyed by
    the base64 after ``whsec_``; any ``v1,`` entry of the header matches; timestamp fresh."""
    msg_id = attempt.headers["webhook-id"]
    timestamp = attempt.headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    key = base64.b64decode(secret[len("whsec_"):])
    content = msg_id.encode() + b"." + timestamp.encode() + b"." + attempt.body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())
    return any(
        version == "v1" and hmac.compare_digest(value.encode(), expected)
        for version, _, value in (e.partition(",") for e in
                                  attempt.headers["webhook-signature"].split())
    )


# -- the queue, the worker, the gateway -----------------------------------------------------


@dataclass
class Tasks:
    queue: str
    redis_url: str
    client: redis.Redis

    def calls(self) -> list[dict[str, Any]]:
        return [loads(entry) for entry in self.client.lrange(f"test:{self.queue}:calls", 0, -1)]

    def env(self, **settings: str) -> dict[str, str]:
        """A worker's (or CLI's) environment: RTGW_* from ``settings`` (lower-case names)."""
        return {
            **os.environ, "RTGW_REDIS_URL": self.redis_url, "RTGW_TASK_QUEUE": self.queue,
            "RTGW_WEBHOOK_SECRET": SECRET, "RTGW_WEBHOOK_ALLOW_PRIVATE": "true",
            "RTGW_LOG_LEVEL": "warning",
            **{f"RTGW_{name.upper()}": value for name, value in settings.items()},
        }

    def gateway_settings(self, channels: Path) -> dict[str, Any]:
        return {
            "channels": channels, "redis_url": self.redis_url, "task_queue": self.queue,
            "webhook_secret": SECRET, "webhook_allow_private": True,
            "webhook_retry_s": RETRIES,
        }


@contextlib.contextmanager
def task_queue(redis_url: str) -> Iterator[Tasks]:
    """A queue name of the test's own; every key that carries it is deleted afterwards."""
    queue = f"tasks_{secrets.token_hex(4)}"
    client = redis.Redis.from_url(redis_url)
    try:
        yield Tasks(queue, redis_url, client)
    finally:
        with contextlib.suppress(redis.RedisError):
            keys = list(client.scan_iter(match=f"*{queue}*", count=1000))
            if keys:
                client.delete(*keys)
            client.srem("rq:queues", f"rq:queue:{queue}")
        client.close()


@pytest.fixture
def tasks(redis_url: str) -> Iterator[Tasks]:
    with task_queue(redis_url) as made:
        yield made


@contextlib.asynccontextmanager
async def worker(tasks: Tasks, cwd: Path, **settings: str) -> AsyncIterator[None]:
    """A real ``rtgw worker`` process; it imports job modules from ``cwd``."""
    (cwd / "rtgw_test_jobs.py").write_text(JOBS, encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        RTGW, "worker", env=tasks.env(**settings), cwd=cwd
    )
    try:
        yield
    finally:
        await stop_process(process)


async def rtgw(tasks: Tasks, *args: str, **settings: str) -> tuple[int, str]:
    """Run an ``rtgw`` command; its exit code and output (stdout and stderr)."""
    process = await asyncio.create_subprocess_exec(
        RTGW, *args, env=tasks.env(**settings), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def metrics(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{url}/metrics")).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


async def serving_metrics(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The metrics of a gateway that is still starting (not ready: it may not hold the slot)."""
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.TransportError):
            return await metrics(url)
        assert time.monotonic() < deadline, f"{url} never answered"
        await asyncio.sleep(0.1)


async def until(check: Any, wait_s: float = 30.0) -> None:
    await eventually(check, wait_s)


async def until_metrics(url: str, wanted: dict[tuple[str, str], float]) -> None:
    """Scrape until every ``(name, label)`` sample (label: the task, or a depth's state)
    has the wanted value."""
    deadline = time.monotonic() + 30
    while True:
        samples = await metrics(url)
        found = {
            (name, label): samples.get(
                (name, frozenset({("state" if "depth" in name else "task", label)})), 0.0
            )
            for name, label in wanted
        }
        if found == wanted:
            return
        assert time.monotonic() < deadline, f"metrics {found}, wanted {wanted}"
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def gateway_with(pg: EmbeddedPostgres, **settings: Any) -> AsyncIterator[Gateway]:
    running = await start_gateway(pg.dsn, **settings)
    try:
        yield running
    finally:
        await running.stop()
        drop_slot(pg.dsn, running.settings.slot)


# -- the tests ------------------------------------------------------------------------------


async def test_a_job_runs_with_the_change_as_json(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], tasks: Tasks, tmp_path: Path
) -> None:
    folder = channels_with(tmp_path / "channels", 'operations = ["INSERT", "UPDATE"]\n'
                           'filter = "status=eq.paid"\njob = "rtgw_test_jobs:record"')
    async with gateway_with(pg, **tasks.gateway_settings(folder)) as gateway, \
            worker(tasks, tmp_path):
        insert_order(db, status="pending")  # filtered out: no job
        paid = insert_order(db, status="paid", total=12.5)
        await until(lambda: len(tasks.calls()) >= 1)
        await until_metrics(gateway.http_url, {
            ("rtgw_tasks_enqueued_total", "orders.t"): 1,
            ("rtgw_tasks_succeeded_total", "orders.t"): 1,
            ("rtgw_tasks_queue_depth", "waiting"): 0,
        })
    [call] = tasks.calls()
    change = call["change"]
    assert change["op"] == "INSERT" and change["table"] == "orders"
    assert change["new"] == {"id": paid, "status": "paid", "total": "12.50"}  # projected
    assert call["job"].startswith(f"{tasks.queue}-") and ":" in change["id"]


async def test_a_receiver_that_fails_twice_gets_each_event_once_it_recovers(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], tasks: Tasks, tmp_path: Path
) -> None:
    receiver = Receiver(failures=2)
    with receiving(receiver) as url:
        folder = channels_with(tmp_path / "channels", f'webhook = "{url}"')
        async with gateway_with(pg, **tasks.gateway_settings(folder)) as gateway, \
                worker(tasks, tmp_path):
            orders = [insert_order(db, status="paid"), insert_order(db, status="paid")]
            await until(lambda: len(receiver.delivered()) == 2, 60)
            await until_metrics(gateway.http_url, {
                ("rtgw_tasks_enqueued_total", "orders.t"): 2,
                ("rtgw_tasks_retried_total", "orders.t"): 4,
                ("rtgw_tasks_succeeded_total", "orders.t"): 2,
                ("rtgw_tasks_dead_lettered_total", "orders.t"): 0,
                ("rtgw_tasks_queue_depth", "retrying"): 0,
            })
    delivered = receiver.delivered()
    assert sorted(loads(a.body)["data"]["new"]["id"] for a in delivered.values()) == orders
    for msg_id, success in delivered.items():
        attempts = receiver.of(msg_id)
        assert [a.status for a in attempts] == [500, 500, 204]
        assert all(verifies(a, SECRET) for a in attempts)  # re-signed each attempt
        assert {a.body for a in attempts} == {success.body}
        assert not verifies(success, "whsec_" + base64.b64encode(b"x" * 32).decode())
        body = loads(success.body)
        assert body["type"] == "orders.insert" and body["data"]["id"] == msg_id


async def test_dead_letters_are_listed_in_metrics_and_replayed_by_a_command(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], tasks: Tasks, tmp_path: Path
) -> None:
    receiver = Receiver(down=True)
    with receiving(receiver) as url:
        folder = channels_with(tmp_path / "channels", f'webhook = "{url}"')
        settings = {**tasks.gateway_settings(folder), "webhook_retry_s": "1"}
        async with gateway_with(pg, **settings) as gateway, worker(tasks, tmp_path):
            insert_order(db, status="paid")
            await until_metrics(gateway.http_url, {
                ("rtgw_tasks_dead_lettered_total", "orders.t"): 1,
                ("rtgw_tasks_queue_depth", "dead"): 1,
            })
            [msg_id] = {a.headers["webhook-id"] for a in receiver.attempts}
            assert len(receiver.of(msg_id)) == 2  # the attempt and its one retry
            code, listed = await rtgw(tasks, "tasks", "dead")
            assert code == 0 and f"orders.t  {msg_id}  " in listed
            assert "HTTP 500" in listed
            [job_id] = [line.split()[0] for line in listed.splitlines() if msg_id in line]

            receiver.down = False
            code, replayed = await rtgw(tasks, "tasks", "replay", "--all")
            assert code == 0 and "replayed 1 dead letter(s)" in replayed
            await until(lambda: msg_id in receiver.delivered())
            await until_metrics(gateway.http_url, {
                ("rtgw_tasks_succeeded_total", "orders.t"): 1,
                ("rtgw_tasks_queue_depth", "dead"): 0,
            })
            code, again = await rtgw(tasks, "tasks", "replay", job_id)
            assert code == 1 and f"not a dead letter: {job_id}" in again
    assert verifies(receiver.delivered()[msg_id], SECRET)


async def test_private_targets_are_refused_unless_allowed(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], tasks: Tasks, tmp_path: Path
) -> None:
    receiver = Receiver()
    with receiving(receiver) as url:
        folder = channels_with(tmp_path / "channels", f'webhook = "{url}"')
        refused = Settings(
            database_url=pg.dsn, jwt_secret=TEST_SECRET, channels=folder, webhook_secret=SECRET,
            redis_url=tasks.redis_url, task_queue=tasks.queue,
        )
        with pytest.raises(ConfigError) as caught:
            create_app(refused)
        assert str(caught.value) == (
            "orders.toml: channel 'orders': key 'tasks.t.webhook': 127.0.0.1 resolves to "
            "127.0.0.1, which is not a public address; set RTGW_WEBHOOK_ALLOW_PRIVATE=true "
            "to allow loopback and private targets"
        )
        # Allowed where the gateway enqueues, refused where the worker delivers: the
        # delivery's own check stops it (as it would a host whose DNS changed since).
        settings = {**tasks.gateway_settings(folder), "webhook_retry_s": ""}
        async with gateway_with(pg, **settings) as gateway, \
                worker(tasks, tmp_path, webhook_allow_private="false"):
            insert_order(db, status="paid")
            await until_metrics(gateway.http_url, {("rtgw_tasks_queue_depth", "dead"): 1})
            code, listed = await rtgw(tasks, "tasks", "dead")
            assert code == 0 and "TargetRefused: 127.0.0.1 resolves to 127.0.0.1" in listed
    assert receiver.attempts == []


async def test_a_sigkilled_gateway_enqueues_each_committed_change_once(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], tasks: Tasks, tmp_path: Path
) -> None:
    """Ten orders enqueued; twenty more committed back to back and ``rtgw serve`` SIGKILLed
    right after the last commit; restarted, it replays the slot (the history keeps all thirty)
    and enqueues exactly the orders the first process had not: every order's job runs once."""
    folder = channels_with(tmp_path / "channels", 'job = "rtgw_test_jobs:record"')
    slot, port = f"tasks_{secrets.token_hex(4)}", free_port()
    url = f"http://127.0.0.1:{port}"
    env = serve_env(pg.dsn, slot, port, channels=str(folder), redis_url=tasks.redis_url,
                    task_queue=tasks.queue, log_level="warning")
    queued = f"rq:queue:{tasks.queue}"
    first = await rtgw_serve(env)
    second = None
    try:
        await wait_ready(url)
        orders = [insert_order(db, status="paid") for _ in range(10)]
        await until(lambda: tasks.client.llen(queued) == 10)
        orders += [insert_order(db, status="paid") for _ in range(20)]
        first.send_signal(signal.SIGKILL)
        await first.wait()
        enqueued_first = tasks.client.llen(queued)
        second = await rtgw_serve(env)
        await wait_ready(url)
        await until(lambda: tasks.client.llen(queued) == 30)
        await until_metrics(url, {("rtgw_tasks_enqueued_total", "orders.t"): 30 - enqueued_first})
        async with worker(tasks, tmp_path):
            await until(lambda: len(tasks.calls()) >= 30)
            await asyncio.sleep(1)  # room for a duplicate to show
    finally:
        await stop_process(first)
        await stop_process(second)
        drop_slot(pg.dsn, slot)
    keys = [call["change"]["id"] for call in tasks.calls()]
    assert len(keys) == len(set(keys)) == 30  # exactly once per idempotency key
    assert sorted(call["change"]["new"]["id"] for call in tasks.calls()) == orders


async def test_only_the_slot_owner_enqueues_and_its_successor_repeats_nothing(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], tasks: Tasks, tmp_path: Path
) -> None:
    """Two ``rtgw serve`` on one slot: the one holding it enqueues, the other waits for the
    slot; when the owner is SIGKILLed the other takes the slot, replays it and enqueues only
    what the owner had not."""
    folder = channels_with(tmp_path / "channels", 'job = "rtgw_test_jobs:record"')
    slot = f"tasks_{secrets.token_hex(4)}"
    ports = free_port(), free_port()
    envs = [serve_env(pg.dsn, slot, port, channels=str(folder), redis_url=tasks.redis_url,
                      task_queue=tasks.queue, log_level="error") for port in ports]
    queued = f"rq:queue:{tasks.queue}"
    owner = await rtgw_serve(envs[0])
    other = None
    try:
        await wait_ready(f"http://127.0.0.1:{ports[0]}")
        other = await rtgw_serve(envs[1])  # retries the slot (slot_in_use) with backoff
        orders = [insert_order(db, status="paid") for _ in range(10)]
        await until(lambda: tasks.client.llen(queued) == 10)
        samples = await serving_metrics(f"http://127.0.0.1:{ports[1]}")
        assert ("rtgw_source_streaming", frozenset()) in samples
        assert samples[("rtgw_source_streaming", frozenset())] == 0
        assert ("rtgw_tasks_enqueued_total", frozenset({("task", "orders.t")})) not in samples
        owner.send_signal(signal.SIGKILL)
        await owner.wait()
        orders += [insert_order(db, status="paid") for _ in range(10)]
        await wait_ready(f"http://127.0.0.1:{ports[1]}", 60)
        await until(lambda: tasks.client.llen(queued) == 20)
        await until_metrics(f"http://127.0.0.1:{ports[1]}",
                            {("rtgw_tasks_enqueued_total", "orders.t"): 10})
        async with worker(tasks, tmp_path):
            await until(lambda: len(tasks.calls()) >= 20)
            await asyncio.sleep(1)  # room for a duplicate to show
    finally:
        await stop_process(owner)
        await stop_process(other)
        drop_slot(pg.dsn, slot)
    assert sorted(call["change"]["new"]["id"] for call in tasks.calls()) == orders


async def test_while_redis_is_down_nothing_is_confirmed_and_fan_out_is_not_repeated(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], private_redis: RedisServer,
    tmp_path: Path,
) -> None:
    """Redis down: the router publishes the batch, the enqueue fails, the source confirms
    nothing and retries; the hub drops what it already published. Once Redis is back the task
    is enqueued, once, and the client saw the event once."""
    folder = channels_with(tmp_path / "channels", 'job = "rtgw_test_jobs:record"')
    with task_queue(private_redis.url) as tasks:
        async with gateway_with(pg, **tasks.gateway_settings(folder)) as gateway, \
                connect(gateway.ws_url) as client:
            await client.auth(token())
            await client.subscribe("orders")
            private_redis.kill()
            order = insert_order(db, status="paid")
            [event] = await client.events(1)
            assert event["change"]["new"]["id"] == order
            async with httpx.AsyncClient() as http:
                async def not_ready() -> bool:
                    ready = await http.get(f"{gateway.http_url}/readyz")
                    return "sink_unavailable: the task queue (Redis)" in ready.text

                deadline = time.monotonic() + 20
                while not await not_ready():
                    assert time.monotonic() < deadline, "readyz never said why"
                    await asyncio.sleep(0.05)
            private_redis.start()
            await until(lambda: tasks.client.llen(f"rq:queue:{tasks.queue}") == 1, 60)
            assert await client.silent_for(1.0)  # the replayed batch was not sent again
            later = insert_order(db, status="paid")
            [event] = await client.events(1)
            assert event["change"]["new"]["id"] == later
            await until(lambda: tasks.client.llen(f"rq:queue:{tasks.queue}") == 2)
