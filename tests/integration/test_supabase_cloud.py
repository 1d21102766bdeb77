"""Opt-in: the Supabase source against a real Supabase project.

Collected only when SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY are set (tests/conftest.py
deselects it otherwise), for a project where supabase/migrations were applied (the demo tables,
in the `supabase_realtime` publication). The real Supabase Realtime server cannot run on this
machine, so the suite's Supabase upstream tests use a fake server instead; this one checks the
same source against the real thing wherever credentials exist.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Sequence

import httpx
import pytest

from gateway.changes import Change, Op
from gateway.sources.supabase import SupabaseSource, SupabaseSourceConfig

URL = os.environ.get("SUPABASE_URL", "")
SERVICE_KEY = os.environ.get("SUPABASE_SERVICE_ROLE_KEY", "")

pytestmark = pytest.mark.supabase_cloud


async def test_supabase_source_streams_a_real_projects_changes() -> None:
    source = SupabaseSource(
        SupabaseSourceConfig(url=URL, service_key=SERVICE_KEY, tables=(("public", "customers"),))
    )
    received: asyncio.Queue[Change] = asyncio.Queue()

    async def sink(changes: Sequence[Change]) -> None:
        for change in changes:
            received.put_nowait(change)

    runner = asyncio.create_task(source.run(sink))
    headers = {"apikey": SERVICE_KEY, "Authorization": f"Bearer {SERVICE_KEY}",
               "Prefer": "return=representation"}
    name = f"rtgw-{uuid.uuid4()}"
    try:
        async with asyncio.timeout(30):
            while not source.streaming:  # noqa: ASYNC110 - a property, not an event
                await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=f"{URL}/rest/v1", headers=headers) as rest:
            created = await rest.post("/customers", json={"name": name})
            created.raise_for_status()
            customer_id = created.json()[0]["id"]
            async with asyncio.timeout(30):
                while True:
                    change = await received.get()
                    if change.new is not None and change.new.get("name") == name:
                        break
            assert change.op is Op.INSERT and change.new["id"] == customer_id
            await rest.delete("/customers", params={"id": f"eq.{customer_id}"})
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
