"""A gateway configured with a JWKS URL (as with Supabase's asymmetric keys) accepts RS256 and
ES256 tokens from it and refuses everything else."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import connect, drop_slot, start_gateway, token
from tests.integration.test_auth import JwksServer, ec_jwk, rsa_jwk, signed


async def test_jwks_tokens_authenticate_and_hs256_is_not_accepted(pg: EmbeddedPostgres) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = JwksServer(jwks={"keys": [rsa_jwk(rsa_key, "r1"), ec_jwk(ec_key, "e1")]})
    jwks.start()
    gateway = await start_gateway(pg.dsn, jwt_secret=None, jwks_url=jwks.url)
    try:
        for key, alg, kid in ((rsa_key, "RS256", "r1"), (ec_key, "ES256", "e1")):
            async with connect(gateway.ws_url) as client:
                ready = await client.auth(signed(key, alg, kid, sub=f"via-{alg}"))
                assert ready["type"] == "ready" and ready["sub"] == f"via-{alg}"
                assert (await client.subscribe("my_notifications"))["type"] == "subscribed"
        async with connect(gateway.ws_url) as client:
            refused = await client.auth(token())  # HS256: no secret is configured
            assert refused["code"] == "token_algorithm"
        async with connect(gateway.ws_url) as client:
            refused = await client.auth(signed(rsa_key, "RS256", "unknown-kid"))
            assert refused["code"] == "token_key_unknown"
        assert jwks.requests >= 1
    finally:
        await gateway.stop()
        jwks.stop()
        drop_slot(pg.dsn, gateway.settings.slot)

