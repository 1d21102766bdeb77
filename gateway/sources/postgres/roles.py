"""Users' roles from Postgres for ``[roles]`` (gateway/roles.py): one query per batch of users,
on one connection of its own. Users and roles are compared as text, the way the stream carries
them; a user that cannot be a value of the user column (not a uuid, for a uuid column) has no
roles."""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection

import psycopg
from psycopg import sql

from gateway.channels import RolesConfig
from gateway.sources.postgres.lookups import COLUMN_TYPES_QUERY, Connection, ReadConnection

_INTEGER = re.compile(r"-?[0-9]{1,18}")
_INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})


class PostgresRoles:
    """A ``RoleStore`` on ``dsn``."""

    def __init__(self, dsn: str, config: RolesConfig) -> None:
        self._config = config
        self._conn = ReadConnection(dsn)
        self._query: bytes | None = None  # composed once: psycopg then converts it once
        self._user_type = ""

    async def fetch(self, users: Collection[str]) -> dict[str, frozenset[str]]:
        conn = await self._conn.get()
        if self._query is None:
            self._query = await self._prepare(conn)
        keys = [user for user in users if _fits(user, self._user_type)]
        if not keys:
            return {}
        cur = await conn.execute(self._query, (keys,))
        found: dict[str, set[str]] = {}
        for user, role in await cur.fetchall():
            found.setdefault(str(user), set()).add(str(role))
        return {user: frozenset(roles) for user, roles in found.items()}

    async def close(self) -> None:
        await self._conn.close()

    async def _prepare(self, conn: Connection) -> bytes:
        config = self._config
        cur = await conn.execute(COLUMN_TYPES_QUERY, (config.schema, config.table))
        types = {str(name): str(sql_type) for name, _, sql_type in await cur.fetchall()}
        missing = [c for c in (config.user_column, config.role_column) if c not in types]
        if missing:
            raise psycopg.ProgrammingError(
                f"{config.schema}.{config.table} has no column {', '.join(missing)} ([roles])"
            )
        self._user_type = types[config.user_column]
        return sql.SQL("SELECT {user}::text, {role}::text FROM {table} "
                       "WHERE {user} = ANY(%s::{type}[])").format(
            user=sql.Identifier(config.user_column), role=sql.Identifier(config.role_column),
            table=sql.Identifier(config.schema, config.table), type=sql.SQL(self._user_type),
        ).as_bytes(conn)


def _fits(user: str, sql_type: str) -> bool:
    """Whether ``user`` can be cast to the user column's type (others have no roles)."""
    if sql_type == "uuid":
        try:
            return str(uuid.UUID(user)) == user  # as the stream writes it: lower case, dashes
        except ValueError:
            return False
    if sql_type in _INTEGER_TYPES:
        return _INTEGER.fullmatch(user) is not None
    return True
