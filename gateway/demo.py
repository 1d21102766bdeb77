"""The zero-configuration demo: an embedded Postgres with the demo schema and a sample writer."""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

import psycopg

from gateway.errors import ConfigError

log = logging.getLogger("rtgw.demo")



def project_folder(name: str) -> Path:
    """``name`` in the source checkout (editable installs), else in the working directory
    (the container image keeps ``/app/channels`` and ``/app/supabase``)."""
    for root in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (root / name).is_dir():
            return root / name
    raise ConfigError(f"{name} not found next to the package or in {Path.cwd()}")

DEMO_USERS = (
    "6f1c1d8e-0000-4000-8000-00000000a11c",  # alice
    "6f1c1d8e-0000-4000-8000-0000000000b0",  # bob
)
DEMO_ROLES = ((DEMO_USERS[0], "admin"), (DEMO_USERS[1], "support"))  # channels/roles.toml
_STATUSES = ("pending", "paid", "shipped", "delivered", "cancelled")


def apply_migrations(dsn: str, folder: Path | None = None) -> list[str]:
    """Run every ``*.sql`` of ``supabase/migrations`` in file-name order, each in its own
    transaction. Raises ``ConfigError`` when there are none."""
    folder = folder or project_folder("supabase/migrations")
    files = sorted(folder.glob("*.sql"))
    if not files:
        raise ConfigError(f"{folder}: no migrations (*.sql) found")
    applied = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for path in files:
            with conn.transaction():
                conn.execute(path.read_text(encoding="utf-8").encode())
            applied.append(path.name)
    return applied


def seed_roles(dsn: str) -> None:
    """Give the demo users their roles in ``public.user_roles`` (kept when already there)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for user, role in DEMO_ROLES:
            conn.execute(
                "INSERT INTO public.user_roles (user_id, role) VALUES (%s, %s) "
                "ON CONFLICT DO NOTHING", (user, role),
            )


async def write_samples(dsn: str, rate_per_s: float = 3.0) -> None:
    """Insert, update and delete sample rows forever, about ``rate_per_s`` writes a second."""
    rng = random.Random()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM public.customers")
        row = await cur.fetchone()
        if row is None or row[0] == 0:
            for name, tier in (("Ada", "gold"), ("Grace", "silver"), ("Linus", "standard")):
                await conn.execute(
                    "INSERT INTO public.customers (name, tier) VALUES (%s, %s)", (name, tier)
                )
        while True:
            await _one_write(conn, rng)
            await asyncio.sleep(1.0 / rate_per_s)


async def _one_write(conn: psycopg.AsyncConnection[tuple[object, ...]], rng: random.Random) -> None:
    roll = rng.random()
    if roll < 0.45:
        await conn.execute(
            "INSERT INTO public.orders (customer_id, status, total) "
            "SELECT id, 'pending', %s FROM public.customers ORDER BY random() LIMIT 1",
            (round(rng.uniform(5, 500), 2),),
        )
    elif roll < 0.8:
        await conn.execute(
            "UPDATE public.orders SET status = %s WHERE id = "
            "(SELECT id FROM public.orders ORDER BY random() LIMIT 1)",
            (rng.choice(_STATUSES),),
        )
    elif roll < 0.9:
        await conn.execute(
            "DELETE FROM public.orders WHERE id = (SELECT min(id) FROM public.orders) "
            "AND (SELECT count(*) FROM public.orders) > 50"
        )
    else:
        await conn.execute(
            "INSERT INTO public.notifications (user_id, title, body) VALUES (%s, %s, %s)",
            (rng.choice(DEMO_USERS), "Order update", f"Order #{rng.randint(1, 999)} moved"),
        )
