"""gateway.auth: HS256 with a shared secret, RS256/ES256 from a JWKS served over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway import auth
from gateway.auth import AuthConfig, Claims, Verifier
from gateway.errors import GatewayError

SECRET = "rtgw-unit-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEF"  # 64+ bytes
OTHER_SECRET = "another-secret-that-is-long-enough-for-hs256-but-wrong-0123456789"
DROP = object()  # a claim value meaning "leave this claim out"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": "user-1",
        "aud": "authenticated",
        "role": "authenticated",
        "iat": now,
        "exp": now + 3600,
    }
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not DROP}


def hs256(payload: dict[str, Any], secret: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(payload, secret, algorithm=alg)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs_verifier(**kwargs: Any) -> Verifier:
    return Verifier(AuthConfig(hs256_secret=SECRET, **kwargs))


async def refused(verifier: Verifier, token: str, code: str) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await verifier.verify(token)
    assert info.value.code == code, info.value
    if token:
        assert token not in str(info.value)
        for segment in token.split("."):
            if len(segment) > 8:
                assert segment not in str(info.value)
    return info.value


# -- HS256 ---------------------------------------------------------------------------------------


async def test_hs256_scopes_are_the_union_of_string_list_and_app_metadata() -> None:
    verifier = hs_verifier(scope_claims=("scope", "scopes", "app_metadata.scopes"))
    token = hs256(
        claims(
            scope="read:orders  write:orders",
            scopes=["read:users", "read:orders"],
            app_metadata={"scopes": ["admin"], "tenant": "acme"},
        )
    )
    result = await verifier.verify(token)
    assert result.scopes == {"read:orders", "write:orders", "read:users", "admin"}
    assert result.subject == "user-1"
    assert result.role == "authenticated"
    assert isinstance(result.expires_at, float)
    assert result.expires_at == result.raw["exp"]
    assert await verifier.verify(token) == result


@pytest.mark.parametrize(
    ("extra", "scopes"),
    [
        ({"scope": "a b"}, {"a", "b"}),
        ({"scope": ["a", "b"]}, {"a", "b"}),
        ({"app_metadata": {"scopes": "c d"}}, {"c", "d"}),
        ({"app_metadata": {"scopes": ["c"]}, "scope": "a"}, {"a", "c"}),
        ({}, set()),
    ],
)
async def test_hs256_scope_shapes(extra: dict[str, Any], scopes: set[str]) -> None:
    result = await hs_verifier().verify(hs256(claims(**extra)))
    assert result.scopes == scopes


async def test_bad_scope_claim_type() -> None:
    await refused(hs_verifier(), hs256(claims(scope={"read": True})), "token_claims")
    await refused(hs_verifier(), hs256(claims(scope=["a", 1])), "token_claims")


async def test_expired() -> None:
    token = hs256(claims(exp=int(time.time()) - 60))
    error = await refused(hs_verifier(), token, "token_expired")
    assert "expired" in error.message
    verifier = hs_verifier()
    await refused(verifier, token, "token_expired")
    assert verifier.refusals == {"token_expired": 1}  # every refusal is counted by its code


async def test_leeway() -> None:
    token = hs256(claims(exp=int(time.time()) - 2))
    assert (await hs_verifier(leeway_s=30.0).verify(token)).subject == "user-1"
    await refused(hs_verifier(leeway_s=0.0), token, "token_expired")


async def test_not_yet_valid() -> None:
    await refused(hs_verifier(), hs256(claims(nbf=int(time.time()) + 600)), "token_claims")


async def test_wrong_secret() -> None:
    await refused(hs_verifier(), hs256(claims(), secret=OTHER_SECRET), "token_signature")


async def test_tampered_payload() -> None:
    header, _, signature = hs256(claims()).split(".")
    forged = b64url(json.dumps(claims(role="service_role")).encode())
    await refused(hs_verifier(), f"{header}.{forged}.{signature}", "token_signature")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none(alg: str) -> None:
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    await refused(hs_verifier(), f"{header}.{payload}.", "token_algorithm")


async def test_alg_outside_allow_list() -> None:
    await refused(hs_verifier(), hs256(claims(), alg="HS512"), "token_algorithm")


async def test_header_without_alg() -> None:
    header = b64url(json.dumps({"typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    await refused(hs_verifier(), f"{header}.{payload}.c2ln", "token_algorithm")


async def test_asymmetric_alg_without_jwks_url(rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k"})
    await refused(hs_verifier(), token, "token_algorithm")


@pytest.mark.parametrize(
    ("aud", "code"),
    [("anon", "token_audience"), (DROP, "token_audience"), (["x", "authenticated"], None)],
)
async def test_audience(aud: object, code: str | None) -> None:
    token = hs256(claims(aud=aud))
    if code is None:
        assert (await hs_verifier().verify(token)).subject == "user-1"
    else:
        await refused(hs_verifier(), token, code)


async def test_audience_none_disables_the_check() -> None:
    verifier = hs_verifier(audience=None)
    assert (await verifier.verify(hs256(claims(aud="anything")))).subject == "user-1"
    assert (await verifier.verify(hs256(claims(aud=DROP)))).subject == "user-1"


@pytest.mark.parametrize("exp", [DROP, None, "tomorrow", True])
async def test_exp_missing_or_bad(exp: object) -> None:
    await refused(hs_verifier(), hs256(claims(exp=exp)), "token_claims")


async def test_sub_and_role_must_be_strings() -> None:
    await refused(hs_verifier(), hs256(claims(sub=42)), "token_claims")
    await refused(hs_verifier(), hs256(claims(role=["admin"])), "token_claims")
    result = await hs_verifier().verify(hs256(claims(sub=DROP, role=DROP)))
    assert result.subject is None and result.role is None


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not a jwt at all",
        "abc",
        "a.b",
        "a.b.c",
        "a.b.c.d.e",
        "eyJhbGciOiJIUzI1NiJ9.!!!!.c2ln",
        b64url(b"[1,2]") + "." + b64url(b"{}") + ".c2ln",  # header is not an object
        b64url(b'{"alg":"HS256","kid":7}') + "." + b64url(b"{}") + ".c2ln",  # kid not a string
        hs256(claims()) + "=",  # padded (PyJWT accepts it)
        jwt.encode(claims(), SECRET, algorithm="HS256", headers={"crit": ["exp"]}),
        jwt.encode(claims(), SECRET, algorithm="HS256", headers={"b64": False}),
    ],
)
async def test_malformed(token: str) -> None:
    await refused(hs_verifier(), token, "token_malformed")


async def test_signed_payload_that_is_not_json() -> None:
    token = jwt.PyJWS().encode(b"not json", SECRET, algorithm="HS256")
    await refused(hs_verifier(), token, "token_malformed")


def test_get_path() -> None:
    result = Claims(
        raw={"app_metadata": {"tenant": "acme", "deep": {"x": [1]}}, "sub": "u", "n": 3},
        subject="u",
        scopes=frozenset(),
        expires_at=0.0,
        role=None,
    )
    assert result.get_path("app_metadata.tenant") == "acme"
    assert result.get_path("app_metadata.deep.x") == [1]
    assert result.get_path("sub") == "u"
    assert result.get_path("app_metadata.missing") is None
    assert result.get_path("missing.tenant") is None
    assert result.get_path("n.child") is None  # through a non-object
    assert result.get_path("app_metadata.deep.x.0") is None  # lists are not indexed


@pytest.mark.parametrize(
    "config",
    [
        AuthConfig(),
        AuthConfig(hs256_secret=""),
        AuthConfig(hs256_secret="too-short"),
        AuthConfig(hs256_secret=SECRET, algorithms=("HS256", "none")),
        AuthConfig(hs256_secret=SECRET, algorithms=("HS999",)),
        AuthConfig(hs256_secret=SECRET, algorithms=("RS256",)),  # nothing verifiable
        AuthConfig(jwks_url="file:///etc/passwd"),
    ],
)
def test_bad_config(config: AuthConfig) -> None:
    with pytest.raises(ValueError):
        Verifier(config)


# -- JWKS ----------------------------------------------------------------------------------------


@dataclass
class JwksServer:
    """A real HTTP server on 127.0.0.1 serving ``jwks``; counts the requests it answers."""

    jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    body: bytes | None = None  # served instead of ``jwks`` when set
    status: int = 200
    delay_s: float = 0.0
    requests: int = 0
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with state._lock:
                    state.requests += 1
                if state.delay_s and state._stopping.wait(state.delay_s):
                    return
                body = state.body if state.body is not None else json.dumps(state.jwks).encode()
                try:
                    self.send_response(state.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (the timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = (
            f"http://127.0.0.1:{self._server.server_address[1]}/auth/v1/.well-known/jwks.json"
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._stopping.set()
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join()
            self._server = None


@pytest.fixture
def server() -> Iterator[JwksServer]:
    state = JwksServer()
    state.start()
    yield state
    state.stop()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key_2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}


def signed(key: Any, alg: str, kid: str | None, **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


def jwks_verifier(server: JwksServer, **kwargs: Any) -> Verifier:
    return Verifier(AuthConfig(jwks_url=server.url, **kwargs))


async def test_rs256_and_es256_from_jwks(
    server: JwksServer, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    server.jwks = {"keys": [rsa_jwk(rsa_key, "rsa-1"), ec_jwk(ec_key, "ec-1")]}
    verifier = jwks_verifier(server)
    rs = signed(rsa_key, "RS256", "rsa-1", scope="read")
    es = signed(ec_key, "ES256", "ec-1", app_metadata={"scopes": ["write"]})

    assert server.requests == 0  # nothing is fetched before a token needs a key

    assert (await verifier.verify(rs)).scopes == {"read"}
    assert (await verifier.verify(es)).scopes == {"write"}
    assert (await verifier.verify(rs)).subject == "user-1"
    assert (await verifier.verify(es)).subject == "user-1"
    assert server.requests == 1  # served from the cache


async def test_jwks_token_checks(
    server: JwksServer, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    server.jwks = {"keys": [rsa_jwk(rsa_key, "rsa-1"), ec_jwk(ec_key, "ec-1")]}
    verifier = jwks_verifier(server)
    await refused(verifier, signed(rsa_key, "RS256", "rsa-1", exp=1), "token_expired")
    await refused(verifier, signed(rsa_key, "RS256", "rsa-1", aud="anon"), "token_audience")
    # ES256 naming the RSA key's kid: the token's alg must be the key's alg (no confusion).
    await refused(verifier, signed(ec_key, "ES256", "rsa-1"), "token_algorithm")
    header, payload, _ = signed(rsa_key, "RS256", "rsa-1").split(".")
    _, _, other_sig = signed(rsa_key, "RS256", "rsa-1", sub="someone-else").split(".")
    await refused(verifier, f"{header}.{payload}.{other_sig}", "token_signature")
    await refused(verifier, signed(rsa_key, "RS256", None), "token_key_unknown")
    # HS256 when only a JWKS is configured: refused before any key is looked at.
    await refused(verifier, hs256(claims()), "token_algorithm")
    assert server.requests == 1


async def test_key_rotation_refetches_once(
    server: JwksServer, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    server.jwks = {"keys": [rsa_jwk(rsa_key, "old")]}
    verifier = jwks_verifier(server, jwks_min_refetch_s=0.0)
    assert (await verifier.verify(signed(rsa_key, "RS256", "old"))).subject == "user-1"
    assert server.requests == 1

    server.jwks = {"keys": [rsa_jwk(rsa_key, "old"), rsa_jwk(rsa_key_2, "new")]}
    new_token = signed(rsa_key_2, "RS256", "new", sub="user-2")
    assert (await verifier.verify(new_token)).subject == "user-2"
    assert server.requests == 2
    assert (await verifier.verify(new_token)).subject == "user-2"
    assert (await verifier.verify(signed(rsa_key, "RS256", "old"))).subject == "user-1"
    assert (await verifier.verify(new_token)).subject == "user-2"
    assert server.requests == 2


async def test_unknown_kid_is_rate_limited(
    server: JwksServer, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    server.jwks = {"keys": [rsa_jwk(rsa_key, "old")]}
    verifier = jwks_verifier(server, jwks_min_refetch_s=0.5)
    assert (await verifier.verify(signed(rsa_key, "RS256", "old"))).subject == "user-1"
    assert server.requests == 1

    server.jwks = {"keys": [rsa_jwk(rsa_key_2, "new")]}
    new_token = signed(rsa_key_2, "RS256", "new")
    for _ in range(5):
        error = await refused(verifier, new_token, "token_key_unknown")
        assert "'new'" in error.message
    await refused(verifier, signed(rsa_key, "RS256", "nope"), "token_key_unknown")
    assert server.requests == 1  # inside the window: no refetch

    await asyncio.sleep(0.6)
    assert (await verifier.verify(new_token)).subject == "user-1"
    assert server.requests == 2
    # The refetch replaced the set: the withdrawn key is no longer trusted.
    await refused(verifier, signed(rsa_key, "RS256", "old"), "token_key_unknown")
    assert server.requests == 2


async def test_stale_keys_are_refreshed_in_the_background(
    server: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    rsa_key_2: rsa.RSAPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth, "_JWKS_MAX_AGE_S", 0.0)
    server.jwks = {"keys": [rsa_jwk(rsa_key, "old")]}
    verifier = jwks_verifier(server, jwks_min_refetch_s=0.0)
    old = signed(rsa_key, "RS256", "old")
    assert (await verifier.verify(old)).subject == "user-1"
    server.jwks = {"keys": [rsa_jwk(rsa_key_2, "new")]}  # "old" is withdrawn
    assert (await verifier.verify(old)).subject == "user-1"  # served from cache meanwhile
    deadline = time.monotonic() + 5.0
    while True:
        try:
            await verifier.verify(old)
        except GatewayError as exc:
            assert exc.code == "token_key_unknown"
            break
        assert time.monotonic() < deadline, "the background refresh never replaced the keys"
        await asyncio.sleep(0.01)
    assert server.requests >= 2
    assert (await verifier.verify(signed(rsa_key_2, "RS256", "new"))).subject == "user-1"


async def test_concurrent_unknown_kids_share_one_fetch_off_the_loop(
    server: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    server.jwks = {"keys": [ec_jwk(ec_key, "ec-1")]}
    server.delay_s = 0.3
    verifier = jwks_verifier(server)
    token = signed(ec_key, "ES256", "ec-1")
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    results = await asyncio.gather(*(verifier.verify(token) for _ in range(10)))
    stop.set()
    await ticking
    assert all(r.subject == "user-1" for r in results)
    assert server.requests == 1
    assert ticks >= 10  # the loop kept running during the 0.3 s fetch


async def test_server_down(server: JwksServer, rsa_key: rsa.RSAPrivateKey) -> None:
    server.stop()
    verifier = jwks_verifier(server)
    token = signed(rsa_key, "RS256", "rsa-1")
    await refused(verifier, token, "auth_unavailable")
    # Within the window the failure is reported again without another attempt.
    await refused(verifier, token, "auth_unavailable")


@pytest.mark.parametrize(
    ("status", "body"),
    [(500, b"{}"), (200, b"<html>not json</html>"), (200, b'{"no": "keys"}')],
)
async def test_bad_jwks_response(
    server: JwksServer, rsa_key: rsa.RSAPrivateKey, status: int, body: bytes
) -> None:
    server.status, server.body = status, body
    verifier = jwks_verifier(server, jwks_min_refetch_s=30.0)
    await refused(verifier, signed(rsa_key, "RS256", "rsa-1"), "auth_unavailable")
    await refused(verifier, signed(rsa_key, "RS256", "rsa-1"), "auth_unavailable")
    assert server.requests == 1


async def test_jwks_timeout(server: JwksServer, rsa_key: rsa.RSAPrivateKey) -> None:
    server.jwks = {"keys": [rsa_jwk(rsa_key, "rsa-1")]}
    server.delay_s = 1.0
    verifier = jwks_verifier(server, jwks_timeout_s=0.2)
    started = time.monotonic()
    await refused(verifier, signed(rsa_key, "RS256", "rsa-1"), "auth_unavailable")
    assert time.monotonic() - started < 0.9


async def test_unusable_jwks_entries_are_skipped(
    server: JwksServer, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    server.jwks = {
        "keys": [
            {"kty": "oct", "kid": "sym", "k": b64url(SECRET.encode())},  # never from a URL
            rsa_jwk(weak, "weak"),
            {**ec_jwk(ec_key, "enc"), "use": "enc"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not an object",
            rsa_jwk(rsa_key, "good"),
        ]
    }
    verifier = jwks_verifier(server, jwks_min_refetch_s=30.0)
    assert (await verifier.verify(signed(rsa_key, "RS256", "good"))).subject == "user-1"
    with pytest.warns(jwt.InsecureKeyLengthWarning):
        weak_token = signed(weak, "RS256", "weak")
    await refused(verifier, weak_token, "token_key_unknown")
    await refused(verifier, signed(ec_key, "ES256", "enc"), "token_key_unknown")
    assert server.requests == 1


async def test_scopes_split_on_plain_spaces_as_the_sql_helper_does() -> None:
    """``rtgw_has_scope`` (supabase/migrations) uses string_to_array(scope, ' ') and exact list
    entries: a tab, a newline or a no-break space is part of a scope, not a separator."""
    verifier = hs_verifier()
    result = await verifier.verify(hs256(claims(scope="a\tb  orders:read c\u00a0d\nx",
                                                app_metadata={"scopes": [" s ", "t", ""]})))
    assert result.scopes == {"a\tb", "orders:read", "c\u00a0d\nx", " s ", "t"}
