"""``rtgw check`` against a real database: each problem gets one actionable line."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.check import run_check
from gateway.settings import Settings
from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import REPO, TEST_SECRET, drop_slot, free_port, start_gateway
from tests.integration.test_auth import JwksServer, rsa_jwk
from tests.redis_server import RedisServer


def check(capsys: pytest.CaptureFixture[str], **overrides: Any) -> tuple[int, list[str]]:
    values: dict[str, Any] = {"jwt_secret": TEST_SECRET, "channels": REPO / "channels"}
    code = run_check(Settings(**{**values, **overrides}))
    return code, capsys.readouterr().out.splitlines()


def problems(lines: list[str]) -> list[str]:
    return [line.removeprefix("problem: ") for line in lines if line.startswith("problem: ")]


@pytest.fixture
def publication(db: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"chk_{secrets.token_hex(3)}"
    yield name
    db.execute(f"DROP PUBLICATION IF EXISTS {name}")


def test_a_ready_database_passes(pg: EmbeddedPostgres, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = check(capsys, database_url=pg.dsn, slot="chk_absent")
    assert code == 0, lines
    assert lines == ["ok: 2 channels, database ready for logical replication"]


def test_publication_without_a_channel_table_or_an_operation(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], publication: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db.execute(
        f"CREATE PUBLICATION {publication} FOR TABLE public.orders WITH (publish = 'insert')"
    )
    code, lines = check(capsys, database_url=pg.dsn, publication=publication, slot="chk_absent")
    assert code == 1
    assert problems(lines) == [
        f"publication {publication} does not publish update, delete, truncate: ALTER "
        f"PUBLICATION {publication} SET (publish = 'insert, update, delete, truncate');",
        # customers: the orders' lookup needs its changes to keep the cache true
        f"publication {publication} does not include public.customers, so its changes "
        f"never arrive: ALTER PUBLICATION {publication} ADD TABLE public.customers;",
        f"publication {publication} does not include public.notifications, so its changes "
        f"never arrive: ALTER PUBLICATION {publication} ADD TABLE public.notifications;",
        # user_roles: [roles] follows it in the stream to revoke roles live
        f"publication {publication} does not include public.user_roles, so its changes "
        f"never arrive: ALTER PUBLICATION {publication} ADD TABLE public.user_roles;",
    ]


def test_slot_of_the_wrong_kind(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    slot = f"chk_{secrets.token_hex(3)}"
    db.execute("SELECT pg_create_physical_replication_slot(%s)", (slot,))
    try:
        code, lines = check(capsys, database_url=pg.dsn, slot=slot)
    finally:
        drop_slot(pg.dsn, slot)
    assert code == 1
    assert problems(lines) == [
        f"slot {slot} is a physical slot with plugin None, not pgoutput: drop it "
        f"(SELECT pg_drop_replication_slot('{slot}');) or set RTGW_SLOT to another name"
    ]


async def test_slot_in_use_by_a_running_gateway(
    pg: EmbeddedPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = await start_gateway(pg.dsn)
    try:
        code, lines = check(capsys, database_url=pg.dsn, slot=gateway.settings.slot)
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)
    assert code == 1
    (line,) = problems(lines)
    assert line.startswith(f"slot {gateway.settings.slot} is in use by another process (pid ")


def test_partitioned_channel_without_full_replica_identity(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = f"chk_{secrets.token_hex(3)}"
    db.execute(f"CREATE TABLE public.{table} (id serial PRIMARY KEY, owner text)")
    (tmp_path / "c.toml").write_text(
        f'[channels.mine]\ntable = "public.{table}"\n'
        '[channels.mine.partition]\ncolumn = "owner"\nclaim = "sub"\n'
    )
    try:
        code, lines = check(
            capsys, database_url=pg.dsn, channels=tmp_path, slot="chk_absent",
            publication="chk_absent",
        )
    finally:
        db.execute(f"DROP TABLE public.{table}")
    assert code == 1
    [line] = problems(lines)
    assert line.startswith(f"c.toml: channel 'mine' needs old rows that public.{table}")
    assert "partition column 'owner'" in line
    assert line.endswith(f"Run: ALTER TABLE public.{table} REPLICA IDENTITY FULL;")


def test_a_roles_table_that_is_missing_lacks_a_column_or_cannot_attribute_deletes(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = f"chk_{secrets.token_hex(3)}"
    db.execute(f"CREATE TABLE public.{table} (id serial PRIMARY KEY, user_id uuid, role text)")
    channel = '[channels.orders]\ntable = "public.orders"\n'
    found = []
    try:
        for roles_table, role_column in ((f"{table}_absent", "role"), (table, "name"),
                                         (table, "role")):
            (tmp_path / "c.toml").write_text(
                f'{channel}[roles]\ntable = "public.{roles_table}"\nuser_column = "user_id"\n'
                f'role_column = "{role_column}"\nclaim = "sub"\n[roles.scopes]\n'
            )
            code, lines = check(capsys, database_url=pg.dsn, channels=tmp_path,
                                slot="chk_absent", publication="chk_absent")
            assert code == 1
            found.extend(problems(lines))
    finally:
        db.execute(f"DROP TABLE public.{table}")
    assert found == [
        f"c.toml: [roles]: table public.{table}_absent does not exist",
        f"c.toml: [roles]: column 'name' is not in public.{table}",
        f"c.toml: [roles]: a DELETE from public.{table} would not say whose role it revoked "
        "(its replica identity lacks user_id, role). Make (user_id, role) the primary key, or "
        f"run: ALTER TABLE public.{table} REPLICA IDENTITY FULL;",
    ]


def test_unreachable_database_and_missing_secret(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    code, lines = check(capsys, database_url=dead, jwt_secret=None)
    assert code == 1
    found = problems(lines)
    assert found[0].startswith("RTGW_JWT_SECRET or RTGW_JWKS_URL must be set")
    assert found[1].startswith("cannot connect to RTGW_DATABASE_URL: ")
    assert len(found) == 2


def test_jwks_is_fetched_once_and_reported(
    pg: EmbeddedPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = JwksServer(jwks={"keys": [rsa_jwk(key, "k1")]})
    jwks.start()
    try:
        base = {"database_url": pg.dsn, "slot": "chk_absent", "jwt_secret": None}
        code, lines = check(capsys, **base, jwks_url=jwks.url)
        assert code == 0, lines
        assert lines[0] == f"jwks: {jwks.url}: 1 signing key(s): k1"
        assert jwks.requests == 1

        jwks.jwks = {"keys": []}
        code, lines = check(capsys, **base, jwks_url=jwks.url)
        assert code == 1
        assert problems(lines) == [
            f"RTGW_JWKS_URL {jwks.url} holds no usable signing key with a kid (RSA, EC or "
            "OKP): tokens signed with RS256/ES256 would all be refused"
        ]
        jwks.body = b"<html>"
        assert problems(check(capsys, **base, jwks_url=jwks.url)[1]) == [
            f"RTGW_JWKS_URL {jwks.url} is not JSON: it must serve a JWKS document"
        ]
        jwks.status = 404
        assert problems(check(capsys, **base, jwks_url=jwks.url)[1]) == [
            f"RTGW_JWKS_URL {jwks.url} answered HTTP 404: check the URL"
        ]
    finally:
        jwks.stop()
    dead = f"http://127.0.0.1:{free_port()}/jwks.json"
    (line,) = problems(check(capsys, **base, jwks_url=dead)[1])
    assert line.startswith(f"RTGW_JWKS_URL {dead} cannot be fetched (")


def test_tasks_need_a_secret_and_a_public_webhook_target(
    pg: EmbeddedPostgres, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "orders.toml").write_text(
        '[channels.orders]\ntable = "public.orders"\n'
        '[channels.orders.tasks.partner]\nwebhook = "http://localhost:9/hooks"\n',
        encoding="utf-8",
    )
    code, lines = check(capsys, database_url=pg.dsn, slot="chk_absent", channels=tmp_path)
    assert code == 1
    found = problems(lines)
    assert found[0] == "RTGW_WEBHOOK_SECRET must be set: channel tasks send webhooks"
    assert found[1].startswith(
        "orders.toml: channel 'orders': key 'tasks.partner.webhook': localhost resolves to "
    )
    assert found[1].endswith(
        "which is not a public address; set RTGW_WEBHOOK_ALLOW_PRIVATE=true to allow "
        "loopback and private targets"
    )
    code, lines = check(
        capsys, database_url=pg.dsn, slot="chk_absent", channels=tmp_path,
        webhook_secret="whsec_" + "QUJD" * 8, webhook_allow_private=True, redis_url=redis_url,
    )
    assert code == 0, lines
    assert f"redis: {redis_url}: Redis " in lines[0] and lines[0].endswith(", for tasks")


def test_redis_is_checked_when_the_bus_or_the_cache_lives_there(
    pg: EmbeddedPostgres, private_redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {"database_url": pg.dsn, "slot": "chk_absent"}
    url = private_redis.url
    code, lines = check(capsys, **base, bus="redis", cache="redis", redis_url=url)
    assert code == 0, lines
    assert lines[0].startswith(f"redis: {url}: Redis ")
    assert lines[0].endswith(", for the bus and the lookup cache")
    client = redis.Redis.from_url(url)
    client.config_set("maxmemory", "100mb")
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.close()
    code, lines = check(capsys, **base, bus="redis", cache="redis", redis_url=url)
    assert code == 1
    assert problems(lines) == [
        f"RTGW_REDIS_URL {url} evicts keys (maxmemory 104857600, maxmemory-policy "
        "allkeys-lru): the bus would lose data silently; CONFIG SET maxmemory-policy noeviction"
    ]
    code, lines = check(capsys, **base, cache="redis", redis_url=url)  # a cache may evict
    assert code == 0, lines
    private_redis.kill()
    password_url = url.replace("redis://", "redis://:hunter2@")
    code, lines = check(capsys, **base, bus="redis", redis_url=password_url)
    assert code == 1
    (line,) = problems(lines)
    assert line.startswith(f"RTGW_REDIS_URL {url.replace('redis://', 'redis://:***@')} "
                           "cannot be reached (")
    assert line.endswith("); the bus needs it") and "hunter2" not in line
