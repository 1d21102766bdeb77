"""Channel definitions: ``channels/*.toml``, validated at start.

A channel grants a table's changes to tokens holding its scopes. A partition binds a column to
a claim, so a subscriber only sees rows whose column equals their claim (``user_id`` = ``sub``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from gateway.auth import Claims
from gateway.changes import Change, Op, RoleChange, Row
from gateway.errors import ConfigError, GatewayError
from gateway.filters import Filter, parse_filter

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
_KEYS = frozenset(
    {"table", "operations", "scopes", "columns", "filterable", "partition", "enrich", "on_error",
     "rls", "tasks"}
)
_LOOKUP_KEYS = frozenset({"table", "key", "columns"})
_ENRICHER_KEYS = frozenset({"enricher", "timeout_ms"})
_ROLES_KEYS = frozenset({"table", "user_column", "role_column", "claim", "scopes"})
_DOTTED = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_TASK_KEYS = frozenset({"operations", "filter", "job", "webhook"})
_NO_SCOPES: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Partition:
    column: str
    claim: str  # a dotted claim path, e.g. "sub" or "app_metadata.team_id"


@dataclass(frozen=True, slots=True)
class Lookup:
    """``[channels.<channel>.enrich.<name>]``: adds ``<name>: {columns}`` to the channel's rows,
    from the row of ``schema.table`` whose ``key`` columns equal the row's (``null`` when
    there is none)."""

    name: str
    schema: str
    table: str
    key: tuple[tuple[str, str], ...]  # (this row's column, the looked-up table's column)
    columns: tuple[str, ...]

    def key_of(self, row: Row | None) -> tuple[Any, ...] | None:
        """The looked-up key for ``row``; None when the row lacks a key column (or it is null)."""
        if row is None:
            return None
        values = tuple([row.get(mine) for mine, _ in self.key])  # per row: no generators
        return None if None in values else values

    def key_in_table(self, row: Row | None) -> tuple[Any, ...] | None:
        """The key a row of the looked-up table itself has."""
        if row is None:
            return None
        values = tuple([row.get(theirs) for _, theirs in self.key])
        return None if None in values else values


@dataclass(frozen=True, slots=True)
class CustomEnricher:
    """``[channels.<channel>.enrich.<name>]`` with ``enricher = "module:function"``: adds
    ``<name>: <what it returns>``; called as ``await function(change, db)`` (``db``: a
    read-only connection pool) for at most ``timeout_ms``."""

    name: str
    path: str
    timeout_ms: int = 200


@dataclass(frozen=True, slots=True)
class Task:
    """``[channels.<channel>.tasks.<name>]``: background work for each change of the channel
    whose operation is one of ``operations`` and whose row passes ``filter``: an RQ job
    (``job``, a ``module:function`` path, called with the change as JSON) or a signed webhook
    (``webhook``, an http(s) URL). Exactly one of the two is set."""

    name: str  # "<channel>.<task>"
    operations: frozenset[Op]
    filter: Filter | None
    job: str | None = None
    webhook: str | None = None

    @property
    def short_name(self) -> str:
        """The name in the channel's ``tasks`` table."""
        return self.name.partition(".")[2]


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    schema: str
    table: str
    operations: frozenset[Op]
    scopes: frozenset[str]
    columns: tuple[str, ...] | None  # the projection; None: every column
    filterable: frozenset[str] | None  # None: every column may be filtered
    partition: Partition | None
    source: str  # "file.toml", for messages
    lookups: tuple[Lookup, ...] = ()
    enrichers: tuple[CustomEnricher, ...] = ()
    drop_unenriched: bool = False  # on_error = "drop": hold back an event an enricher failed
    trust_rls: bool = False  # rls = "trust": row-level security it cannot prove is accepted
    tasks: tuple[Task, ...] = ()

    def topic_base(self, claims: Claims) -> str:
        """The topic this token may read in the channel. Raises ``GatewayError`` if none."""
        missing = self.scopes - claims.all_scopes
        if missing:
            raise GatewayError(
                "forbidden",
                f"channel {self.name!r} requires scope {' '.join(sorted(missing))!r}",
            )
        if self.partition is None:
            return self.name
        value = claims.get_path(self.partition.claim)
        if value is None or isinstance(value, dict | list):
            raise GatewayError(
                "partition_claim_missing",
                f"channel {self.name!r} needs claim {self.partition.claim!r} in the token",
            )
        return partition_topic(self.name, self.partition.column, value)

    def topic_base_for(self, row: Row | None) -> str | None:
        """The topic a row belongs to, or None when the partition value is unknown."""
        if self.partition is None:
            return self.name
        if row is None:
            return None
        value = row.get(self.partition.column)
        if value is None:
            return None
        return partition_topic(self.name, self.partition.column, value)

    def filter_for(self, filter_text: str | None) -> Filter | None:
        """The parsed filter, if this channel allows it. Raises ``GatewayError("bad_filter")``."""
        if filter_text is None:
            return None
        row_filter = parse_filter(filter_text)
        allowed = self.filterable
        if allowed is None:
            return row_filter
        bad = sorted(row_filter.columns - allowed)
        if bad:
            raise GatewayError(
                "bad_filter",
                f"channel {self.name!r} cannot filter on {', '.join(bad)}; "
                f"filterable: {', '.join(sorted(allowed)) or 'none'}",
            )
        return row_filter

    def project(self, row: Row | None) -> Row | None:
        """``row`` with only the channel's columns (``row`` itself when it has just those, in
        their order; callers never change it): nothing else leaves the gateway."""
        keep = self.columns
        if keep is None or row is None or tuple(row) == keep:  # the row is already that
            return row
        return {k: row[k] for k in keep if k in row}


@dataclass(frozen=True, slots=True)
class RolesConfig:
    """``[roles]``: scopes from the database. A user (the token's ``claim``) holds the roles
    of the rows of ``schema.table`` whose ``user_column`` is theirs; each role grants
    ``scopes[role]`` on top of the token's scopes."""

    schema: str
    table: str
    user_column: str
    role_column: str
    claim: str
    scopes: Mapping[str, frozenset[str]]
    source: str  # "file.toml", for messages

    def user_of(self, claims: Claims) -> str | None:
        """The user the claims name (the roles table's ``user_column`` value), or None."""
        value = claims.get_path(self.claim)
        return None if value is None or isinstance(value, dict | list) else str(value)

    def scopes_of(self, roles: Iterable[str]) -> frozenset[str]:
        scopes = frozenset(scope for role in roles for scope in self.scopes.get(role, ()))
        return scopes or _NO_SCOPES  # one empty set shared, not one per connection

    def changes(self, change: Change) -> tuple[RoleChange, ...]:
        """What a change to the roles table grants and revokes, in order (an UPDATE that
        moves a row revokes the old pair, then grants the new one)."""
        if change.op is Op.TRUNCATE:
            return (RoleChange(None, None, False),)
        old, new = self._pair(change.old), self._pair(change.new)
        found = []
        if old is not None and old != new:
            found.append(RoleChange(*old, granted=False))
        if new is not None:
            found.append(RoleChange(*new, granted=True))
        return tuple(found)

    def _pair(self, row: Row | None) -> tuple[str, str] | None:
        if row is None:
            return None
        user, role = row.get(self.user_column), row.get(self.role_column)
        return None if user is None or role is None else (str(user), str(role))


_SAFE = "@.-_~"
_NEEDS_QUOTING = re.compile(r"[^A-Za-z0-9@.\-_~]")


def partition_topic(channel: str, column: str, value: object) -> str:
    """``channel:column=value`` with the value percent-encoded, so no claim value can forge
    another topic's key (topic keys continue with ``?filter``)."""
    text = str(value)
    if _NEEDS_QUOTING.search(text) is not None:  # most values (ids, uuids) need none
        text = quote(text, safe=_SAFE)
    return f"{channel}:{column}={text}"


class ChannelSet:
    """All channels, indexed by name and by table."""

    def __init__(self, channels: Iterable[Channel], roles: RolesConfig | None = None) -> None:
        self.roles = roles
        self.by_name: dict[str, Channel] = {}
        self.by_table: dict[tuple[str, str], list[Channel]] = {}
        self.lookups_by_table: dict[tuple[str, str], list[Lookup]] = {}
        for channel in channels:
            self.by_name[channel.name] = channel
            self.by_table.setdefault((channel.schema, channel.table), []).append(channel)
            for lookup in channel.lookups:
                self.lookups_by_table.setdefault((lookup.schema, lookup.table), []).append(lookup)

    def __iter__(self) -> Any:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    @property
    def tables(self) -> list[tuple[str, str]]:
        """The tables whose changes the gateway needs: the channels', the looked-up ones and
        the roles table."""
        roles = set() if self.roles is None else {(self.roles.schema, self.roles.table)}
        return sorted(set(self.by_table) | set(self.lookups_by_table) | roles)

    def get(self, name: str) -> Channel:
        try:
            return self.by_name[name]
        except KeyError:
            raise GatewayError("unknown_channel", f"no channel named {name!r}") from None

    def grant(self, name: str, claims: Claims, filter_text: str | None) -> Grant:
        """What a token may read of a channel, narrowed by a filter. Raises ``GatewayError``
        (``unknown_channel``, ``forbidden``, ``partition_claim_missing``, ``bad_filter``)."""
        channel = self.get(name)
        return Grant(channel, channel.topic_base(claims), channel.filter_for(filter_text))

    def readable(self, schema: str, table: str, claims: Claims) -> list[tuple[Channel, str]]:
        """A channel and topic base for each table that ``schema``.``table`` names (``*`` for
        either means every covered table), for a client that subscribes by table: the first
        channel (by name) covering the table that grants it to these claims. With a wildcard,
        tables this token may not read are left out; otherwise a refusal raises
        (``unknown_table``, ``forbidden``, ``partition_claim_missing``)."""
        covered = [
            channels
            for (each_schema, each_table), channels in self.by_table.items()
            if schema in ("*", each_schema) and table in ("*", each_table)
        ]
        if not covered:
            raise GatewayError("unknown_table", f"no channel covers {schema}.{table}")
        grants, refusal = [], None
        for channels in covered:
            try:
                grants.append(_first_grant(channels, claims))
            except GatewayError as exc:
                refusal = refusal or exc
        if refusal is not None and not ("*" in (schema, table) and grants):
            raise refusal
        return grants


def _first_grant(channels: Iterable[Channel], claims: Claims) -> tuple[Channel, str]:
    """The first channel (by name) that grants its table to these claims, and its topic base."""
    refusal: GatewayError | None = None
    for channel in sorted(channels, key=lambda c: c.name):
        try:
            return channel, channel.topic_base(claims)
        except GatewayError as exc:
            refusal = refusal or exc
    assert refusal is not None, "a table is covered by at least one channel"
    raise refusal


@dataclass(frozen=True, slots=True)
class Grant:
    channel: Channel
    base: str  # the topic base: the channel, narrowed to the token's partition
    filter: Filter | None


def load_channels(folder: Path) -> ChannelSet:
    """Load every ``*.toml`` in ``folder``. Raises ``ConfigError`` naming file, channel, key."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: channels folder not found (set RTGW_CHANNELS)")
    channels: list[Channel] = []
    seen: dict[str, str] = {}
    roles: RolesConfig | None = None
    for path in sorted(folder.glob("*.toml")):
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path.name}: not valid TOML: {exc}") from None
        unknown_top = set(document) - {"channels", "roles"}
        if unknown_top:
            raise ConfigError(f"{path.name}: unknown top-level key {sorted(unknown_top)[0]!r}")
        if "roles" in document:
            if roles is not None:
                raise ConfigError(
                    f"{path.name}: [roles] is already defined in {roles.source} (at most one)"
                )
            roles = _parse_roles(path.name, document["roles"])
        entries = document.get("channels", {})
        if not isinstance(entries, dict):
            raise ConfigError(f"{path.name}: key 'channels' must be a table")
        for name, raw in entries.items():
            if name in seen:
                raise ConfigError(
                    f"{path.name}: channel {name!r} is already defined in {seen[name]}"
                )
            seen[name] = path.name
            channels.append(_parse_channel(path.name, name, raw))
    if not channels:
        raise ConfigError(f"{folder}: no channels defined (add a *.toml file)")
    return ChannelSet(channels, roles)


def _parse_channel(file: str, name: str, raw: object) -> Channel:
    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{file}: channel {name!r}: key {key!r}: {problem}")

    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"{file}: channel {name!r}: name must match {NAME_PATTERN.pattern}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: channel {name!r}: must be a table")
    unknown = set(raw) - _KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise fail(key, f"unknown key (allowed: {', '.join(sorted(_KEYS))})")

    schema, table_name = _table(raw.get("table"), lambda p: fail("table", p))

    operations_raw = raw.get("operations", ["INSERT", "UPDATE", "DELETE", "TRUNCATE"])
    operations = _strings(operations_raw, lambda p: fail("operations", p))
    try:
        ops = frozenset(Op(o.upper()) for o in operations)
    except ValueError:
        raise fail("operations", f"allowed: {', '.join(o.value for o in Op)}") from None
    if not ops:
        raise fail("operations", "must list at least one operation")

    scopes = frozenset(_strings(raw.get("scopes", []), lambda p: fail("scopes", p)))

    columns: tuple[str, ...] | None = None
    if "columns" in raw:
        columns = tuple(_identifiers(raw["columns"], lambda p: fail("columns", p)))
        if not columns:
            raise fail("columns", "must list at least one column (omit it for all columns)")

    filterable: frozenset[str] | None = frozenset(columns) if columns is not None else None
    if "filterable" in raw:
        filterable = frozenset(_identifiers(raw["filterable"], lambda p: fail("filterable", p)))
        if columns is not None and not filterable <= set(columns):
            extra = sorted(filterable - set(columns))
            raise fail("filterable", f"{', '.join(extra)} not in 'columns'")

    partition = None
    if "partition" in raw:
        partition = _parse_partition(raw["partition"], lambda p: fail("partition", p))
        if columns is not None and partition.column not in columns:
            raise fail("partition", f"column {partition.column!r} must be in 'columns'")

    lookups: list[Lookup] = []
    enrichers: list[CustomEnricher] = []
    enrich = raw.get("enrich", {})
    if not isinstance(enrich, dict):
        raise fail("enrich", "must be a table of lookups ([channels.<name>.enrich.<lookup>])")
    for lookup_name, lookup in enrich.items():
        parsed = _parse_lookup(lookup_name, lookup, columns, fail)
        if isinstance(parsed, Lookup):
            lookups.append(parsed)
        else:
            enrichers.append(parsed)
    on_error = raw.get("on_error", "mark")
    if on_error not in ("mark", "drop"):
        raise fail("on_error", "'mark' (the event goes out marked) or 'drop' (held back)")
    rls = raw.get("rls", "check")
    if rls not in ("check", "trust"):
        raise fail("rls", "'check' (the default: policies must be proved) or 'trust'")

    tasks = raw.get("tasks", {})
    if not isinstance(tasks, dict):
        raise fail("tasks", "must be a table of tasks ([channels.<name>.tasks.<task>])")
    parsed_tasks = tuple(
        _parse_task(name, task_name, task, ops, fail)
        for task_name, task in tasks.items()
    )

    return Channel(
        name=name,
        schema=schema,
        table=table_name,
        operations=ops,
        scopes=scopes,
        columns=columns,
        filterable=filterable,
        partition=partition,
        source=file,
        lookups=tuple(lookups),
        enrichers=tuple(enrichers),
        drop_unenriched=on_error == "drop",
        trust_rls=rls == "trust",
        tasks=parsed_tasks,
    )


def _parse_roles(file: str, raw: object) -> RolesConfig:
    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{file}: [roles]: key {key!r}: {problem}")

    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: [roles] must be a table")
    unknown = set(raw) - _ROLES_KEYS
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown key (allowed: {', '.join(sorted(_ROLES_KEYS))})")
    schema, table = _table(raw.get("table"), lambda p: fail("table", p))
    columns = []
    for key in ("user_column", "role_column"):
        column = raw.get(key)
        if not isinstance(column, str) or not _IDENTIFIER.fullmatch(column):
            raise fail(key, "required, a column name")
        columns.append(column)
    if columns[0] == columns[1]:
        raise fail("role_column", "must differ from 'user_column'")
    claim = raw.get("claim")
    if not isinstance(claim, str) or not claim:
        raise fail("claim", "required, the claim path naming the user, such as 'sub'")
    scopes = raw.get("scopes")
    if not isinstance(scopes, dict):
        raise fail("scopes", "required, a table of role = [scopes] ([roles.scopes])")
    granted = {}
    for role, listed in scopes.items():
        granted[role] = frozenset(_strings(listed, lambda p, r=role: fail(f"scopes.{r}", p)))
    return RolesConfig(schema, table, columns[0], columns[1], claim, granted, file)


def _table(value: object, fail: Any) -> tuple[str, str]:
    if not isinstance(value, str):
        raise fail("required, a string like 'public.orders'")
    schema, _, table = value.rpartition(".")
    schema = schema or "public"
    if not _IDENTIFIER.fullmatch(schema) or not _IDENTIFIER.fullmatch(table):
        raise fail(f"{value!r} is not schema.table")
    return schema, table


def _parse_lookup(
    name: str, raw: object, columns: tuple[str, ...] | None, fail: Any
) -> Lookup | CustomEnricher:
    key_name = f"enrich.{name}"

    def problem(key: str, text: str) -> ConfigError:
        return fail(f"{key_name}.{key}" if key else key_name, text)  # type: ignore[no-any-return]

    if not _IDENTIFIER.fullmatch(name):
        raise problem("", f"{name!r} is not a name for a field (letters, digits, _)")
    if columns is not None and name in columns:
        raise problem("", f"{name!r} is already a column of the channel")
    if not isinstance(raw, dict):
        raise problem("", "must be a table with 'table', 'key' and 'columns'")
    if "enricher" in raw:
        return _parse_enricher(name, raw, problem)
    unknown = set(raw) - _LOOKUP_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise problem(key, f"unknown key (allowed: {', '.join(sorted(_LOOKUP_KEYS))})")
    schema, table = _table(raw.get("table"), lambda p: problem("table", p))
    key = raw.get("key")
    if not isinstance(key, dict) or not key:
        raise problem("key", "required, a table like { customer_id = \"id\" }")
    for mine, theirs in key.items():
        for column in (mine, theirs):
            if not isinstance(column, str) or not _IDENTIFIER.fullmatch(column):
                raise problem("key", f"{column!r} is not a column name")
    if "columns" not in raw:
        raise problem("columns", "required: the looked-up columns to add")
    looked_up = tuple(_identifiers(raw["columns"], lambda p: problem("columns", p)))
    if not looked_up:
        raise problem("columns", "must list at least one column")
    return Lookup(name, schema, table, tuple(key.items()), looked_up)


def _strings(value: object, fail: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise fail("must be a list of non-empty strings")
    return list(value)


def _identifiers(value: object, fail: Any) -> list[str]:
    names = _strings(value, fail)
    for item in names:
        if not _IDENTIFIER.fullmatch(item):
            raise fail(f"{item!r} is not a column name")
    return names


def _parse_partition(raw: object, fail: Any) -> Partition:
    if not isinstance(raw, Mapping) or set(raw) != {"column", "claim"}:
        raise fail("must be a table with exactly 'column' and 'claim'")
    column, claim = raw["column"], raw["claim"]
    if not isinstance(column, str) or not _IDENTIFIER.fullmatch(column):
        raise fail(f"column {column!r} is not a column name")
    if not isinstance(claim, str) or not claim:
        raise fail("claim must be a claim path such as 'sub'")
    return Partition(column=column, claim=claim)


def _parse_enricher(name: str, raw: dict[str, Any], problem: Any) -> CustomEnricher:
    unknown = set(raw) - _ENRICHER_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise problem(key, f"unknown key (allowed: {', '.join(sorted(_ENRICHER_KEYS))})")
    path = raw["enricher"]
    if not isinstance(path, str) or not _DOTTED.fullmatch(path):
        raise problem("enricher", "a dotted path like 'myapp.enrich:add_avatar'")
    timeout_ms = raw.get("timeout_ms", 200)
    if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or not (
        0 < timeout_ms <= 60_000
    ):
        raise problem("timeout_ms", "milliseconds, from 1 to 60000")
    return CustomEnricher(name, path, timeout_ms)


def _parse_task(
    channel: str, name: str, raw: object, channel_ops: frozenset[Op], fail: Any
) -> Task:
    """A task; its filter may name any column of the table (it is the operator's, not a
    client's), and is tested on the row as it is in the database, before the projection."""
    def problem(key: str, text: str) -> ConfigError:
        return fail(f"tasks.{name}.{key}" if key else f"tasks.{name}", text)  # type: ignore[no-any-return]

    if not NAME_PATTERN.fullmatch(name):
        raise problem("", f"the task's name must match {NAME_PATTERN.pattern}")
    if not isinstance(raw, dict):
        raise problem("", "must be a table with 'operations', 'filter' and 'job' or 'webhook'")
    unknown = set(raw) - _TASK_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise problem(key, f"unknown key (allowed: {', '.join(sorted(_TASK_KEYS))})")
    ops = channel_ops
    if "operations" in raw:
        names = _strings(raw["operations"], lambda p: problem("operations", p))
        try:
            ops = frozenset(Op(o.upper()) for o in names)
        except ValueError:
            raise problem("operations", f"allowed: {', '.join(o.value for o in Op)}") from None
        if not ops:
            raise problem("operations", "must list at least one operation")
        if not ops <= channel_ops:
            extra = ", ".join(sorted(op.value for op in ops - channel_ops))
            raise problem("operations", f"{extra} not in the channel's operations")
    row_filter = None
    if "filter" in raw:
        text = raw["filter"]
        if not isinstance(text, str):
            raise problem("filter", "a filter like 'status=eq.paid'")
        try:
            row_filter = parse_filter(text)
        except GatewayError as exc:
            raise problem("filter", exc.message) from None
        if Op.TRUNCATE in ops:
            raise problem(
                "filter", "cannot apply to TRUNCATE (it has no row): list 'operations' without it"
            )
    if ("job" in raw) == ("webhook" in raw):
        raise problem("", "needs exactly one of 'job' (module:function) or 'webhook' (a URL)")
    job, webhook = raw.get("job"), raw.get("webhook")
    if job is not None and (not isinstance(job, str) or not _DOTTED.fullmatch(job)):
        raise problem("job", "a dotted path like 'myapp.jobs:send_receipt'")
    if webhook is not None:
        _check_webhook_url(webhook, lambda p: problem("webhook", p))
    return Task(f"{channel}.{name}", ops, row_filter, job=job, webhook=webhook)


def _check_webhook_url(url: object, fail: Any) -> None:
    if not isinstance(url, str):
        raise fail("a URL like 'https://partner.example/hooks/orders'")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise fail(f"{url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail(f"{url!r} must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise fail("must not carry credentials (the signature authenticates the sender)")
    if parts.fragment:
        raise fail("must not have a #fragment")
