"""``rtgw check``: validate the configuration and the database set-up, one line per problem."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import psycopg

from gateway import jwks
from gateway.channels import ChannelSet, load_channels
from gateway.errors import ConfigError
from gateway.settings import Settings
from gateway.sources.postgres import provisioning
from gateway.tasks.config import task_problems

if TYPE_CHECKING:
    import redis

JWKS_TIMEOUT_S = 5.0
REDIS_TIMEOUT_S = 5.0
REDIS_MIN_VERSION = (5, 0)  # Streams: the bus's history and the relay
DURABLE_USES = ("the bus", "tasks")  # what evicted keys would lose (the cache only refills)


def run_check(settings: Settings) -> int:
    problems: list[str] = []
    try:
        settings.check()
    except ConfigError as exc:
        problems.append(str(exc))
    channels: ChannelSet | None = None
    try:
        channels = load_channels(settings.channels)
    except ConfigError as exc:
        problems.append(str(exc))
    upstream = "database ready for logical replication"
    if settings.source == "supabase":  # no database connection: Supabase Realtime streams
        upstream = f"upstream Supabase Realtime at {settings.supabase_url} (checked at start)"
    elif settings.database_url is None:
        problems.append("RTGW_DATABASE_URL is not set (rtgw serve would use an embedded Postgres)")
    elif channels is not None:
        problems.extend(check_database(settings, channels))
        problems.extend(check_replication(settings, channels))
    if channels is not None:
        problems.extend(task_problems(settings, channels))
    if settings.jwks_url is not None:
        problems.extend(check_jwks(settings.jwks_url))
    uses = redis_uses(settings, channels)
    if uses:
        problems.extend(check_redis(settings.redis_url, uses))
    for line in problems:
        print(f"problem: {line}")
    if not problems:
        print(f"ok: {len(channels or ())} channels, {upstream}")
    return 1 if problems else 0


def check_database(settings: Settings, channels: ChannelSet) -> list[str]:
    """wal_level, and the channels' tables (and the roles table): that they exist with the
    columns the channels name, and that their replica identity gives the old rows the channels
    need."""
    assert settings.database_url is not None
    problems = []
    try:
        conn = psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        return [f"cannot connect to RTGW_DATABASE_URL: {str(exc).strip().splitlines()[0]}"]
    with conn:
        row = conn.execute("SHOW wal_level").fetchone()
        if row is None or row[0] != "logical":
            problems.append(
                f"wal_level is {row[0] if row else '?'}; run ALTER SYSTEM SET wal_level = "
                "'logical'; and restart Postgres"
            )
        tables = _read_tables(conn, channels)
        for channel in channels:
            problems.extend(provisioning.table_problems(channel, tables))
        problems.extend(provisioning.identity_problems(channels, tables))
        if channels.roles is not None:
            problems.extend(provisioning.roles_problems(channels.roles, tables))
        problems.extend(provisioning.rls_problems(conn, list(channels)))
    return problems


def check_replication(settings: Settings, channels: ChannelSet) -> list[str]:
    """The publication and the slot, when they exist (``rtgw serve`` creates missing ones)."""
    assert settings.database_url is not None
    try:
        conn = psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5)
    except psycopg.Error:
        return []  # check_database already said so
    problems = []
    with conn:
        name = settings.publication
        row = conn.execute(provisioning.PUBLICATION_QUERY, (name,)).fetchone()
        publication = provisioning.Publication.from_row(name, row)
        if publication is not None:  # a missing table is check_database's line
            existing = _read_tables(conn, channels)
            problems.extend(publication.problems(t for t in channels.tables if t in existing))
        row = conn.execute(provisioning.SLOT_QUERY, (settings.slot,)).fetchone()
        slot = provisioning.Slot.from_row(settings.slot, row)
        if slot is not None:
            problems.extend(slot.problems())
    return problems


def _read_tables(
    conn: psycopg.Connection[tuple[object, ...]], channels: ChannelSet
) -> dict[tuple[str, str], provisioning.TableInfo]:
    tables = channels.tables
    params = ([schema for schema, _ in tables], [table for _, table in tables])
    return provisioning.read_tables(conn.execute(provisioning.TABLES_QUERY, params).fetchall())


def check_jwks(url: str) -> list[str]:
    """Fetch the JWKS once, as the gateway would, and report the keys it would use."""
    try:
        keys = jwks.fetch(url, JWKS_TIMEOUT_S)
    except jwks.JwksError as exc:
        if exc.reason == "http":
            return [f"RTGW_JWKS_URL {url} answered HTTP {exc.status}: check the URL"]
        if exc.reason == "unreachable":
            return [f"RTGW_JWKS_URL {url} cannot be fetched ({exc}): check the URL and network"]
        if exc.reason == "not_json":
            return [f"RTGW_JWKS_URL {url} is not JSON: it must serve a JWKS document"]
        return [f"RTGW_JWKS_URL {url} is not a JWKS document ({exc})"]
    if not keys:
        return [f"RTGW_JWKS_URL {url} holds no usable signing key with a kid (RSA, EC or OKP): "
                "tokens signed with RS256/ES256 would all be refused"]
    print(f"jwks: {url}: {len(keys)} signing key(s): " + ", ".join(sorted(keys)))
    return []


def redis_uses(settings: Settings, channels: ChannelSet | None) -> list[str]:
    """What the configuration keeps in Redis, in the words ``check_redis`` reports."""
    uses = []
    if settings.bus == "redis":
        uses.append("the bus")
    if settings.cache == "redis":
        uses.append("the lookup cache")
    if channels is not None and any(channel.tasks for channel in channels):
        uses.append("tasks")
    return uses


def check_redis(url: str, uses: list[str]) -> list[str]:
    """Connect once, as the gateway would: reachable, new enough, and, for what must not be
    lost, not evicting keys."""
    import redis  # only when configured, as the gateway imports it

    where = redacted(url)
    needs = " and ".join(uses) + (" needs" if len(uses) == 1 else " need")
    client = redis.Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )
    try:
        info = client.info("server")
        version = str(info.get("redis_version", "0"))
        if tuple(int(part) for part in version.split(".")[:2]) < REDIS_MIN_VERSION:
            return [f"RTGW_REDIS_URL {where} runs Redis {version}; {needs} Redis "
                    f"{'.'.join(map(str, REDIS_MIN_VERSION))} or newer (Streams)"]
        problems = []
        durable = [use for use in uses if use in DURABLE_USES]
        eviction = _eviction(client) if durable else None
        if eviction is not None:
            problems.append(
                f"RTGW_REDIS_URL {where} evicts keys ({eviction}): {' and '.join(durable)} "
                "would lose data silently; CONFIG SET maxmemory-policy noeviction"
            )
        print(f"redis: {where}: Redis {version}, for {' and '.join(uses)}")
        return problems
    except redis.AuthenticationError as exc:
        return [f"RTGW_REDIS_URL {where} refused the credentials ({exc}): check the URL's "
                "user and password"]
    except redis.RedisError as exc:
        return [f"RTGW_REDIS_URL {where} cannot be reached ({exc}); {needs} it"]
    finally:
        client.close()


def _eviction(client: redis.Redis) -> str | None:
    """The eviction policy when Redis would evict keys, None when it never does or does not
    say (managed services often refuse CONFIG)."""
    import redis

    try:
        config = client.config_get("maxmemory*")
    except redis.ResponseError:
        print("redis: CONFIG GET is refused here; check that maxmemory-policy is noeviction")
        return None
    policy = str(config.get("maxmemory-policy", "noeviction"))
    if policy == "noeviction" or str(config.get("maxmemory", "0")) == "0":
        return None
    return f"maxmemory {config['maxmemory']}, maxmemory-policy {policy}"


def redacted(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))
