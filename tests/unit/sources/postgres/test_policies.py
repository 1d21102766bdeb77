"""sources.postgres.policies: which row-level security policies a channel is proved to respect,
read from ``pg_policies.qual`` as Postgres writes it."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.channels import Channel, Lookup, Partition
from gateway.sources.postgres.policies import (
    Partitioned,
    Policy,
    Scoped,
    requirements,
    rls_problems,
)

TABLE = ("public", "notes")


def channel(**overrides: Any) -> Channel:
    values: dict[str, Any] = {
        "name": "notes", "schema": "public", "table": "notes", "operations": frozenset(),
        "scopes": frozenset(), "columns": None, "filterable": None, "partition": None,
        "source": "n.toml",
    }
    values.update(overrides)
    return Channel(**values)


def policy(qual: str | None, *, permissive: bool = True, roles: tuple[str, ...] = (
    "authenticated",), command: str = "SELECT", table: tuple[str, str] = TABLE,
           name: str = "p") -> Policy:
    return Policy(table, name, permissive, frozenset(roles), command, qual)


@pytest.mark.parametrize(
    ("qual", "wanted"),
    [  # as pg_policies.qual writes them (Postgres 15)
        ("true", []),
        ("(user_id = auth.uid())", [Partitioned("user_id", "sub")]),
        ("(auth.uid() = user_id)", [Partitioned("user_id", "sub")]),
        ("(( SELECT auth.uid() AS uid) = owner)", [Partitioned("owner", "sub")]),
        ("((auth.jwt() ->> 'tenant'::text) = tenant)", [Partitioned("tenant", "tenant")]),
        ("(team = ((auth.jwt() -> 'app_metadata'::text) ->> 'team'::text))",
         [Partitioned("team", "app_metadata.team")]),
        ("rtgw_has_scope('orders:read'::text)", [Scoped("orders:read")]),
        ("public.rtgw_has_scope('orders:read'::text)", [Scoped("orders:read")]),
        ("((auth.uid() = owner) AND rtgw_has_scope('x'::text))",
         [Partitioned("owner", "sub"), Scoped("x")]),
    ],
)
def test_the_recognised_forms(qual: str, wanted: list[object]) -> None:
    assert requirements(qual) == wanted


@pytest.mark.parametrize(
    "qual",
    [
        "((auth.uid() = owner) OR true)",
        "((auth.uid() = owner) AND (tenant = 'x'::text))",  # a row condition: not the channel's
        "(owner = current_user)",
        "(EXISTS ( SELECT 1 FROM members m WHERE (m.user_id = auth.uid())))",
        "(user_id <> auth.uid())",
        None,
    ],
)
def test_what_cannot_be_proved(qual: str | None) -> None:
    assert requirements(qual) is None


SECURED = frozenset({TABLE})


def test_a_partitioned_channel_passes_an_own_rows_policy_and_an_open_one_does_not() -> None:
    own = [policy("(user_id = auth.uid())")]
    mine = channel(partition=Partition("user_id", "sub"))
    assert rls_problems([mine], SECURED, own) == []
    [line] = rls_problems([channel()], SECURED, own)
    assert line.startswith("n.toml: channel 'notes': row-level security on public.notes: ")
    assert "partition must be column 'user_id' by claim 'sub'" in line
    assert 'rls = "trust"' in line  # the fix, in the same line
    other_claim = channel(partition=Partition("user_id", "app_metadata.uid"))
    assert rls_problems([other_claim], SECURED, own) != []


def test_scopes_true_and_any_permissive_policy_suffice() -> None:
    scoped = [policy("rtgw_has_scope('orders:read'::text)"), policy("(owner = auth.uid())")]
    assert rls_problems([channel(scopes=frozenset({"orders:read"}))], SECURED, scoped) == []
    assert rls_problems([channel(partition=Partition("owner", "sub"))], SECURED, scoped) == []
    assert rls_problems([channel()], SECURED, scoped) != []
    assert rls_problems([channel()], SECURED, [policy("true", roles=("public",))]) == []


def test_restrictive_policies_must_all_hold() -> None:
    policies = [policy("true"), policy("(owner = auth.uid())", permissive=False, name="r")]
    assert "restrictive policy 'r'" in rls_problems([channel()], SECURED, policies)[0]
    assert rls_problems([channel(partition=Partition("owner", "sub"))], SECURED, policies) == []


def test_policies_for_other_roles_or_commands_do_not_count() -> None:
    others = [policy("true", roles=("service_role",)), policy("true", command="INSERT")]
    [line] = rls_problems([channel()], SECURED, others)
    assert "no SELECT policy for authenticated" in line


def test_unprovable_policies_refuse_unless_the_channel_trusts_them() -> None:
    members = [policy("(EXISTS ( SELECT 1 FROM members m WHERE (m.user_id = auth.uid())))")]
    [line] = rls_problems([channel()], SECURED, members)
    assert "is not a form rtgw can prove" in line
    assert rls_problems([channel(trust_rls=True)], SECURED, members) == []


def test_tables_without_row_security_and_looked_up_tables() -> None:
    assert rls_problems([channel()], frozenset(), [policy("(owner = auth.uid())")]) == []
    lookup = Lookup("customer", "public", "customers", (("customer_id", "id"),), ("name",))
    orders = channel(name="orders", table="orders", lookups=(lookup,))
    customers = [policy("rtgw_has_scope('orders:read'::text)", table=("public", "customers"))]
    secured = frozenset({("public", "customers")})
    [line] = rls_problems([orders], secured, customers)
    assert "public.customers" in line and "scopes must include 'orders:read'" in line
    allowed = channel(name="orders", table="orders", lookups=(lookup,),
                      scopes=frozenset({"orders:read"}))
    assert rls_problems([allowed], secured, customers) == []
