"""supabase/migrations/*.sql applied the way docker-compose's postgres applies them.

The official postgres image runs each ``*.sql`` of /docker-entrypoint-initdb.d in name order with
``psql -v ON_ERROR_STOP=1``. These tests do the same with the real psql against the machine's own
plain PostgreSQL (15) at 127.0.0.1:5432 (trust auth, user postgres), each in a fresh database
with a random name that is dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = sorted((REPO / "supabase" / "migrations").glob("*.sql"))
PSQL = "/usr/bin/psql"
HOST, PORT, USER = "127.0.0.1", "5432", "postgres"
TABLES = ("customers", "orders", "notifications")
USER_A = "6f1c1d8e-0000-4000-8000-00000000000a"
USER_B = "6f1c1d8e-0000-4000-8000-00000000000b"

# A stand-in for what a Supabase project provides before any migration runs: the API roles and
# the `auth` schema's auth.uid() / auth.jwt() (modelled on Supabase's own definitions, which read
# the claims PostgREST puts in request.jwt.claim.sub / request.jwt.claims). Roles are
# cluster-wide: created only when missing and never dropped, other databases may use them.
SUPABASE_ROLES_STAND_IN = """
DO $$
DECLARE
  role_name text;
BEGIN
  FOREACH role_name IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
      BEGIN
        EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
      EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;  -- created concurrently by another session
      END;
    END IF;
  END LOOP;
END;
$$;
"""
SUPABASE_AUTH_SCHEMA_STAND_IN = """
CREATE SCHEMA IF NOT EXISTS auth;

CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid
LANGUAGE sql STABLE AS $$
  SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid
$$;

CREATE OR REPLACE FUNCTION auth.jwt() RETURNS jsonb
LANGUAGE sql STABLE AS $$
  SELECT coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{}')::jsonb
$$;

GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
"""


def _env() -> dict[str, str]:
    # No PG* variables from the caller's environment (PGDATABASE, PGOPTIONS, PGSERVICE, ...).
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


def psql(database: str, *args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run psql; fail the test with its output unless it exits 0."""
    command = [PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-p", PORT, "-U", USER]
    command += ["-d", database, *args]
    done = subprocess.run(
        command, input=script, capture_output=True, text=True, env=_env(), timeout=120
    )
    if done.returncode != 0:
        pytest.fail(
            f"psql {' '.join(args)} exited {done.returncode}\n"
            f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        )
    return done


def rows(database: str, sql: str) -> list[list[str]]:
    """The rows of the script's queries, tab-separated fields, in unaligned tuples-only mode."""
    out = psql(database, "-At", "-F", "\t", script=sql).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def value(database: str, sql: str) -> str:
    found = rows(database, sql)
    assert len(found) == 1 and len(found[0]) == 1, found
    return found[0][0]


def apply_migrations(database: str) -> list[str]:
    """Each file in name order, one psql per file, as docker-entrypoint.sh does. Returns stderr."""
    return [psql(database, "-f", str(path)).stderr for path in MIGRATIONS]


def _server_problem() -> str | None:
    if not Path(PSQL).exists():
        return f"{PSQL} is not installed"
    if not _psql_connects():
        return f"no PostgreSQL accepting user {USER} (trust) at {HOST}:{PORT}"
    return None


def _psql_connects() -> bool:
    if not Path(PSQL).exists():
        return False
    command = [PSQL, "-X", "-At", "-h", HOST, "-p", PORT, "-U", USER, "-d", "postgres"]
    try:
        done = subprocess.run(
            [*command, "-c", "select 1"], capture_output=True, text=True, env=_env(), timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="module")
def server() -> None:
    problem = _server_problem()
    if problem:
        pytest.fail(f"the machine's PostgreSQL 15 on 127.0.0.1:5432 is needed: {problem}")
    version = int(value("postgres", "SHOW server_version_num"))
    assert version >= 150000, f"the migrations promise Postgres 15+, the server is {version}"


@pytest.fixture
def database(server: None) -> Iterator[str]:
    name = f"rtgw_migrations_{secrets.token_hex(6)}"
    psql("postgres", "-c", f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        psql("postgres", "-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_there_are_migrations() -> None:
    assert MIGRATIONS, "no supabase/migrations/*.sql"
    assert [path.name for path in MIGRATIONS] == sorted(path.name for path in MIGRATIONS)


def columns(database: str, table: str) -> dict[str, tuple[str, str, str, str]]:
    """name -> (data_type, is_nullable, column_default, is_identity)."""
    found = rows(
        database,
        "SELECT column_name, data_type, is_nullable, coalesce(column_default, ''), is_identity "
        "FROM information_schema.columns "
        f"WHERE table_schema = 'public' AND table_name = '{table}' ORDER BY ordinal_position",
    )
    return {
        name: (kind, nullable, default, identity)
        for name, kind, nullable, default, identity in found
    }


def check_schema(database: str) -> None:
    """The tables, columns, defaults, replica identity, publication and trigger of the design."""
    customers = columns(database, "customers")
    assert list(customers) == ["id", "name", "tier"]
    orders = columns(database, "orders")
    assert list(orders) == ["id", "customer_id", "status", "total", "created_at", "updated_at"]
    notifications = columns(database, "notifications")
    assert list(notifications) == ["id", "user_id", "title", "body", "read", "created_at"]

    for table in (customers, orders, notifications):
        assert table["id"][0] == "bigint"
        assert table["id"][3] == "YES", "ids are generated (identity columns)"
    assert orders["customer_id"][0] == "bigint"
    assert orders["total"][0] == "numeric"
    assert notifications["user_id"][0] == "uuid"
    assert notifications["read"][0] == "boolean"
    assert notifications["read"][2] == "false"
    for table in (orders, notifications):
        assert table["created_at"][0] == "timestamp with time zone"
        assert table["created_at"][2] == "now()"
    assert orders["updated_at"][0] == "timestamp with time zone"
    assert orders["updated_at"][2] == "now()"

    identities = rows(
        database,
        "SELECT relname, relreplident FROM pg_class "
        "WHERE oid IN ('public.customers'::regclass, 'public.orders'::regclass, "
        "'public.notifications'::regclass) ORDER BY relname",
    )
    assert identities == [["customers", "f"], ["notifications", "f"], ["orders", "f"]]

    publication = rows(
        database,
        "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication "
        "WHERE pubname = 'rtgw'",
    )
    assert publication == [["t", "t", "t", "t"]], "publication rtgw publishes every operation"
    published = rows(
        database,
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = 'rtgw' "
        "ORDER BY tablename",
    )
    assert published == [["public", "customers"], ["public", "notifications"], ["public", "orders"],
                         ["public", "user_roles"]]

    user_roles = columns(database, "user_roles")
    assert {name: column[:2] for name, column in user_roles.items()} == {
        "user_id": ("uuid", "NO"), "role": ("text", "NO")
    }
    key = value(database, "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                          "WHERE conrelid = 'public.user_roles'::regclass AND contype = 'p'")
    assert key == "PRIMARY KEY (user_id, role)"
    assert value(database, "SELECT relrowsecurity FROM pg_class "
                           "WHERE oid = 'public.user_roles'::regclass") == "t"

    triggers = rows(
        database,
        "SELECT tgname FROM pg_trigger "
        "WHERE tgrelid = 'public.orders'::regclass AND NOT tgisinternal",
    )
    assert triggers == [["orders_touch_updated_at"]]


def check_defaults_and_trigger(database: str) -> None:
    """Generated ids, now() timestamps, read = false, and updated_at moved by the trigger."""
    inserted = rows(
        database,
        f"""
        BEGIN;
        INSERT INTO public.customers (name) VALUES ('Ada')
          RETURNING 'customer', id IS NOT NULL, tier;
        INSERT INTO public.orders (customer_id, total)
          SELECT id, 12.5 FROM public.customers WHERE name = 'Ada'
          RETURNING 'order', id IS NOT NULL, status, total,
                    created_at = now(), updated_at = now();
        INSERT INTO public.notifications (user_id, title) VALUES ('{USER_A}', 'hello')
          RETURNING 'notification', id IS NOT NULL, read, body, created_at = now();
        COMMIT;
        """,
    )
    assert inserted == [
        ["customer", "t", "standard"],
        ["order", "t", "pending", "12.50", "t", "t"],
        ["notification", "t", "f", "", "t"],
    ]
    updated = rows(
        database,
        """
        BEGIN;
        UPDATE public.orders SET status = 'paid', updated_at = '2000-01-01T00:00:00Z'
          RETURNING 'order', status, updated_at = now(), updated_at > created_at;
        COMMIT;
        """,
    )
    # The BEFORE UPDATE trigger overrides even an explicit value with now(), and this
    # transaction began after the INSERT's.
    assert updated == [["order", "paid", "t", "t"]]


def policies(database: str) -> list[list[str]]:
    return rows(
        database,
        "SELECT tablename, policyname, cmd, array_to_string(roles, ',') FROM pg_policies "
        "WHERE schemaname = 'public' ORDER BY tablename, policyname",
    )


def row_security(database: str) -> list[list[str]]:
    return rows(
        database,
        "SELECT relname, relrowsecurity FROM pg_class "
        "WHERE oid IN ('public.customers'::regclass, 'public.orders'::regclass, "
        "'public.notifications'::regclass) ORDER BY relname",
    )


def test_plain_postgres_applies_twice(database: str) -> None:
    first = apply_migrations(database)
    second = apply_migrations(database)
    for stderr in (*first, *second):
        assert "ERROR" not in stderr
    assert any("not a Supabase database: skipping RLS policies" in err for err in first)
    assert any("no supabase_realtime publication: skipping" in err for err in first)

    check_schema(database)
    check_defaults_and_trigger(database)
    # Without Supabase's roles and auth schema the policy migration is skipped.
    assert row_security(database) == [
        ["customers", "f"],
        ["notifications", "f"],
        ["orders", "f"],
    ]
    assert policies(database) == []


def test_roles_without_the_auth_schema_still_skip_policies(database: str) -> None:
    """Roles are cluster-wide: another database may have created `authenticated`. Without
    auth.uid() in this database the policy migration must still skip (not fail)."""
    psql(database, script=SUPABASE_ROLES_STAND_IN)
    assert value(database, "SELECT count(*) FROM pg_roles WHERE rolname = 'authenticated'") == "1"
    apply_migrations(database)
    apply_migrations(database)
    check_schema(database)
    assert policies(database) == []


EXPECTED_POLICIES = [
    ["customers", "customers readable with orders:read", "SELECT", "authenticated"],
    ["notifications", "own notifications", "SELECT", "authenticated"],
    ["orders", "orders readable with orders:read", "SELECT", "authenticated"],
    ["user_roles", "own roles", "SELECT", "authenticated"],
]


def test_supabase_like_database_gets_row_level_security(database: str) -> None:
    psql(database, script=SUPABASE_ROLES_STAND_IN + SUPABASE_AUTH_SCHEMA_STAND_IN)
    apply_migrations(database)
    apply_migrations(database)

    check_schema(database)
    assert row_security(database) == [
        ["customers", "t"],
        ["notifications", "t"],
        ["orders", "t"],
    ]
    assert policies(database) == EXPECTED_POLICIES

    psql(
        database,
        script=f"""
        GRANT SELECT ON public.customers, public.orders, public.notifications TO authenticated;
        INSERT INTO public.notifications (user_id, title) VALUES
          ('{USER_A}', 'for A'), ('{USER_B}', 'for B');
        INSERT INTO public.customers (name) VALUES ('Ada');
        INSERT INTO public.orders (customer_id, total) SELECT id, 10 FROM public.customers;
        """,
    )
    assert visible_notifications(database, USER_A) == [[USER_A, "for A"]]
    assert visible_notifications(database, USER_B) == [[USER_B, "for B"]]
    assert visible_notifications(database, None) == []
    # The superuser still sees both.
    assert value(database, "SELECT count(*) FROM public.notifications") == "2"

    assert visible_orders(database, '{"sub": "x", "scope": "orders:read"}') == "1"
    assert visible_orders(database, '{"sub": "x", "scope": "profile"}') == "0"
    # Scopes are whole words, as rtgw reads them: no substring matches.
    assert visible_orders(database, '{"sub": "x", "scope": "profile orders:read"}') == "1"
    assert visible_orders(database, '{"sub": "x", "scope": "orders:readonly"}') == "0"
    # Split on plain spaces only, as rtgw does: a tab is part of a scope, not a separator.
    assert visible_orders(database, '{"sub": "x", "scope": "profile\\torders:read"}') == "0"
    assert visible_orders(database, '{"sub": "x", "scope": ["orders:read"]}') == "1"
    assert visible_orders(
        database, '{"sub": "x", "app_metadata": {"scopes": ["orders:read"]}}'
    ) == "1"
    assert visible_orders(database, None) == "0"


def visible_notifications(database: str, sub: str | None) -> list[list[str]]:
    """What `authenticated` sees with the given JWT `sub`, as PostgREST would set it."""
    claim = "" if sub is None else f"SELECT set_config('request.jwt.claim.sub', '{sub}', true);"
    found = rows(
        database,
        f"""
        BEGIN;
        SET LOCAL ROLE authenticated;
        {claim}
        SELECT 'row', user_id, title FROM public.notifications ORDER BY id;
        COMMIT;
        """,
    )
    return [row[1:] for row in found if row[0] == "row"]


def visible_orders(database: str, claims: str | None) -> str:
    claim = "" if claims is None else f"SELECT set_config('request.jwt.claims', '{claims}', true);"
    found = rows(
        database,
        f"""
        BEGIN;
        SET LOCAL ROLE authenticated;
        {claim}
        SELECT 'count', count(*) FROM public.orders;
        COMMIT;
        """,
    )
    return next(row[1] for row in found if row[0] == "count")


def test_supabase_realtime_publication_gets_the_demo_tables(database: str) -> None:
    """RTGW_SOURCE=supabase streams what Supabase Realtime publishes: `supabase_realtime`."""
    psql(database, "-c", "CREATE PUBLICATION supabase_realtime")
    apply_migrations(database)
    apply_migrations(database)
    published = rows(
        database,
        "SELECT tablename FROM pg_publication_tables WHERE pubname = 'supabase_realtime' "
        "ORDER BY tablename",
    )
    assert published == [[table] for table in sorted((*TABLES, "user_roles"))]
