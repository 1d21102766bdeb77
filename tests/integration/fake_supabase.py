"""A fake Supabase Realtime server, for the Supabase-upstream source.

The real server cannot run here (it needs Elixir packages this machine cannot reach, and there is
no Docker engine), so an rtgw gateway's Supabase-compatible endpoint stands in for it: Supabase's
own ``realtime`` client, inside the source, streams ``postgres_changes`` from it. It serves the
repository's channels (``orders`` needs ``orders:read``) and takes ``service_key()`` as its
apikey.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import Gateway, start_gateway, token


def service_key() -> str:
    """A service-role-like key the fake accepts: it may read every order."""
    return token("service", scopes=("orders:read",), ttl=3600)


async def start_fake_supabase(dsn: str, key: str, **overrides: Any) -> Gateway:
    """Start the fake on the database ``dsn``, with ``key`` as its apikey; its base URL
    (``http_url``) is what a ``SupabaseSourceConfig.url`` takes. Stop it with ``stop()`` and
    drop its slot (``settings.slot``)."""
    return await start_gateway(dsn, api_key=key, **overrides)
