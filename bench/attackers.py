"""The hostile clients of ``bench.attacks``: each takes the ``Target`` and returns what the gateway
answered (``Outcome``), bounded in count and time by the target's ``Scale``.

Every attack connects to 127.0.0.1 from its own loopback address (``ATTACKER``, 127.0.0.2; the
idle sockets from 127.0.0.2 to 127.0.0.13), so the gateway's per-address limit counts the
attacker apart from the control client and the prober, as it would count a remote attacker.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import itertools
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt
import orjson
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import ClientConnection

from bench.harness import wait_listening
from bench.raw_http import (
    CLOSE,
    PING,
    PONG,
    TEXT,
    Answer,
    frame,
    open_raw,
    read_answer,
    read_frame,
    upgrade,
)
from gateway.encoding import loads
from gateway.settings import Settings
from gateway.sources.embedded import EmbeddedPostgres
from gateway.tokens import mint_token

ATTACKER = "127.0.0.2"
PER_ADDRESS = 250  # idle sockets per attacking address: below the default limit of 256
HEAD = b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"
# The gateway runs with its defaults: the head deadline, and frames (or pings) per second.
HEAD_TIMEOUT_S: float = Settings.model_fields["head_timeout_s"].default
PING_RATE: float = Settings.model_fields["max_messages_per_s"].default
RESET = (ConnectionResetError, BrokenPipeError)


@dataclass(frozen=True, slots=True)
class Scale:
    """How much of each attack: ``FULL`` for the documented figures, ``SHORT`` for CI."""

    heads: int  # oversized heads sent, per kind
    slowloris: int  # half-open requests
    flood_s: float  # how long the ping and text floods last
    flood_frames: int  # at most this many text frames (the gateway answers each)
    frames: int  # connections per kind of bad frame
    token_rounds: int  # times each forged token is tried
    idle: int  # idle authenticated sockets
    restarts: int  # Postgres and gateway restarts, per row


FULL = Scale(heads=100, slowloris=500, flood_s=10.0, flood_frames=1_000_000, frames=100,
             token_rounds=200, idle=3000, restarts=3)
SHORT = Scale(heads=3, slowloris=300, flood_s=2.0, flood_frames=30_000, frames=5,
              token_rounds=3, idle=300, restarts=1)


class Gateway(Protocol):
    """What an attack may do to the gateway's process (``bench.attacks.GatewayProcess``)."""

    def rss_kb(self) -> int: ...

    def restart(self, how: int) -> tuple[int | None, float]: ...


@dataclass(frozen=True, slots=True)
class Target:
    port: int
    gateway: Gateway
    pg: EmbeddedPostgres
    secret: str
    rsa_key: rsa.RSAPrivateKey  # its public half is in the gateway's JWKS
    kid: str
    scale: Scale

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def bearer(self) -> dict[str, str]:
        token = mint_token(self.secret, "attacker", ["orders:read"], 3600)
        return {"Authorization": f"Bearer {token}"}


@dataclass
class Outcome:
    """What the gateway answered (answer -> how many times), a sentence of figures, anything
    that went against expectation, and how to let go of what the attacker still holds."""

    answers: Counter[str] = field(default_factory=Counter)
    note: str = ""
    problems: list[str] = field(default_factory=list)
    release: Callable[[], Awaitable[None]] | None = None


Attack = Callable[[Target], Awaitable[Outcome]]


def describe(answer: Answer) -> str:
    code = answer.body.get("code") if answer.body else None
    return f"{answer.status} {code}"


def close_code(closed: websockets.ConnectionClosed) -> str:
    return f"close {closed.rcvd.code if closed.rcvd is not None else 1006}"


async def ws_connect(target: Target, source: str = ATTACKER, auth: bool = True) -> ClientConnection:
    """A WebSocket from ``source``, authenticated with a header (its ``ready`` read) or not."""
    ws = await websockets.connect(
        target.ws_url, additional_headers=target.bearer() if auth else None, compression=None,
        max_size=None, ping_interval=None, open_timeout=30, local_addr=(source, 0),
    )
    if auth:
        ready = loads(await ws.recv())
        if ready.get("type") != "ready":
            await ws.close()
            raise RuntimeError(f"not authenticated: {ready}")
    return ws


async def gather_limited(
    jobs: Sequence[Callable[[], Awaitable[str]]], concurrency: int
) -> Counter[str]:
    """Run the jobs, ``concurrency`` at a time; how many gave each answer."""
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[str]]) -> str:
        async with gate:
            return await job()

    return Counter(await asyncio.gather(*(one(job) for job in jobs)))


# -- request heads ---------------------------------------------------------------------------


async def send_head(port: int, head: bytes) -> str:
    reader, writer = await open_raw(port, source=ATTACKER)
    try:
        writer.write(head)
        return describe(await read_answer(reader))
    except (OSError, asyncio.IncompleteReadError, TimeoutError, AssertionError) as exc:
        return f"no answer ({type(exc).__name__})"
    finally:
        writer.close()


def oversized_head(head: bytes) -> Attack:
    async def attack(target: Target) -> Outcome:
        answers = Counter[str]()
        for _ in range(target.scale.heads):
            answers[await send_head(target.port, head)] += 1
        return Outcome(answers, f"{target.scale.heads} requests of {len(head):,} bytes")

    return attack


HEAD_1MB = HEAD + b"Authorization: Bearer " + b"x" * 1_000_000 + b"\r\n\r\n"
HEAD_9KB_LINE = HEAD + b"X-Line: " + b"y" * 9 * 1024 + b"\r\n\r\n"
HEAD_200_LINES = HEAD + b"".join(b"X-%d: %d\r\n" % (n, n) for n in range(200)) + b"\r\n"
STREAM_BYTES = 64 * 1024 * 1024


async def header_stream(target: Target) -> Outcome:
    """Header lines of 1 KB for ever (at most 64 MB): the gateway must cut it short."""
    sent, cut, answered = await asyncio.to_thread(_stream_head, target.port)
    reader = asyncio.StreamReader()
    reader.feed_data(answered)
    reader.feed_eof()
    try:
        answer = describe(await read_answer(reader, wait_s=1))
    except (asyncio.IncompleteReadError, ValueError, IndexError):
        answer = "reset without an answer"
    outcome = Outcome(Counter({answer: 1}))
    outcome.note = (f"cut off after {sent / 1024:,.0f} KB written (the socket buffers of both "
                    "sides hold most of it)")
    if not cut:
        outcome.problems.append(f"not cut off: {sent:,} bytes went in")
    return outcome


def _stream_head(port: int) -> tuple[int, bool, bytes]:
    """On a blocking socket: asyncio's transport drops what was received when a write fails,
    and the answer arrives just before the reset. (bytes written, cut off, bytes received)"""
    batch = b"".join(b"X-Flood-%d: %s\r\n" % (n, b"z" * 1000) for n in range(64))
    sent, cut, received = 0, False, b""
    with socket.socket() as sock:
        sock.bind((ATTACKER, 0))
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        try:
            sock.sendall(HEAD)
            while sent < STREAM_BYTES:
                sent += sock.send(batch)
        except OSError:
            cut = True
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                received += chunk
    return sent, cut, received


async def slowloris(target: Target) -> Outcome:
    """Requests whose head never ends (a header line every second); the gateway gives each
    ``HEAD_TIMEOUT_S`` and holds at most its per-address limit of them at once."""
    loop = asyncio.get_running_loop()

    async def one() -> tuple[str, float]:
        try:
            reader, writer = await open_raw(target.port, source=ATTACKER)
        except OSError as exc:
            return f"connect failed ({exc.strerror})", 0.0
        opened = loop.time()
        writer.write(HEAD)

        async def trickle() -> None:
            for n in itertools.count():
                await asyncio.sleep(1.0)
                writer.write(b"X-Slow-%d: s\r\n" % n)

        trickling = asyncio.create_task(trickle())
        try:
            return describe(await read_answer(reader, HEAD_TIMEOUT_S + 10)), loop.time() - opened
        except (OSError, asyncio.IncompleteReadError, TimeoutError, AssertionError) as exc:
            return f"no answer ({type(exc).__name__})", loop.time() - opened
        finally:
            trickling.cancel()
            writer.close()

    results = await asyncio.gather(*(one() for _ in range(target.scale.slowloris)))
    outcome = Outcome(Counter(answer for answer, _ in results))
    timed_out = [after for answer, after in results if answer.startswith("408")]
    refused = [after for answer, after in results if answer.startswith("429")]
    if timed_out:
        outcome.note = (f"{len(timed_out)} held, answered 408 after "
                        f"{min(timed_out):.1f}-{max(timed_out):.1f} s; ")
        if min(timed_out) < HEAD_TIMEOUT_S - 0.5 or max(timed_out) > HEAD_TIMEOUT_S + 3:
            outcome.problems.append("408 not at the head timeout")
    if refused:
        outcome.note += f"{len(refused)} refused 429 within {max(refused) * 1000:.0f} ms"
    return outcome


# -- below the protocol ----------------------------------------------------------------------


async def ping_flood(target: Target) -> Outcome:
    """Pings as fast as they go for ``flood_s``, pongs not read meanwhile; then what came back
    is counted. At the default rate the gateway answers 20 a second (bursts of 40)."""
    reader, writer = await upgrade(
        target.port, receive_buffer=4096, source=ATTACKER, headers=target.bearer()
    )
    pings, dropped, started = await _flood_pings(writer, target.scale.flood_s)
    elapsed = time.monotonic() - started
    pongs = 0
    with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError, *RESET):
        while True:
            opcode, _ = await asyncio.wait_for(read_frame(reader), 1.5)
            pongs += opcode == PONG
    writer.close()
    outcome = Outcome(Counter({"pong": pongs, "no answer (over the ping rate)": pings - pongs}))
    outcome.note = f"{pings:,} pings in {elapsed:.1f} s ({pings / elapsed:,.0f}/s), {pongs} pongs"
    bound = 2 * PING_RATE + PING_RATE * (time.monotonic() - started) + 2  # until the last pong
    if pongs > bound:
        outcome.problems.append(f"{pongs} pongs, more than the rate allows ({bound:.0f})")
    if dropped:
        outcome.problems.append("dropped although nothing waited for it")
    return outcome


async def ping_flood_unanswered(target: Target) -> Outcome:
    """With the ping rate raised out of the way, every ping is answered and the pongs pile up
    on the server: the client must be dropped once ``RTGW_MAX_OUTBOX_BYTES`` wait."""
    _, writer = await upgrade(
        target.port, receive_buffer=4096, source=ATTACKER, headers=target.bearer()
    )
    pings, dropped, started = await _flood_pings(writer, max(10.0, 2 * target.scale.flood_s))
    writer.close()
    elapsed = time.monotonic() - started
    outcome = Outcome(Counter({"dropped (connection reset)" if dropped else "still connected": 1}))
    outcome.note = (f"{'dropped' if dropped else 'still connected'} after {pings:,} pings "
                    f"({pings * 131 / 1e6:.1f} MB) written in {elapsed:.1f} s")
    return outcome


async def _flood_pings(writer: asyncio.StreamWriter, seconds: float) -> tuple[int, bool, float]:
    """Pings (125-byte payloads) for ``seconds`` or until reset: (sent, reset, start time)."""
    batch = frame(PING, b"p" * 125) * 100
    pings, started = 0, time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            writer.write(batch)
            pings += 100
            await writer.drain()
    except RESET:
        return pings, True, started
    return pings, False, started


async def text_flood(target: Target) -> Outcome:
    """``ping`` frames (the cheapest the protocol answers) as fast as they go for ``flood_s``
    (at most ``flood_frames``), every answer read: past the rate frames are dropped unprocessed,
    and ``rate_limited`` says so at most once a second."""
    ws, scale = await ws_connect(target), target.scale
    answers = Counter[str]()
    sent = 0
    last_answer = time.monotonic()

    async def read() -> None:
        nonlocal last_answer
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                reply = loads(message)
                answers[reply.get("code") or reply["type"]] += 1
                last_answer = time.monotonic()

    started = time.monotonic()
    reading = asyncio.create_task(read())
    with contextlib.suppress(websockets.ConnectionClosed):
        while time.monotonic() - started < scale.flood_s and sent < scale.flood_frames:
            await ws.send(f'{{"type":"ping","ref":"{sent}"}}')
            sent += 1
    elapsed = time.monotonic() - started
    while time.monotonic() - last_answer < 1.0 and time.monotonic() - started < elapsed + 30:  # noqa: ASYNC110
        await asyncio.sleep(0.1)  # the server answers what it kept, then goes quiet
    answering_s = time.monotonic() - started
    await ws.close()
    await reading
    if ws.close_code not in (None, 1000):
        answers[f"close {ws.close_code}"] += 1
    outcome = Outcome(answers)
    pongs, refusals = answers["pong"], answers["rate_limited"]
    outcome.note = (f"{sent:,} frames in {elapsed:.1f} s ({sent / elapsed:,.0f}/s), "
                    f"{pongs} pongs, {refusals} rate_limited, the rest dropped unread")
    bound = 2 * PING_RATE + PING_RATE * answering_s + 2
    if pongs > bound:
        outcome.problems.append(f"{pongs} pongs, more than the rate allows ({bound:.0f})")
    if refusals > answering_s + 2:
        outcome.problems.append(f"{refusals} rate_limited frames: more than one a second")
    return outcome


NOT_JSON_FRAMES = 30  # per connection, within the burst the rate allows


async def not_json(target: Target) -> Outcome:
    """Frames that are not JSON: each answered ``bad_frame``, the connection kept (a ``ping``
    after them is answered)."""

    async def one() -> str:
        async with await ws_connect(target) as ws:
            for _ in range(NOT_JSON_FRAMES):
                await ws.send("{not json")
            codes = Counter([loads(await ws.recv()).get("code")
                             for _ in range(NOT_JSON_FRAMES)])
            await ws.send('{"type":"ping","ref":"after"}')
            after = loads(await ws.recv())["type"]
        if codes != Counter({"bad_frame": NOT_JSON_FRAMES}):
            return f"unexpected {dict(codes)}"
        return f"bad_frame x{NOT_JSON_FRAMES}, then {after}"

    answers = await gather_limited([one] * target.scale.frames, 10)
    return Outcome(answers, f"{target.scale.frames} connections")


async def not_utf8(target: Target) -> Outcome:
    """A text frame that is not UTF-8, on a socket that never authenticated: close 1007."""

    async def one() -> str:
        reader, writer = await upgrade(target.port, source=ATTACKER)
        try:
            writer.write(frame(TEXT, b"\xff\xfe not utf-8"))
            async with asyncio.timeout(5):
                while True:
                    opcode, payload = await read_frame(reader)
                    if opcode == CLOSE:
                        return f"close {int.from_bytes(payload[:2], 'big')}"
        except (TimeoutError, asyncio.IncompleteReadError, *RESET):
            return "no close frame"
        finally:
            writer.close()

    answers = await gather_limited([one] * target.scale.frames, 10)
    return Outcome(answers, f"{target.scale.frames} connections")


async def oversized_frame(target: Target) -> Outcome:
    """A 70 KB text frame, over ``RTGW_MAX_FRAME_BYTES`` (64 KB): close 1009."""
    big = '{"type":"ping","ref":"' + "x" * 70_000 + '"}'

    async def one() -> str:
        ws = await ws_connect(target)
        try:
            await ws.send(big)
            async with asyncio.timeout(5):
                reply = loads(await ws.recv())
            await ws.close()
            return f"answered {reply.get('code') or reply['type']}"
        except websockets.ConnectionClosed as closed:
            return close_code(closed)
        except TimeoutError:
            return "no answer"

    answers = await gather_limited([one] * target.scale.frames, 10)
    return Outcome(answers, f"{target.scale.frames} connections, {len(big):,} bytes each")


# -- tokens ----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"


def forged_tokens(target: Target) -> dict[str, str]:
    """Tokens an attacker makes: each kind of forgery or confusion, by name."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "attacker", "aud": "authenticated", "role": "authenticated", "iat": now,
        "exp": now + 600, "scope": "orders:read",
    }
    secret = target.secret
    public_pem = target.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    confused = _unsigned({"alg": "HS256", "typ": "JWT", "kid": target.kid}, claims)
    confusion_mac = hmac.new(public_pem, confused.encode(), hashlib.sha256).digest()
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    without_exp = {name: value for name, value in claims.items() if name != "exp"}
    return {
        "wrong signature": jwt.encode(claims, "not-the-secret-" + "w" * 32, "HS256"),
        "alg none": _unsigned({"alg": "none", "typ": "JWT"}, claims) + ".",
        "HS256 signed with the RSA public key": f"{confused}.{_b64(confusion_mac)}",
        "RS256 by another key under the JWKS kid": jwt.encode(
            claims, other_key, "RS256", headers={"kid": target.kid}
        ),
        "expired": jwt.encode({**claims, "iat": now - 7200, "exp": now - 3600}, secret, "HS256"),
        "no exp": jwt.encode(without_exp, secret, "HS256"),
        "wrong aud": jwt.encode({**claims, "aud": "anon"}, secret, "HS256"),
    }


async def forged(target: Target) -> Outcome:
    """Each forged token in an ``auth`` frame, on a new connection: an error frame and a close
    with 4001 (4003 for the expired one), whatever the forgery."""

    def job(kind: str, token: str) -> Callable[[], Awaitable[str]]:
        async def one() -> str:
            async with await ws_connect(target, auth=False) as ws:
                await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
                error = loads(await asyncio.wait_for(ws.recv(), 5))
                try:
                    await asyncio.wait_for(ws.recv(), 5)
                    return f"{kind}: {error.get('code')}, connection kept"
                except websockets.ConnectionClosed as closed:
                    return f"{kind}: {error.get('code')}, {close_code(closed)}"

        return one

    tokens = forged_tokens(target)
    jobs = [job(kind, token) for _ in range(target.scale.token_rounds)
            for kind, token in tokens.items()]
    answers = await gather_limited(jobs, 10)
    return Outcome(answers, f"{len(tokens)} forgeries x {target.scale.token_rounds} rounds")


# -- holding connections ---------------------------------------------------------------------


async def idle_sockets(target: Target) -> Outcome:
    """``idle`` authenticated WebSockets that then say nothing, from as many addresses as the
    per-address limit needs (250 each); memory per socket."""
    count = target.scale.idle
    before = target.gateway.rss_kb()
    sockets: list[ClientConnection] = []

    async def one(index: int) -> str:
        try:
            source = f"127.0.0.{2 + index // PER_ADDRESS}"
            sockets.append(await ws_connect(target, source=source))
        except (OSError, TimeoutError, websockets.WebSocketException, RuntimeError) as exc:
            return f"failed ({type(exc).__name__})"
        return "ready"

    started = time.monotonic()
    answers = await gather_limited([functools.partial(one, i) for i in range(count)], 50)
    opened_s = time.monotonic() - started
    await asyncio.sleep(1.0)
    held = target.gateway.rss_kb()

    async def release() -> None:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

    addresses = (count + PER_ADDRESS - 1) // PER_ADDRESS
    note = (f"{len(sockets):,} open from {addresses} addresses in {opened_s:.1f} s; "
            f"{(held - before) / max(1, len(sockets)):.1f} KB of RSS per socket")
    return Outcome(answers, note, release=release)


# -- faults ----------------------------------------------------------------------------------


async def postgres_restart(target: Target) -> Outcome:
    """``pg_ctl stop -m fast`` under the control stream, then start: the stop must not wait on
    the gateway, and the stream resumes where it was."""
    outcome = Outcome()
    stops: list[float] = []
    for _ in range(target.scale.restarts):
        await asyncio.sleep(1.0)  # a steady stream first
        started = time.monotonic()
        await asyncio.to_thread(target.pg.stop, "fast", 60)
        stops.append(time.monotonic() - started)
        await asyncio.to_thread(target.pg.start)
        started = time.monotonic()
        await asyncio.to_thread(wait_listening, target.port, "/readyz", 60)
        ready = time.monotonic() - started
        outcome.answers["fast stop done"] += 1
        outcome.note += f"stop {stops[-1]:.2f} s, ready {ready:.1f} s after the start; "
    await asyncio.sleep(1.0)
    if max(stops) > 5:
        outcome.problems.append(f"a fast stop took {max(stops):.1f} s")
    outcome.note = outcome.note.rstrip("; ")
    return outcome


def gateway_restart(how: int, exit_code: int, answer: str) -> Attack:
    """Stop the gateway with signal ``how`` under the control stream and start it again (same
    slot, same port): the control client resumes with ``since``."""

    async def attack(target: Target) -> Outcome:
        outcome = Outcome()
        for _ in range(target.scale.restarts):
            await asyncio.sleep(1.0)
            code, down_s = await asyncio.to_thread(target.gateway.restart, how)
            outcome.answers[answer if code == exit_code else f"exit {code}"] += 1
            outcome.note += f"down {down_s:.1f} s (signal to /readyz 200); "
        await asyncio.sleep(1.0)
        outcome.note = outcome.note.rstrip("; ")
        return outcome

    return attack
