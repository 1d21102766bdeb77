"""The ``rtgw`` command as a user runs it: real processes, real ports."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest
from realtime import AsyncRealtimeClient

from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import REPO, RTGW, TEST_SECRET, free_port


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> Any:
    return subprocess.run(
        [RTGW, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def test_token_mints_a_verifiable_jwt() -> None:
    result = run("token", "--secret", TEST_SECRET, "--sub", "u1", "--scope", "orders:read",
                 "--scope", "a b", "--ttl", "120")
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), TEST_SECRET, algorithms=["HS256"],
                        audience="authenticated")
    assert claims["sub"] == "u1" and claims["scope"] == "orders:read a b"
    assert 100 < claims["exp"] - time.time() <= 120


def test_serve_refuses_bad_config_with_a_clear_message(tmp_path: Path) -> None:
    result = run("serve", env={"RTGW_JWT_SECRET": "secret"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "RTGW_JWT_SECRET is a well-known default" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "channels").mkdir()
    (tmp_path / "channels" / "bad.toml").write_text('[channels.x]\ntable = "t"\ncolour = 1\n')
    result = run("serve", env={"RTGW_JWT_SECRET": TEST_SECRET,
                               "RTGW_DATABASE_URL": "postgresql://nowhere/x"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "bad.toml: channel 'x': key 'colour'" in result.stderr

    only_rs256 = run("serve", env={"RTGW_JWT_SECRET": TEST_SECRET, "RTGW_JWT_ALGORITHMS": "RS256",
                                   "RTGW_DATABASE_URL": "postgresql://nowhere/x"})
    assert only_rs256.returncode == 2 and "Traceback" not in only_rs256.stderr
    assert "JWT settings: " in only_rs256.stderr and "RS256" in only_rs256.stderr


def test_check_passes_on_a_ready_database_and_names_each_problem(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    env = {"RTGW_JWT_SECRET": TEST_SECRET, "RTGW_DATABASE_URL": pg.dsn}
    ok = run("check", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("ok: 2 channels")

    channels = tmp_path / "channels"
    channels.mkdir()
    (channels / "c.toml").write_text(
        '[channels.ghost]\ntable = "public.ghosts"\n'
        '[channels.cols]\ntable = "public.orders"\ncolumns = ["id", "colour"]\n'
    )
    bad = run("check", env={**env, "RTGW_CHANNELS": str(channels)})
    assert bad.returncode == 1
    assert "channel 'ghost': table public.ghosts does not exist" in bad.stdout
    assert "channel 'cols': column 'colour' is not in public.orders" in bad.stdout

    replica = run("check", env={**env, "RTGW_DATABASE_URL": "postgresql://postgres@127.0.0.1/postgres"})
    assert replica.returncode == 1
    assert "wal_level is replica" in replica.stdout


def test_check_with_the_supabase_source_needs_its_url_and_key_not_a_database() -> None:
    env = {"RTGW_JWT_SECRET": TEST_SECRET, "RTGW_SOURCE": "supabase"}
    missing = run("check", env=env)
    assert missing.returncode == 1
    assert "RTGW_SOURCE=supabase needs RTGW_SUPABASE_URL" in missing.stdout
    ok = run("check", env={**env, "RTGW_SUPABASE_URL": "https://ref.supabase.co",
                           "RTGW_SUPABASE_SERVICE_KEY": "service-key"})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("ok: 2 channels, upstream Supabase Realtime at https://ref")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_streams_to_the_printed_watch_command(tmp_path: Path, stop: signal.Signals) -> None:
    data = Path(f"/var/tmp/rtgw-demo-test-{os.getpid()}")
    port = free_port()
    demo = subprocess.Popen(
        [RTGW, "demo", "--port", str(port), "--rate", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, "RTGW_EMBEDDED_DIR": str(data / "pgdata")},
    )
    watcher = None
    try:
        assert demo.stdout is not None
        lines = []
        while not any(line.strip().startswith("Press Ctrl-C") for line in lines):
            line = demo.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        watch_line = next(line for line in lines if " watch orders " in line)
        watcher = subprocess.Popen(
            shlex.split(watch_line.strip()), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        assert watcher.stdout is not None
        seen = [watcher.stdout.readline() for _ in range(4)]
        assert '"type":"ready"' in seen[0]
        assert '"type":"subscribed"' in seen[1]
        shown = [re.match(r"#(\d+) (INSERT|UPDATE|DELETE) +orders: \{", line) for line in seen[2:]]
        offsets = [int(match[1]) for match in shown if match is not None]
        assert len(offsets) == 2 and offsets[0] < offsets[1], seen
        # The demo (and only the demo) serves the live dashboard page.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            html = page.read().decode()
        assert '<script src="/rtgw.js"></script>' in html and '"token":"eyJ' in html
        change = asyncio.run(_first_supabase_change(lines))
        assert change["data"]["table"] == "orders"
    finally:
        if watcher is not None:
            watcher.kill()
            watcher.communicate()
        demo.send_signal(stop)
        output, _ = demo.communicate(timeout=30)
        left_running = EmbeddedPostgres(data / "pgdata").running()
        EmbeddedPostgres(data / "pgdata").destroy()
        shutil.rmtree(data, ignore_errors=True)
    assert demo.returncode == 0, output
    assert not left_running  # the demo stopped its own Postgres
    assert "rtgw demo: stopped." in output
    assert "Traceback" not in output


async def _first_supabase_change(printed: list[str]) -> dict[str, Any]:
    """Follow the demo's printed Supabase instructions with Supabase's Python client."""
    url, apikey = re.findall(r"(ws://\S+/realtime/v1)  apikey: (\S+)", "".join(printed))[0]
    user_token = re.findall(r"token:\s+(\S+)", "".join(printed))[0]
    client = AsyncRealtimeClient(url, apikey, auto_reconnect=False)
    changes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    try:
        await client.set_auth(user_token)
        channel = client.channel("demo")
        channel.on_postgres_changes("*", callback=changes.put_nowait, table="orders")
        await channel.subscribe()
        return await asyncio.wait_for(changes.get(), 10)
    finally:
        await client.close()


@pytest.mark.parametrize("command", ["serve", "demo", "token", "watch", "check"])
def test_every_command_has_help(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0 and "usage: rtgw" in result.stdout
