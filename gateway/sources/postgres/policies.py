"""Row-level security that the gateway cannot bypass by mistake: rtgw reads the stream as a
replication role, past every policy, so a channel may show only what the table's ``SELECT``
policies would let its subscribers read.

A channel (or a lookup it makes) on a table with RLS enabled passes when the channel's own
constraints imply the policies that apply to its tokens (role ``authenticated`` or ``public``,
command ``SELECT`` or ``ALL``): at least one permissive policy, and every restrictive one. The
forms recognised, as ``pg_policies.qual`` writes them:

* ``true``: anyone;
* ``auth.uid() = col``, ``col = auth.uid()``, ``(SELECT auth.uid()) = col``: the channel is
  partitioned on ``col`` by the claim ``sub``;
* ``(auth.jwt() ->> 'claim') = col`` (or ``-> 'a' ->> 'b'``, the claim ``a.b``), either side:
  partitioned on ``col`` by that claim;
* ``rtgw_has_scope('s')`` (supabase/migrations' helper): the channel requires the scope ``s``;
* several of these joined by ``AND``.

Anything else cannot be proved: the channel must say ``rls = "trust"`` to run anyway.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.channels import Channel

TOKEN_ROLES = frozenset({"authenticated", "public"})


@dataclass(frozen=True, slots=True)
class Policy:
    table: tuple[str, str]
    name: str
    permissive: bool
    roles: frozenset[str]
    command: str
    qual: str | None

    @property
    def applies(self) -> bool:
        """Whether it governs what the gateway's tokens may read."""
        return self.command in ("SELECT", "ALL") and bool(self.roles & TOKEN_ROLES)


@dataclass(frozen=True, slots=True)
class Partitioned:
    column: str
    claim: str


@dataclass(frozen=True, slots=True)
class Scoped:
    scope: str


Requirement = Partitioned | Scoped

_CAST = re.compile(r"::[a-z_ ]+(\[\])?")
_IDENT = re.compile(r"[a-z_][a-z0-9_$]*")
_UID = re.compile(r"auth\.uid\(\)|select auth\.uid\(\)(?: as uid)?")
_JWT = re.compile(r"auth\.jwt\(\)((?:\s*->\s*'[^']+')*)\s*->>\s*'([^']+)'")
_SCOPE = re.compile(r"(?:public\.)?rtgw_has_scope\('([^']+)'\)")


def requirements(qual: str | None) -> list[Requirement] | None:
    """What a policy's condition asks of a channel (``[]``: nothing), or None when it is not
    one of the forms recognised."""
    if qual is None:
        return None
    found: list[Requirement] = []
    for atom in _split_and(_unwrap(_CAST.sub("", qual.strip().lower()))):
        asked = _atom(_unwrap(atom))
        if asked is None:
            return None
        found += asked
    return found


def _atom(atom: str) -> list[Requirement] | None:
    if atom == "true":
        return []
    scope = _SCOPE.fullmatch(atom)
    if scope is not None:
        return [Scoped(scope.group(1))]
    left, equals, right = atom.partition(" = ")
    if not equals:
        return None
    left, right = _unwrap(left.strip()), _unwrap(right.strip())
    for expression, column in ((left, right), (right, left)):
        claim = _claim(expression)
        if claim is not None and _IDENT.fullmatch(column):
            return [Partitioned(column, claim)]
    return None


def _claim(expression: str) -> str | None:
    """The claim an expression reads from the caller's JWT, or None."""
    if _UID.fullmatch(expression):
        return "sub"
    # ((auth.jwt() -> 'a') ->> 'b'): the grouping parentheses say nothing here
    flat = expression.replace("auth.jwt()", "\0").replace("(", "").replace(")", "")
    jwt = _JWT.fullmatch(flat.replace("\0", "auth.jwt()"))
    if jwt is None:
        return None
    return ".".join([*re.findall(r"'([^']+)'", jwt.group(1)), jwt.group(2)])


def _unwrap(text: str) -> str:
    """``text`` without parentheses around the whole of it."""
    while text.startswith("(") and text.endswith(")") and _closes_at_end(text):
        text = text[1:-1].strip()
    return text


def _closes_at_end(text: str) -> bool:
    depth = 0
    for index, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if depth == 0 and index < len(text) - 1:
            return False
    return True


def _split_and(text: str) -> list[str]:
    parts, depth, start, index = [], 0, 0, 0
    while index < len(text):
        char = text[index]
        depth += (char == "(") - (char == ")")
        if depth == 0 and text.startswith(" and ", index):
            parts.append(text[start:index].strip())
            start = index = index + 5
            continue
        index += 1
    parts.append(text[start:].strip())
    return parts


def _implied(channel: Channel, wanted: Sequence[Requirement]) -> bool:
    for requirement in wanted:
        if isinstance(requirement, Scoped) and requirement.scope not in channel.scopes:
            return False
        if isinstance(requirement, Partitioned) and (
            channel.partition is None
            or (channel.partition.column, channel.partition.claim)
            != (requirement.column, requirement.claim)
        ):
            return False
    return True


def rls_problems(
    channels: Iterable[Channel],
    secured: frozenset[tuple[str, str]],
    policies: Sequence[Policy],
) -> list[str]:
    """One line per channel that shows rows of an RLS table (``secured``: the tables with
    row security on) that the table's policies may not let its subscribers read, with the
    fix. Channels that say ``rls = "trust"`` are taken at their word."""
    problems = []
    for channel in channels:
        if channel.trust_rls:
            continue
        tables = [(channel.schema, channel.table)]
        tables += [(lookup.schema, lookup.table) for lookup in channel.lookups]
        for table in tables:
            if table in secured:
                line = _table_problem(channel, table, [p for p in policies if p.table == table])
                if line is not None:
                    problems.append(line)
    return problems


def _table_problem(
    channel: Channel, table: tuple[str, str], policies: Sequence[Policy]
) -> str | None:
    where = f"{channel.source}: channel {channel.name!r}"
    name = f"{table[0]}.{table[1]}"
    fix = 'or add rls = "trust" to the channel if its scopes and partition are enough'
    applying = [p for p in policies if p.applies]
    for policy in (p for p in applying if not p.permissive):
        wanted = requirements(policy.qual)
        if wanted is None or not _implied(channel, wanted):
            return (f"{where}: row-level security on {name}: restrictive policy "
                    f"{policy.name!r} ({policy.qual}) {_what(wanted)}; {fix}")
    permissive = [p for p in applying if p.permissive]
    if not permissive:
        return (f"{where}: row-level security on {name} lets its subscribers read no rows (no "
                f"SELECT policy for authenticated), yet the channel shows them all; add a "
                f"policy {fix}")
    readings = [(p, requirements(p.qual)) for p in permissive]
    if any(wanted is not None and _implied(channel, wanted) for _, wanted in readings):
        return None
    policy, wanted = readings[0]
    return (f"{where}: row-level security on {name}: policy {policy.name!r} ({policy.qual}) "
            f"{_what(wanted)}; {fix}")


def _what(wanted: Sequence[Requirement] | None) -> str:
    """What the channel must do to match a policy, in words."""
    if wanted is None:
        return "is not a form rtgw can prove"
    asks = []
    for requirement in wanted:
        if isinstance(requirement, Scoped):
            asks.append(f"scopes must include {requirement.scope!r}")
        else:
            asks.append(f"partition must be column {requirement.column!r} by claim "
                        f"{requirement.claim!r}")
    return "needs what the channel does not have: " + " and ".join(asks)
