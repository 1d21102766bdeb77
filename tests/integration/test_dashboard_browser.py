"""The demo's live dashboard in a real headless Chromium (Debian's, driven by Playwright):
rows inserted in Postgres appear on the page, and a dropped socket loses nothing."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from playwright.async_api import Page, async_playwright

from gateway.app import create_app
from gateway.settings import Settings
from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import REPO, TEST_SECRET, connect, drop_slot, free_port, token, wait_ready

ARTIFACTS = REPO / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
async def demo_gateway(pg: EmbeddedPostgres) -> AsyncIterator[str]:
    settings = Settings(
        database_url=pg.dsn, jwt_secret=TEST_SECRET, channels=REPO / "channels",
        port=free_port(), slot="dashboard_test", publication="rtgw",
    )
    from gateway.server import uvicorn_config

    server = uvicorn.Server(
        uvicorn_config(create_app(settings, dashboard=True), settings, "warning")
    )
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{settings.port}"
    try:
        await wait_ready(url)
        yield url
    finally:
        server.should_exit = True
        await task
        drop_slot(pg.dsn, settings.slot)


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    chromium = shutil.which("chromium")
    assert chromium, "install Debian's chromium: apt-get install -y chromium"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield await browser.new_page(viewport={"width": 1200, "height": 820})
        finally:
            await browser.close()


def insert_orders(db: psycopg.Connection[Any], statuses: list[str]) -> list[int]:
    customer = db.execute(
        "INSERT INTO customers (name, tier) VALUES ('Browser', 'gold') RETURNING id"
    ).fetchone()
    assert customer is not None
    ids = []
    for status in statuses:
        row = db.execute(
            "INSERT INTO orders (customer_id, status, total) "
            "VALUES (%s, %s, round((10 + random() * 490)::numeric, 2)) RETURNING id",
            (customer[0], status),
        ).fetchone()
        assert row is not None
        ids.append(row[0])
    return ids


async def rows_for(page: Page, ids: list[int]) -> None:
    for order_id in ids:
        await page.wait_for_selector(f'#orders tr[data-order-id="{order_id}"]', timeout=10_000)


async def test_live_orders_stream_in_and_a_reconnect_loses_nothing(
    demo_gateway: str, page: Page, db: psycopg.Connection[Any]
) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    await page.goto(f"{demo_gateway}/")
    await page.wait_for_function("document.getElementById('state').textContent === 'open'")
    await page.wait_for_function("window.rtgwClient._byTopic('orders') !== null")
    ws_url = demo_gateway.replace("http://", "ws://") + "/v1/ws"
    async with connect(ws_url) as watcher:  # a second, plain client sees the same stream
        await watcher.auth(token())
        await watcher.subscribe("orders")

        first = insert_orders(db, ["pending", "paid", "shipped"])
        await rows_for(page, first)
        customer = await page.text_content(
            f'#orders tr[data-order-id="{first[0]}"] td:nth-child(3)'
        )
        assert customer == "Browser (gold)"  # the order's customer, looked up (enrichment)

        # Drop the socket; while the client waits to reconnect, more orders are committed.
        await page.evaluate(
            "() => { const c = window.rtgwClient; c._delay = 1500; c.socket.close(); }"
        )
        await page.wait_for_function("window.rtgwClient.state === 'reconnecting'")
        missed = insert_orders(db, ["pending", "paid", "delivered"])
        await page.wait_for_function("window.rtgwClient.state === 'open'", timeout=10_000)
        await rows_for(page, missed)

        live = []
        for status in ("paid", "shipped", "pending", "cancelled"):
            live += insert_orders(db, [status])
            db.execute("UPDATE orders SET status = 'delivered' WHERE id = %s", (live[-1],))
            await asyncio.sleep(0.15)
        await rows_for(page, live)
        await page.wait_for_function("window.dashboard.total === 14")

        state = await page.evaluate(
            "() => ({total: window.dashboard.total, unique: window.dashboard.seen.size,"
            " resumes: window.dashboard.resumes, resets: window.dashboard.resets,"
            " reconnects: window.rtgwClient.reconnects,"
            " offset: window.rtgwClient._byTopic('orders').offset,"
            " rows: document.querySelectorAll('#orders tr').length,"
            " badge: document.getElementById('state').textContent})"
        )
        last_offset = (await watcher.events(14))[-1]["offset"]
    # Every event exactly once, resumed rather than reset, at the last event's offset.
    assert state.pop("offset") == last_offset
    assert state == {
        "total": 14, "unique": 14, "resumes": 1, "resets": 0, "reconnects": 1,
        "rows": 14, "badge": "open",
    }
    assert await page.text_content("#reconnects") == "1"
    latency = await page.text_content("#latency")
    assert latency is not None and latency.endswith(" ms")
    assert errors == []

    await asyncio.sleep(0.3)  # one more render of the counters
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


async def test_serve_does_not_expose_the_dashboard(gateway: Any) -> None:
    async with httpx.AsyncClient() as http:
        for path in ("/", "/rtgw.js", "/demo/token"):
            response = await http.get(f"{gateway.http_url}{path}")
            assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_the_readme_shows_the_screenshot() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "![" in readme and "(docs/dashboard.png)" in readme
    assert Path(REPO / "docs" / "dashboard.png").stat().st_size > 10_000
