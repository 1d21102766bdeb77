"""[roles]: its configuration, what a change to the roles table grants and revokes, and how
``Roles.apply`` updates the cache and the connections holding a user's claims (the parts that
need no event loop; the lookups run against Postgres in tests/integration/test_roles*.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import Claims
from gateway.changes import Change, ChangeId, Op, RoleChange
from gateway.channels import RolesConfig, load_channels
from gateway.errors import ConfigError
from gateway.roles import Roles
from gateway.router import Router

CHANNELS = Path(__file__).resolve().parents[2] / "channels"
ROLES = load_channels(CHANNELS).roles
CHANNEL = '[channels.things]\ntable = "public.things"\n'
VALID = """
[roles]
table = "public.user_roles"
user_column = "user_id"
role_column = "role"
claim = "app_metadata.user"
[roles.scopes]
support = ["orders:read"]
"""


def roles_error(tmp_path: Path, text: str) -> str:
    (tmp_path / "roles.toml").write_text(text + CHANNEL, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_channels(tmp_path)
    return str(caught.value)


def test_the_demo_declares_roles_on_user_roles() -> None:
    assert ROLES is not None
    assert (ROLES.schema, ROLES.table, ROLES.user_column, ROLES.role_column, ROLES.claim) == (
        "public", "user_roles", "user_id", "role", "sub"
    )
    assert ROLES.scopes_of({"support", "admin"}) == {"orders:read", "orders:write"}
    assert ("public", "user_roles") in load_channels(CHANNELS).tables


def test_roles_load_from_any_file_and_name_the_user_by_a_claim_path(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(CHANNEL, encoding="utf-8")
    (tmp_path / "b.toml").write_text(VALID, encoding="utf-8")
    roles = load_channels(tmp_path).roles
    assert roles is not None and roles.source == "b.toml"
    claims = Claims({"app_metadata": {"user": 7}}, None, frozenset(), 0.0, None)
    assert roles.user_of(claims) == "7"
    assert roles.user_of(Claims({}, None, frozenset(), 0.0, None)) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[roles]\nuser_column='u'\nrole_column='r'\nclaim='sub'\n[roles.scopes]\n",
         "roles.toml: [roles]: key 'table': required"),
        (VALID.replace('role_column = "role"', 'role_column = "user_id"'),
         "roles.toml: [roles]: key 'role_column': must differ from 'user_column'"),
        (VALID.replace('claim = "app_metadata.user"', ""),
         "roles.toml: [roles]: key 'claim': required"),
        (VALID.replace("[roles.scopes]", "ttl = 3\n[roles.scopes]"),
         "roles.toml: [roles]: key 'ttl': unknown key"),
        (VALID.replace('support = ["orders:read"]', 'support = "orders:read"'),
         "roles.toml: [roles]: key 'scopes.support': must be a list of non-empty strings"),
        (VALID.replace("[roles.scopes]\nsupport = [\"orders:read\"]", ""),
         "roles.toml: [roles]: key 'scopes': required"),
        ("roles = 3\n", "roles.toml: [roles] must be a table"),
    ],
)
def test_a_bad_roles_table_names_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    assert roles_error(tmp_path, text).startswith(message)


def test_at_most_one_roles_table_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(VALID, encoding="utf-8")
    assert roles_error(tmp_path, VALID) == (
        "roles.toml: [roles] is already defined in a.toml (at most one)"
    )


def role_change(op: Op, new: dict[str, Any] | None = None,
                old: dict[str, Any] | None = None) -> Change:
    return Change(ChangeId(0x2000, 0), "public", "user_roles", op, 0, (), new, old)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (role_change(Op.INSERT, {"user_id": "u", "role": "admin"}),
         (RoleChange("u", "admin", True),)),
        (role_change(Op.DELETE, old={"user_id": "u", "role": "admin"}),
         (RoleChange("u", "admin", False),)),
        (role_change(Op.UPDATE, {"user_id": "u", "role": "support"},
                     {"user_id": "u", "role": "admin"}),
         (RoleChange("u", "admin", False), RoleChange("u", "support", True))),
        (role_change(Op.UPDATE, {"user_id": "u", "role": "admin"}),
         (RoleChange("u", "admin", True),)),
        (role_change(Op.TRUNCATE), (RoleChange(None, None, False),)),
    ],
)
def test_a_change_to_the_roles_table_grants_and_revokes_in_order(
    change: Change, expected: tuple[RoleChange, ...]
) -> None:
    assert ROLES is not None
    assert ROLES.changes(change) == expected


class RecordingBus:
    def __init__(self) -> None:
        self.published: list[Any] = []

    async def publish(self, batch: Any) -> None:
        self.published.extend(batch)


def test_the_router_carries_role_changes_on_the_publication() -> None:
    router = Router(load_channels(CHANNELS), RecordingBus())  # type: ignore[arg-type]
    publication = router.route(role_change(Op.DELETE, old={"user_id": "u", "role": "admin"}))
    assert publication.roles == (RoleChange("u", "admin", False),)
    assert publication.targets == ()


class FakeStore:
    """A fake ``RoleStore``: the cache is filled by ``Roles._put`` in these tests."""

    async def fetch(self, users: Any) -> dict[str, frozenset[str]]:
        raise AssertionError("not queried in unit tests")

    async def close(self) -> None:
        return None


class Holder:
    def __init__(self) -> None:
        self.updates: list[Callable[[Claims], Claims]] = []

    def reauthorize(self, update: Callable[[Claims], Claims]) -> None:
        self.updates.append(update)


def user_claims(sub: str, *roles: str) -> Claims:
    assert ROLES is not None
    held = frozenset(roles)
    return Claims({"sub": sub}, sub, frozenset(), 0.0, None).with_roles(
        held, ROLES.scopes_of(held)
    )


def make_roles(max_entries: int = 10) -> Roles:
    assert ROLES is not None
    return Roles(ROLES, FakeStore(), max_entries)


def test_apply_updates_the_cache_and_tells_the_holders_of_that_user_only() -> None:
    roles = make_roles()
    roles._put("alice", frozenset({"admin", "support"}))
    alice, bob = Holder(), Holder()
    roles.hold(user_claims("alice"), alice)
    roles.hold(user_claims("bob"), bob)
    roles.apply([RoleChange("alice", "admin", False)])
    assert roles._cached("alice") == {"support"}
    assert bob.updates == []
    [update] = alice.updates
    updated = update(user_claims("alice", "admin", "support"))
    assert updated.roles == {"support"} and updated.role_scopes == {"orders:read"}
    unchanged = user_claims("bob", "admin")
    assert update(unchanged) is unchanged
    assert (roles.stats.revocations, roles.stats.grants) == (1, 0)


def test_a_truncate_revokes_every_role_of_every_holder_and_empties_the_cache() -> None:
    roles = make_roles()
    roles._put("alice", frozenset({"admin"}))
    alice = Holder()
    roles.hold(user_claims("alice"), alice)
    roles.apply([RoleChange(None, None, False), RoleChange("alice", "support", True)])
    assert len(roles) == 0
    [update] = alice.updates
    assert update(user_claims("alice", "admin")).roles == {"support"}


def test_a_released_holder_is_told_nothing_and_the_cache_is_bounded() -> None:
    roles = make_roles(max_entries=2)
    alice = Holder()
    roles.hold(user_claims("alice"), alice)
    roles.release(alice)
    roles.apply([RoleChange("alice", "admin", True)])
    assert alice.updates == []
    for user in ("a", "b", "c"):
        roles._put(user, frozenset())
    assert roles._cached("a") is None and len(roles) == 2


def test_claims_with_roles_add_their_scopes_to_the_tokens() -> None:
    claims = Claims({"sub": "u"}, "u", frozenset({"x"}), 0.0, None)
    assert claims.all_scopes == {"x"}
    assert claims.with_roles(frozenset({"r"}), frozenset({"y"})).all_scopes == {"x", "y"}


def test_a_roles_config_is_a_plain_value() -> None:
    config = RolesConfig("public", "t", "u", "r", "sub", {"a": frozenset({"s"})}, "f.toml")
    assert config.scopes_of(["a", "unknown"]) == {"s"}
