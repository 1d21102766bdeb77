"""Token verification: a JWT in, verified ``Claims`` out, or a ``GatewayError``.

HMAC tokens (HS256, Supabase's legacy JWT secret) are checked with the shared secret. Asymmetric
tokens (RS256, ES256, Supabase's signing keys) are checked with the key whose ``kid`` the token
names, taken from a JWKS document that is fetched (``gateway.jwks``) in a worker thread and
cached. A ``kid`` that is not cached triggers a refetch, at most one per ``jwks_min_refetch_s``;
a cached set older than ``_JWKS_MAX_AGE_S`` is refreshed in the background so that keys withdrawn
from the JWKS stop being trusted.

Tokens are read strictly and HMACs checked with the standard library (``gateway.tokens``);
asymmetric signatures are PyJWT's (``gateway.jwks``), which, with ``cryptography``, is imported
only when a JWKS URL is configured. Claim checks are done here so that every failure maps to
exactly one error code. No message ever contains the token.

Verified tokens are remembered (``TokenCache``), so that the many connections a client opens
with one token (reconnects, tabs, a fleet of services) pay for one signature check: keyed by the
whole token (its signature included), bounded, an entry never outlives the token's ``exp`` (with
the leeway, as checked here) and holds only while the key that verified it is still trusted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from gateway import tokens
from gateway.encoding import loads
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from jwt import PyJWK

__all__ = ["AuthConfig", "Claims", "RoleLookup", "TokenCache", "Verifier"]

logger = logging.getLogger(__name__)

_HMAC_ALGORITHMS = frozenset(tokens.HMAC_ALGORITHMS)
# The asymmetric algorithms PyJWT verifies (a unit test holds the two lists equal).
ASYMMETRIC_ALGORITHMS = frozenset({
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES256K", "ES384", "ES512",
    "ES521", "EdDSA",
})
_JWKS_MAX_AGE_S = 600.0  # a cached key set older than this is refreshed in the background
_SHOWN_CHARS = 40  # attacker-controlled header values are cut to this length in messages


@dataclass(frozen=True, slots=True)
class Claims:
    """A verified token's payload and the parts of it the gateway uses, with the user's roles
    from the database (``[roles]``) and the scopes they grant."""

    raw: Mapping[str, Any]  # the verified payload
    subject: str | None  # "sub"
    scopes: frozenset[str]  # the token's own
    expires_at: float  # "exp" as a Unix timestamp
    role: str | None  # "role" (Supabase: "authenticated", "service_role", "anon")
    roles: frozenset[str] = frozenset()  # the user's roles in the roles table
    role_scopes: frozenset[str] = frozenset()  # the scopes those roles grant

    @property
    def all_scopes(self) -> frozenset[str]:
        """The user's scopes: the token's and their roles'."""
        return self.scopes | self.role_scopes if self.role_scopes else self.scopes

    def get_path(self, path: str) -> Any:
        """The value at a dotted path into ``raw`` (``"app_metadata.tenant"``); None if absent."""
        return _get_path(self.raw, path)

    def with_roles(self, roles: frozenset[str], role_scopes: frozenset[str]) -> Claims:
        """These claims with these roles: ``self`` when they are the ones it has (a user
        without roles, or a cached token's claims extended again)."""
        if roles == self.roles and role_scopes == self.role_scopes:
            return self
        return replace(self, roles=roles, role_scopes=role_scopes)


class RoleLookup(Protocol):
    """Adds the user's roles from the database to verified claims (gateway/roles.py)."""

    async def extend(self, claims: Claims) -> Claims:
        """``claims`` with their user's roles; ``GatewayError`` when they cannot be read."""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    hs256_secret: str | None = None
    jwks_url: str | None = None
    audience: str | None = "authenticated"  # None disables the aud check
    algorithms: tuple[str, ...] = ("HS256", "RS256", "ES256")  # the allow-list
    # Each path holds a space-separated string or a list of strings; the scopes are the union.
    scope_claims: tuple[str, ...] = ("scope", "app_metadata.scopes")
    leeway_s: float = 5.0
    jwks_min_refetch_s: float = 30.0  # at most one fetch per interval triggered by unknown kids
    jwks_timeout_s: float = 5.0
    token_cache_size: int = 10_000  # verified tokens remembered; 0: every token is checked


class Verifier:
    """Verifies tokens against one ``AuthConfig``. Create one per process and share it."""

    def __init__(self, config: AuthConfig, roles: RoleLookup | None = None) -> None:
        self._roles = roles
        secret = config.hs256_secret or None
        jwks_url = config.jwks_url or None
        if secret is None and jwks_url is None:
            raise ValueError("AuthConfig needs hs256_secret or jwks_url (or both)")
        for alg in config.algorithms:
            if alg.lower() == "none":
                raise ValueError("AuthConfig.algorithms must not contain 'none'")
            if alg not in _HMAC_ALGORITHMS and alg not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(f"AuthConfig.algorithms: unknown algorithm {alg!r}")
        if (config.leeway_s < 0 or config.jwks_min_refetch_s < 0 or config.jwks_timeout_s <= 0
                or config.token_cache_size < 0):
            raise ValueError(
                "AuthConfig: leeway_s, jwks_min_refetch_s and token_cache_size must be >= 0 and "
                "jwks_timeout_s > 0"
            )

        self._config = config
        self._secret: bytes | None = None
        self._hmac_algs: frozenset[str] = frozenset()
        if secret is not None:
            self._hmac_algs = frozenset(a for a in config.algorithms if a in _HMAC_ALGORITHMS)
            self._secret = tokens.check_secret(secret, tuple(self._hmac_algs))
        self._jwks_url = jwks_url
        self._jwks_algs: frozenset[str] = frozenset()
        if jwks_url is not None:
            scheme = urllib.parse.urlsplit(jwks_url).scheme
            if scheme not in ("http", "https"):
                raise ValueError(f"AuthConfig.jwks_url must be http(s), not {scheme!r}")
            self._jwks_algs = frozenset(a for a in config.algorithms if a not in _HMAC_ALGORITHMS)
        if not self._hmac_algs and not self._jwks_algs:
            raise ValueError(
                f"AuthConfig: no algorithm in {list(config.algorithms)} can be verified "
                "(HS* needs hs256_secret; RS*/ES*/PS*/EdDSA need jwks_url)"
            )
        # Listed in allow-list order, for messages.
        self._accepted = tuple(
            a for a in config.algorithms if a in self._hmac_algs or a in self._jwks_algs
        )

        # JWKS state. ``_keys`` is replaced, never mutated, so sync readers need no lock.
        self._keys: dict[str, PyJWK] = {}
        self._keys_fetched_at: float | None = None  # monotonic time of the last good fetch
        self._last_attempt_at: float | None = None  # monotonic time of the last fetch started
        self._fetch_error: str | None = None  # why the last fetch failed; None if it worked
        self._fetch_task: asyncio.Task[None] | None = None
        self.refusals: dict[str, int] = {}  # tokens refused, by error code
        self.tokens = TokenCache(config.token_cache_size)

    async def verify(self, token: str) -> Claims:
        """Verify ``token``, fetching the JWKS if its ``kid`` is not cached, and add the
        user's roles when ``[roles]`` is configured. Never blocks. Every refusal is counted in
        ``refusals`` by its code."""
        try:
            claims = await self._verify(token)
            return claims if self._roles is None else await self._roles.extend(claims)
        except GatewayError as exc:
            self.refusals[exc.code] = self.refusals.get(exc.code, 0) + 1
            raise

    async def _verify(self, token: str) -> Claims:
        claims = self.tokens.get(token, time.time(), self._trusted)
        if claims is not None:
            self._refresh_if_stale()
            return claims
        compact = tokens.read(token)
        alg = self._accepted_alg(compact.header)
        if alg in self._hmac_algs:
            assert self._secret is not None
            if not tokens.hmac_verifies(compact, alg, self._secret):
                raise GatewayError("token_signature", "the token signature does not verify")
            return self._remember(token, self._claims_in(compact.payload), self._secret, None)
        kid = _kid_of(compact.header, alg)
        key = self._keys.get(kid)
        if key is not None:
            self._refresh_if_stale()
            return self._remember(token, self._verify_with_key(token, alg, key), key, kid)

        await self._refetch_for_unknown_kid()
        key = self._keys.get(kid)
        if key is None:
            if self._fetch_error is not None:
                raise GatewayError(
                    "auth_unavailable",
                    f"the signing keys could not be fetched: {self._fetch_error}",
                )
            raise GatewayError("token_key_unknown", f"no signing key has kid {_show(kid)}")
        return self._remember(token, self._verify_with_key(token, alg, key), key, kid)

    def _remember(self, token: str, claims: Claims, key: PyJWK | bytes, kid: str | None
                  ) -> Claims:
        """Cache ``claims`` until the token's ``exp`` (plus the leeway) while ``key`` (named
        ``kid`` in the JWKS; None: the shared secret) stays the one that verifies it."""
        self.tokens.put(token, claims, claims.expires_at + self._config.leeway_s, key, kid)
        return claims

    def _trusted(self, key: PyJWK | bytes, kid: str | None) -> bool:
        """Whether ``key`` still verifies tokens: the secret, or the JWKS's current ``kid``."""
        return key is self._secret if kid is None else self._keys.get(kid) is key

    # -- header and signature ------------------------------------------------------------------

    def _accepted_alg(self, header: Mapping[str, Any]) -> str:
        """The unverified header's ``alg``, checked against the allow-list."""
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise GatewayError("token_algorithm", "the token header has no alg")
        if alg in self._hmac_algs or alg in self._jwks_algs:
            return alg
        accepted = ", ".join(self._accepted)
        if alg in self._config.algorithms and alg in _HMAC_ALGORITHMS:
            reason = "no shared secret is configured"
        elif alg in self._config.algorithms:
            reason = "no JWKS URL is configured"
        else:
            reason = f"accepted: {accepted}"
        raise GatewayError("token_algorithm", f"alg {_show(alg)} is not accepted ({reason})")

    def _verify_with_key(self, token: str, alg: str, key: PyJWK) -> Claims:
        from gateway import jwks  # loaded with a JWKS URL: PyJWT and cryptography

        return self._claims_in(jwks.verify(token, key, alg))

    def _claims_in(self, verified_payload: bytes) -> Claims:
        try:
            payload = loads(verified_payload)
        except (ValueError, RecursionError):
            payload = None
        if not isinstance(payload, dict):
            raise GatewayError("token_malformed", "the token payload is not a JSON object")
        return self._check_claims(payload)

    # -- claims ----------------------------------------------------------------------------------

    def _check_claims(self, payload: dict[str, Any]) -> Claims:
        now = time.time()
        leeway = self._config.leeway_s

        if payload.get("exp") is None:
            raise GatewayError("token_claims", "the token has no exp claim")
        exp = _timestamp(payload["exp"], "exp")
        if exp <= now - leeway:
            raise GatewayError("token_expired", f"the token expired {_ago(now - exp)} ago")
        if payload.get("nbf") is not None:
            nbf = _timestamp(payload["nbf"], "nbf")
            if nbf > now + leeway:
                raise GatewayError(
                    "token_claims", f"the token is not valid for another {_ago(nbf - now)} (nbf)"
                )

        audience = self._config.audience
        if audience is not None:
            aud = payload.get("aud")
            if aud is None:
                raise GatewayError("token_audience", f"the token has no aud; expected {audience!r}")
            auds = [aud] if isinstance(aud, str) else aud
            if not isinstance(auds, list) or not all(isinstance(a, str) for a in auds):
                raise GatewayError("token_audience", "aud must be a string or a list of strings")
            if audience not in auds:
                raise GatewayError(
                    "token_audience", f"aud {_show(aud)} is not accepted; expected {audience!r}"
                )

        subject = _optional_str(payload, "sub")
        role = _optional_str(payload, "role")
        scopes: set[str] = set()
        for path in self._config.scope_claims:
            scopes.update(_scopes_at(payload, path))
        return Claims(
            raw=payload, subject=subject, scopes=frozenset(scopes), expires_at=exp, role=role
        )

    # -- JWKS ------------------------------------------------------------------------------------

    def _may_fetch(self) -> bool:
        last = self._last_attempt_at
        return last is None or time.monotonic() - last >= self._config.jwks_min_refetch_s

    def _fetch_running(self) -> bool:
        return self._fetch_task is not None and not self._fetch_task.done()

    def _start_fetch(self) -> asyncio.Task[None]:
        self._last_attempt_at = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._fetch(), name="rtgw-jwks-fetch")
        self._fetch_task = task  # also keeps the task alive
        return task

    async def _refetch_for_unknown_kid(self) -> None:
        """Join the running fetch, or start one unless the rate limit forbids it."""
        task = self._fetch_task
        if task is None or task.done():
            if not self._may_fetch():
                return
            task = self._start_fetch()
        # Shielded: a caller that is cancelled (client gone) must not abort other waiters' fetch.
        await asyncio.shield(task)

    def _refresh_if_stale(self) -> None:
        fetched = self._keys_fetched_at
        if fetched is None or time.monotonic() - fetched < _JWKS_MAX_AGE_S:
            return
        if not self._fetch_running() and self._may_fetch():
            self._start_fetch()  # in the background; the cached keys serve meanwhile

    async def _fetch(self) -> None:
        """Fetch and parse the JWKS; record the keys or the failure. Never raises."""
        from gateway import jwks  # loaded with a JWKS URL: PyJWT and cryptography

        assert self._jwks_url is not None
        url, timeout = self._jwks_url, self._config.jwks_timeout_s
        try:
            # The socket timeout bounds each read; wait_for bounds the whole (DNS included).
            keys = await asyncio.wait_for(asyncio.to_thread(jwks.fetch, url, timeout), timeout)
        except jwks.JwksError as exc:
            problem = str(exc)
        except TimeoutError:
            problem = f"no answer within {timeout:g}s"
        except Exception:
            logger.exception("JWKS fetch from %s failed unexpectedly", url)
            problem = "unexpected error"
        else:
            self._keys = keys
            self.tokens.drop_keys()  # their entries would miss anyway: free them
            self._keys_fetched_at = time.monotonic()
            self._fetch_error = None
            logger.info("JWKS from %s: %d key(s): %s", url, len(keys), ", ".join(sorted(keys)))
            return
        self._fetch_error = problem
        logger.warning("JWKS fetch from %s failed: %s", url, problem)


class TokenCache:
    """Verified tokens, by the whole token: at most ``size``, least recently used out. An entry
    is returned only before its expiry and while the key that verified it is trusted."""

    __slots__ = ("size", "_entries", "hits", "misses")

    def __init__(self, size: int) -> None:
        self.size = size
        # token -> (claims, expires at (Unix time), the key that verified it, its kid)
        self._entries: OrderedDict[
            str, tuple[Claims, float, PyJWK | bytes, str | None]
        ] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float, trusted: Callable[[PyJWK | bytes, str | None], bool]
            ) -> Claims | None:
        """The claims ``token`` was verified to hold, if it was, has not expired by ``now``
        and ``trusted(key, kid)`` says the key that verified it still holds."""
        entry = self._entries.get(token)
        if entry is not None:
            claims, expires_at, key, kid = entry
            if now < expires_at and trusted(key, kid):
                self._entries.move_to_end(token)
                self.hits += 1
                return claims
            del self._entries[token]
        self.misses += 1
        return None

    def put(self, token: str, claims: Claims, expires_at: float, key: PyJWK | bytes,
            kid: str | None) -> None:
        if self.size == 0:
            return
        self._entries[token] = (claims, expires_at, key, kid)
        self._entries.move_to_end(token)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop_keys(self) -> None:
        """Forget the tokens verified with JWKS keys (the key set was replaced)."""
        for token in [t for t, entry in self._entries.items() if entry[3] is not None]:
            del self._entries[token]


# -- helpers -------------------------------------------------------------------------------------


def _get_path(raw: Mapping[str, Any], path: str) -> Any:
    node: Any = raw
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _kid_of(header: Mapping[str, Any], alg: str) -> str:
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise GatewayError("token_key_unknown", f"the token header has no kid (needed for {alg})")
    return kid


def _show(value: object) -> str:
    """A short printable rendering of an untrusted value."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.0f}h"


def _timestamp(value: object, name: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number):
            return number
    raise GatewayError("token_claims", f"{name} must be a number of seconds since 1970")


def _optional_str(payload: Mapping[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is None or isinstance(value, str):
        return value
    raise GatewayError("token_claims", f"{name} must be a string")


def _scopes_at(payload: Mapping[str, Any], path: str) -> list[str]:
    """The scopes at ``path``: a string split on plain spaces, or a list's entries as they
    are, exactly as the migrations' ``rtgw_has_scope`` reads them in SQL (so a policy and a
    channel never disagree about a token's scopes)."""
    value = _get_path(payload, path)
    if value is None:
        return []
    if isinstance(value, str):
        return [part for part in value.split(" ") if part]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item for item in value if item]
    raise GatewayError(
        "token_claims", f"{path} must be a space-separated string or a list of strings"
    )
