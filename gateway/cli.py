"""The ``rtgw`` command: serve, demo, token, watch, check."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from fastapi import FastAPI

from gateway import logs
from gateway.errors import ConfigError
from gateway.server import gateway_server
from gateway.settings import Settings
from gateway.tasks.base import QueueUnavailable
from gateway.tokens import mint_token


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rtgw", description="A realtime gateway for Postgres.")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("serve", help="run the gateway (configured by RTGW_* variables)")

    demo = commands.add_parser(
        "demo", help="embedded Postgres + demo channels + sample writer + the gateway"
    )
    demo.add_argument("--rate", type=float, default=3.0, help="sample writes per second")
    demo.add_argument("--port", type=int, default=None, help="port (default RTGW_PORT or 8000)")

    token = commands.add_parser("token", help="mint a development JWT (HS256)")
    token.add_argument("--sub", default="dev-user", help="the subject claim")
    token.add_argument("--scope", action="append", default=[], help="a scope (repeatable)")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.add_argument("--secret", default=None, help="signing secret (default RTGW_JWT_SECRET)")

    watch = commands.add_parser("watch", help="subscribe to a channel and print its events")
    watch.add_argument("channel")
    watch.add_argument("--token", required=True)
    watch.add_argument("--filter", default=None, help="e.g. status=eq.paid")
    watch.add_argument("--url", default="ws://127.0.0.1:8000/v1/ws")

    commands.add_parser("check", help="validate the configuration and the database set-up")

    worker = commands.add_parser(
        "worker", help="run the channels' tasks: RQ's worker on RTGW_TASK_QUEUE (RTGW_REDIS_URL)"
    )
    worker.add_argument("--burst", action="store_true", help="quit once the queue is empty")

    tasks = commands.add_parser("tasks", help="the tasks' dead letters: list or replay them")
    tasks_commands = tasks.add_subparsers(dest="tasks_command", required=True)
    tasks_commands.add_parser("dead", help="list the dead letters (every attempt failed)")
    replay = tasks_commands.add_parser(
        "replay", help="queue dead letters again, one attempt each (same webhook-id and job id)"
    )
    replay.add_argument("job_ids", nargs="*", help="the dead letters' job ids")
    replay.add_argument("--all", action="store_true", help="every dead letter")

    args = parser.parse_args(argv)
    try:
        match args.command:
            case "serve":
                return _serve(Settings())
            case "demo":
                return _demo(args.rate, args.port)
            case "token":
                return _token(args)
            case "watch":
                from gateway.watch import watch as run_watch

                return asyncio.run(run_watch(args.url, args.token, args.channel, args.filter))
            case "check":
                from gateway.check import run_check

                return run_check(Settings())
            case "worker":
                from gateway.tasks.worker import run_worker

                settings = Settings()
                logs.configure(settings.log_format, settings.log_level)
                return run_worker(settings, args.burst)
            case "tasks":
                return _tasks(args, parser)
    except ConfigError as exc:
        print(f"rtgw: configuration error: {exc}", file=sys.stderr)
        return 2
    except QueueUnavailable as exc:
        print(f"rtgw: the task queue is unavailable: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `rtgw watch ... | head`: the reader left, which is fine
        sys.stderr.close()
        return 0
    return 0


def _serve(settings: Settings) -> int:
    from gateway.app import create_app

    logs.configure(settings.log_format, settings.log_level)
    if settings.database_url is None and settings.source == "postgres":
        from gateway.demo import apply_migrations
        from gateway.sources.embedded import EmbeddedPostgres, default_data_dir

        pg = EmbeddedPostgres(default_data_dir())
        with _sigterm_unwinds(), pg.serving():
            apply_migrations(pg.dsn)
            settings = settings.model_copy(update={"database_url": pg.dsn})
            return _run_uvicorn(create_app(settings), settings)
    return _run_uvicorn(create_app(settings), settings)


def _run_uvicorn(app: FastAPI, settings: Settings) -> int:
    gateway_server(app, settings).run()
    return 0


def _demo(rate: float, port: int | None) -> int:
    from gateway.app import create_app
    from gateway.demo import (
        DEMO_USERS,
        apply_migrations,
        project_folder,
        seed_roles,
        write_samples,
    )
    from gateway.sources.embedded import EmbeddedPostgres, default_data_dir

    secret = secrets.token_urlsafe(32)
    overrides: dict[str, object] = {"jwt_secret": secret}
    if port is not None:
        overrides["port"] = port
    base = Settings()
    # The demo talks to a person on stdout: only warnings are logged unless asked otherwise.
    logs.configure(
        base.log_format, base.log_level if "log_level" in base.model_fields_set else "warning"
    )
    if base.api_key is None:  # an anon-key-like JWT for the Supabase-compatible endpoint
        overrides["api_key"] = mint_token(secret, "anon", [], 24 * 3600)
    if not base.channels.is_dir():
        overrides["channels"] = project_folder("channels")
    pg = EmbeddedPostgres(default_data_dir())
    print(f"rtgw demo: starting embedded Postgres in {pg.data_dir} ...", flush=True)
    with _sigterm_unwinds(), pg.serving():
        apply_migrations(pg.dsn)
        seed_roles(pg.dsn)
        settings = base.model_copy(update={**overrides, "database_url": pg.dsn})
        app = create_app(settings, dashboard=True)
        token = mint_token(secret, DEMO_USERS[0], [], 3600)
        rtgw = Path(sys.executable).with_name("rtgw")
        command = str(rtgw) if rtgw.exists() else "rtgw"
        url = f"ws://{settings.host}:{settings.port}/v1/ws"
        print(
            "\nrtgw demo is up: sample orders and notifications are being written.\n"
            f"  dashboard: http://{settings.host}:{settings.port}/  (live orders in a browser)\n"
            f"  gateway:  http://{settings.host}:{settings.port}  (readiness: /readyz, "
            "metrics: /metrics)\n"
            f"  token:    {token}\n"
            "            (sub = demo user alice, valid 1 hour; orders:read comes from her\n"
            "            role admin in public.user_roles: delete that row and her orders\n"
            "            subscriptions end)\n\n"
            "Watch the stream from another terminal:\n"
            f"  {command} watch orders --url {url} --token {token}\n"
            f"  {command} watch my_notifications --url {url} --token {token}\n\n"
            "Supabase clients (realtime-js, realtime-py) connect to\n"
            f"  ws://{settings.host}:{settings.port}/realtime/v1  apikey: {settings.api_key}\n"
            "  and join with the token above as access_token.\n\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )

        async def main() -> None:
            writer = asyncio.create_task(write_samples(pg.dsn, rate))
            try:
                await gateway_server(app, settings, "warning").serve()
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer

        try:
            asyncio.run(main())
        finally:
            print("rtgw demo: stopped.", flush=True)
    return 0


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """uvicorn drains on SIGTERM and then raises the signal again; with its default action the
    process would die before an embedded Postgres is stopped. Make it a clean SystemExit so the
    ``with`` blocks around the server unwind."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _tasks(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from gateway.tasks.queue import dead_letters, replay

    settings = Settings()
    if args.tasks_command == "dead":
        letters = dead_letters(settings)
        for letter in letters:
            print(f"{letter.job_id}  {letter.task}  {letter.key}  {letter.error}")
        print(f"{len(letters)} dead letter(s) in queue {settings.queue_name}", file=sys.stderr)
        return 0
    if bool(args.job_ids) == args.all:
        parser.error("tasks replay: name job ids or pass --all (not both)")
    replayed, unknown = replay(settings, args.job_ids)
    for job_id in unknown:
        print(f"not a dead letter: {job_id}", file=sys.stderr)
    print(f"replayed {len(replayed)} dead letter(s)")
    return 1 if unknown else 0


def _token(args: argparse.Namespace) -> int:
    secret = args.secret or os.environ.get("RTGW_JWT_SECRET")
    if not secret:
        print("rtgw token: pass --secret or set RTGW_JWT_SECRET", file=sys.stderr)
        return 2
    scopes = [part for item in args.scope for part in item.split()]
    print(mint_token(secret, args.sub, scopes, args.ttl))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
