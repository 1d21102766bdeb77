"""``rtgw check``: validate the configuration and the database set-up, one line per problem."""

from __future__ import annotations

import psycopg

from gateway import jwks
from gateway.channels import ChannelSet, load_channels
from gateway.errors import ConfigError
from gateway.settings import Settings
from gateway.sources.inspect import identity_problems_sync

Conn = psycopg.Connection[tuple[object, ...]]
JWKS_TIMEOUT_S = 5.0


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
    if settings.jwks_url is not None:
        problems.extend(check_jwks(settings.jwks_url))
    for line in problems:
        print(f"problem: {line}")
    if not problems:
        print(f"ok: {len(channels or ())} channels, {upstream}")
    return 1 if problems else 0


def check_database(settings: Settings, channels: ChannelSet) -> list[str]:
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
        for channel in channels:
            table = f"{channel.schema}.{channel.table}"
            found = conn.execute(
                "SELECT c.relreplident, array_agg(a.attname::text) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
                "AND NOT a.attisdropped WHERE n.nspname = %s AND c.relname = %s "
                "GROUP BY c.relreplident",
                (channel.schema, channel.table),
            ).fetchone()
            if found is None:
                problems.append(f"{channel.source}: channel {channel.name!r}: table {table} "
                                "does not exist")
                continue
            _identity, columns = found
            wanted = set(channel.columns or ()) | set(channel.filterable or ())
            if channel.partition is not None:
                wanted.add(channel.partition.column)
            for column in sorted(wanted - set(columns)):
                problems.append(f"{channel.source}: channel {channel.name!r}: column {column!r} "
                                f"is not in {table}")
        problems.extend(identity_problems_sync(conn, channels))
    return problems


def check_replication(settings: Settings, channels: ChannelSet) -> list[str]:
    """The publication and the slot, when they exist (``rtgw serve`` creates missing ones)."""
    assert settings.database_url is not None
    try:
        conn = psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5)
    except psycopg.Error:
        return []  # check_database already said so
    with conn:
        return check_publication(conn, settings.publication, channels) + check_slot(
            conn, settings.slot
        )


def check_publication(conn: Conn, publication: str, channels: ChannelSet) -> list[str]:
    row = conn.execute(
        "SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication "
        "WHERE pubname = %s",
        (publication,),
    ).fetchone()
    if row is None:
        return []  # created by rtgw serve for the channels' tables
    problems = []
    missing_ops = [op for op, on in zip(("insert", "update", "delete", "truncate"), row[1:],
                                        strict=True) if not on]
    if missing_ops:
        problems.append(
            f"publication {publication} does not publish {', '.join(missing_ops)}: ALTER "
            f"PUBLICATION {publication} SET (publish = 'insert, update, delete, truncate');"
        )
    published = {
        (str(schema), str(table))
        for schema, table in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
            (publication,),
        ).fetchall()
    }
    for schema, table in channels.tables:
        if (schema, table) not in published and _table_exists(conn, schema, table):
            problems.append(
                f"publication {publication} does not include {schema}.{table}, so its changes "
                f"never arrive: ALTER PUBLICATION {publication} ADD TABLE {schema}.{table};"
            )
    return problems


def _table_exists(conn: Conn, schema: str, table: str) -> bool:
    found = conn.execute(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (schema, table),
    ).fetchone()
    return found is not None


def check_slot(conn: Conn, slot: str) -> list[str]:
    row = conn.execute(
        "SELECT plugin, slot_type, active, active_pid, wal_status FROM pg_replication_slots "
        "WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return []  # created by rtgw serve
    plugin, slot_type, active, pid, wal_status = row
    problems = []
    if slot_type != "logical" or plugin != "pgoutput":
        problems.append(
            f"slot {slot} is a {slot_type} slot with plugin {plugin}, not pgoutput: drop it "
            f"(SELECT pg_drop_replication_slot('{slot}');) or set RTGW_SLOT to another name"
        )
    if active:
        problems.append(
            f"slot {slot} is in use by another process (pid {pid}): stop the other consumer or "
            "set RTGW_SLOT to another name"
        )
    if wal_status == "lost":
        problems.append(
            f"slot {slot} was invalidated (its WAL was removed): drop it "
            f"(SELECT pg_drop_replication_slot('{slot}');) and let rtgw serve recreate it"
        )
    return problems


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
