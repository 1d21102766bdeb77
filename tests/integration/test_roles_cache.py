"""gateway.roles.Roles over gateway/sources/postgres/roles.py against a real Postgres: lookups of
the same moment share one query, a cached user is not queried again, a change the stream
brings while the query runs is applied on top of what it read, a database that cannot answer
refuses the lookup with ``auth_unavailable``, and after a gap the held users are read again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

from gateway.auth import Claims
from gateway.changes import RoleChange
from gateway.channels import load_channels
from gateway.errors import GatewayError
from gateway.roles import Roles
from gateway.sources.embedded import EmbeddedPostgres
from gateway.sources.postgres.roles import PostgresRoles
from tests.conftest import REPO

CONFIG = load_channels(REPO / "channels").roles
assert CONFIG is not None


def claims(sub: str) -> Claims:
    return Claims({"sub": sub}, sub, frozenset(), 0.0, None)


def granted(db: psycopg.Connection[Any], *roles: str) -> str:
    user = str(uuid.uuid4())
    for role in roles:
        db.execute("INSERT INTO public.user_roles VALUES (%s, %s)", (user, role))
    return user


@pytest.fixture
async def roles(pg: EmbeddedPostgres) -> AsyncIterator[Roles]:
    assert CONFIG is not None
    made = Roles(CONFIG, PostgresRoles(pg.dsn, CONFIG))
    try:
        yield made
    finally:
        await made.close()


async def test_lookups_of_the_same_moment_share_one_query_then_the_cache_answers(
    roles: Roles, db: psycopg.Connection[Any]
) -> None:
    admin, support, nobody = granted(db, "admin", "support"), granted(db, "support"), granted(db)
    users = [admin, support, nobody, admin, "not-a-uuid"]
    found = await asyncio.gather(*(roles.extend(claims(user)) for user in users))
    assert [held.roles for held in found] == [
        {"admin", "support"}, {"support"}, set(), {"admin", "support"}, set()
    ]
    assert found[0].all_scopes == {"orders:read", "orders:write"}
    assert (roles.stats.lookups, roles.stats.queries, roles.stats.hits) == (5, 1, 0)
    assert (await roles.extend(claims(support))).roles == {"support"}
    assert (roles.stats.queries, roles.stats.hits) == (1, 1)


async def test_a_change_streamed_while_the_query_runs_is_applied_on_top_of_it(
    roles: Roles, db: psycopg.Connection[Any]
) -> None:
    user = granted(db, "admin")
    lookup = asyncio.create_task(roles.extend(claims(user)))
    while not roles._fetching:  # noqa: ASYNC110 - until the query is sent, not yet answered
        await asyncio.sleep(0)
    # What the stream would bring now: changes the query may or may not have seen.
    roles.apply([RoleChange(user, "admin", False), RoleChange(user, "support", True)])
    assert (await lookup).roles == {"support"}
    assert (await roles.extend(claims(user))).roles == {"support"}


async def test_a_database_that_cannot_answer_refuses_the_lookup(pg: EmbeddedPostgres) -> None:
    assert CONFIG is not None
    dsn = pg.dsn_for("no_such_database")
    roles = Roles(CONFIG, PostgresRoles(dsn, CONFIG))
    try:
        with pytest.raises(GatewayError) as refused:
            await roles.extend(claims(str(uuid.uuid4())))
        assert refused.value.code == "auth_unavailable"
    finally:
        await roles.close()


class Holder:
    """Records the updates ``Roles`` hands a connection holding a user's claims."""

    def __init__(self) -> None:
        self.updates: list[Callable[[Claims], Claims]] = []

    def reauthorize(self, update: Callable[[Claims], Claims]) -> None:
        self.updates.append(update)


async def test_after_a_gap_the_roles_of_held_users_are_read_again(
    roles: Roles, db: psycopg.Connection[Any]
) -> None:
    user = granted(db, "admin")
    held = await roles.extend(claims(user))
    holder = Holder()
    roles.hold(held, holder)
    # A revocation the stream lost: the table changed, no change reached ``apply``.
    db.execute("UPDATE public.user_roles SET role = 'support' WHERE user_id = %s", (user,))
    assert (await roles.extend(claims(user))).roles == {"admin"}  # the cache still says so

    roles.forget()
    assert len(roles) == 0
    await asyncio.gather(*roles._rereads)
    [update] = holder.updates
    assert update(held).roles == {"support"} and update(held).role_scopes == {"orders:read"}
    assert (await roles.extend(claims(user))).roles == {"support"}
