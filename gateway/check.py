"""``rtgw check``: validate the configuration and the database set-up, one line per problem."""

from __future__ import annotations

import psycopg

from gateway.channels import ChannelSet, load_channels
from gateway.errors import ConfigError
from gateway.settings import Settings
from gateway.sources.inspect import identity_problems_sync


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
    if settings.database_url is None:
        problems.append("RTGW_DATABASE_URL is not set (rtgw serve would use an embedded Postgres)")
    elif channels is not None:
        problems.extend(check_database(settings, channels))
    for line in problems:
        print(f"problem: {line}")
    if not problems:
        print(f"ok: {len(channels or ())} channels, database ready for logical replication")
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
