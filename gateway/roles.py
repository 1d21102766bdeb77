"""Roles from the database (``[roles]``): each user's roles, read once and cached, kept exact by
the stream, and applied live to the connections that hold that user's claims.

* **Lookup.** ``extend`` adds a user's roles (and the scopes they grant) to verified claims.
  A user who is not cached is fetched (``RoleStore.fetch``): the users that connections ask for
  at about the same time go in one query (at most ``BATCH`` users), one query at a time. The
  cache holds at most ``max_entries`` users (the least recently used leave first).
* **The stream.** Changes to the roles table travel with the stream (``Publication.roles``),
  and every node's hub hands them to ``apply`` at their place in it. ``apply`` updates the
  cached users (a user being fetched gets them applied on top of what the query read, so a
  change that raced the query is never lost: each change sets one (user, role) pair, and the
  last one wins), and tells each connection holding an affected user's claims
  (``Holder.reauthorize``), before any later change is delivered: a revocation ends the
  subscriptions the user may no longer read, a grant lets the next subscribe succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.auth import Claims
from gateway.changes import RoleChange
from gateway.channels import RolesConfig
from gateway.errors import GatewayError

BATCH = 500  # users per query
log = logging.getLogger("rtgw.roles")


class RoleStore(Protocol):
    """Where roles come from (gateway/sources/postgres/roles.py)."""

    async def fetch(self, users: Collection[str]) -> dict[str, frozenset[str]]:
        """The roles of each of ``users`` as the database holds them now (a user with none
        may be absent). Raises on failure."""

    async def close(self) -> None:
        """Release connections."""


class Holder(Protocol):
    """A connection holding claims (gateway/connection.py)."""

    def reauthorize(self, update: Callable[[Claims], Claims]) -> None:
        """Replace every claims it holds by ``update(claims)``, now, ending what they no
        longer grant."""


@dataclass(slots=True)
class RoleStats:
    lookups: int = 0  # users whose roles were asked for
    hits: int = 0  # lookups answered from the cache
    queries: int = 0  # queries made
    grants: int = 0  # grants seen in the stream
    revocations: int = 0  # revocations seen in the stream (a TRUNCATE counts once)


class Roles:
    """The ``RoleLookup`` for ``auth.Verifier`` and the stream's roles sink for the hub."""

    def __init__(self, config: RolesConfig, store: RoleStore, max_entries: int = 100_000) -> None:
        self.config = config
        self._store = store
        self._max_entries = max_entries
        self._cache: dict[str, frozenset[str]] = {}
        self._waiting: dict[str, asyncio.Future[None]] = {}  # not queried yet
        # Queried, not answered yet: the future, and the changes the stream brought since.
        self._fetching: dict[str, tuple[asyncio.Future[None], list[RoleChange]]] = {}
        self._fetcher: asyncio.Task[None] | None = None
        self._rereads: set[asyncio.Task[None]] = set()  # after a gap (``forget``)
        self._holders: dict[str, dict[Holder, None]] = {}
        self._held: dict[Holder, tuple[str, ...]] = {}  # a tuple: most hold one user
        self.stats = RoleStats()

    def __len__(self) -> int:
        return len(self._cache)

    # -- lookup ------------------------------------------------------------------------------

    async def extend(self, claims: Claims) -> Claims:
        user = self.config.user_of(claims)
        if user is None:
            return claims
        self.stats.lookups += 1
        roles = self._cached(user)
        if roles is not None:
            self.stats.hits += 1
        while roles is None:  # read the cache once fetched: ``apply`` may have run since
            await asyncio.shield(self._fetch(user))
            roles = self._cached(user)
        return claims.with_roles(roles, self.config.scopes_of(roles))

    def _cached(self, user: str) -> frozenset[str] | None:
        roles = self._cache.pop(user, None)
        if roles is not None:
            self._cache[user] = roles  # the most recently used last
        return roles

    def _fetch(self, user: str) -> asyncio.Future[None]:
        fetching = self._fetching.get(user)
        if fetching is not None:
            return fetching[0]
        future = self._waiting.get(user)
        if future is None:
            future = self._waiting[user] = asyncio.get_running_loop().create_future()
            if self._fetcher is None or self._fetcher.done():
                self._fetcher = asyncio.create_task(self._fetch_all(), name="rtgw-roles")
        return future

    async def _fetch_all(self) -> None:
        await asyncio.sleep(0)  # let the lookups of this moment join the first query
        while self._waiting:
            users = list(self._waiting)[:BATCH]
            for user in users:
                self._fetching[user] = (self._waiting.pop(user), [])
            try:
                found = await self._store.fetch(users)
            except Exception as exc:  # a database error: these lookups fail; later ones retry
                text = str(exc).strip()
                log.warning("roles could not be read from %s.%s: %s", self.config.schema,
                            self.config.table, text.splitlines()[0] if text else repr(exc))
                error = GatewayError("auth_unavailable", "the user's roles could not be read")
                for user in users:
                    future, _ = self._fetching.pop(user)
                    future.set_exception(error)
                    future.exception()  # retrieved: a waiter that left must not log it
                continue
            finally:
                self.stats.queries += 1
            for user in users:
                future, changes = self._fetching.pop(user)
                roles = found.get(user, frozenset())
                for change in changes:
                    roles = change.applied_to(roles)
                self._put(user, roles)
                future.set_result(None)

    def _put(self, user: str, roles: frozenset[str]) -> None:
        cache = self._cache
        cache.pop(user, None)
        cache[user] = roles
        while len(cache) > self._max_entries:
            del cache[next(iter(cache))]  # the least recently used

    # -- holders -------------------------------------------------------------------------------

    def hold(self, claims: Claims, holder: Holder) -> None:
        """``holder`` holds ``claims``: it is told of its user's role changes until
        ``release``."""
        user = self.config.user_of(claims)
        if user is not None:
            self._holders.setdefault(user, {})[holder] = None
            held = self._held.get(holder, ())
            if user not in held:
                self._held[holder] = (*held, user)

    def release(self, holder: Holder) -> None:
        for user in self._held.pop(holder, ()):
            holders = self._holders[user]
            del holders[holder]
            if not holders:
                del self._holders[user]

    # -- the stream ----------------------------------------------------------------------------

    def apply(self, changes: Sequence[RoleChange]) -> None:
        """Role changes at one place in the stream: the cache first, then every connection
        holding an affected user's claims, synchronously (see the module)."""
        affected: set[str] = set()
        for change in changes:
            if change.granted:
                self.stats.grants += 1
            else:
                self.stats.revocations += 1
            if change.user is None:
                self._cache.clear()
                for _, logged in self._fetching.values():
                    logged.append(change)
                affected.update(self._holders)
                continue
            cached = self._cache.get(change.user)
            if cached is not None:
                self._cache[change.user] = change.applied_to(cached)
            fetching = self._fetching.get(change.user)
            if fetching is not None:
                fetching[1].append(change)
            affected.add(change.user)
        for user in affected:
            holders = self._holders.get(user)
            if holders:
                update = self._update(user, changes)
                for holder in list(holders):
                    holder.reauthorize(update)

    def forget(self) -> None:
        """Role changes may have been lost (a gap in the stream): the cache empties, and every
        held user's roles are read again and replace what their connections hold (changes the
        stream brings meanwhile apply on top, as for any lookup)."""
        self._cache.clear()
        users = list(self._holders)
        if users:
            task = asyncio.create_task(self._read_again(users), name="rtgw-roles-again")
            self._rereads.add(task)
            task.add_done_callback(self._rereads.discard)

    async def _read_again(self, users: Sequence[str]) -> None:
        await asyncio.gather(*(asyncio.shield(self._fetch(u)) for u in users),
                             return_exceptions=True)  # a failed read: kept as held, logged
        for user in users:
            roles = self._cache.get(user)
            holders = self._holders.get(user)
            if roles is None or not holders:
                continue
            scopes = self.config.scopes_of(roles)

            def update(claims: Claims, user: str = user, roles: frozenset[str] = roles,
                       scopes: frozenset[str] = scopes) -> Claims:
                if self.config.user_of(claims) != user or claims.roles == roles:
                    return claims
                return claims.with_roles(roles, scopes)

            for holder in list(holders):
                holder.reauthorize(update)

    def _update(self, user: str, changes: Sequence[RoleChange]) -> Callable[[Claims], Claims]:
        mine = [c for c in changes if c.user is None or c.user == user]

        def update(claims: Claims) -> Claims:
            if self.config.user_of(claims) != user:
                return claims
            roles = claims.roles
            for change in mine:
                roles = change.applied_to(roles)
            if roles == claims.roles:
                return claims
            return claims.with_roles(roles, self.config.scopes_of(roles))

        return update

    async def close(self) -> None:
        for task in (self._fetcher, *self._rereads):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._store.close()
