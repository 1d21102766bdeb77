"""The Redis bus: one slot owner publishes, every node receives the topic bases its clients want,
and history lives in Redis Streams that every node reads (see ``base.py`` for the contract).

Keys, under ``rtgw:<slot>:`` (the namespace):

* ``h:<base>`` (and ``h:<channel>\\0*`` for TRUNCATEs): a stream per topic base whose entry ids
  *are* the positions (``<commit LSN>-<place in the transaction>``). ``XADD`` with an explicit
  id must grow, so a new owner replaying the slot cannot write an entry twice: what Redis
  refuses is not published again (and what Redis held when the owner took its token is not
  even sent). Each stream keeps at most ``history_size`` entries (the oldest goes with
  ``XDEL``, so the stream's ``max-deleted-entry-id`` says how far it was trimmed) and expires
  when nothing was added for twice ``history_age_s``.
* ``owner``: the fencing token. A publisher takes a new one when its source starts a session
  (``start``); every write checks it in the same Lua script, so a deposed owner writes nothing.
* ``stream`` (the position space), ``head`` (the last position published; ``head:ids``
  holds it as a stream id, which must grow, so a replay never moves it back), ``floor`` (history
  starts after it: where the first owner, or the first after Redis lost its data, began),
  ``cutoff`` (events at or below it are older than ``history_age_s`` or beyond
  ``history_total``), ``gaps`` (per channel: events up to there may be lost).
* Pub/sub: ``b:<base>`` carries publications with a target of that base, ``all`` carries
  what every node needs (TRUNCATEs, published events, gaps, starts, and a tick with the last
  position of each batch, so every node's position follows the stream).

A node subscribes to ``b:<base>`` for the bases its hub wants, and hands its receivers what one
read of the pub/sub connection brought as one batch (a hub then writes each socket once for
it: ``gateway.writes``). A client that resumes reads the
streams after that subscription is confirmed, so nothing falls between the read and the live
publications. Losing the connection is reported through ``watch``: the node closes its clients
(1012) until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from gateway.bus import wire
from gateway.bus.base import Archive, BusUnavailable, Publication, Receiver
from gateway.changes import PLACE_BITS
from gateway.channels import ChannelSet
from gateway.encoding import dumps, loads
from gateway.history import Entry

log = logging.getLogger("rtgw.bus")

PLACE_MASK = (1 << PLACE_BITS) - 1
RECONNECT_S = 0.5  # between attempts to reach Redis again
LISTEN_WAIT_S = 5.0  # how long a subscription waits for Redis to confirm its base
RETRY_S = 0.5  # between attempts of a start or a gap that Redis did not take
TRIM_EVERY_S = 1.0  # how often the owner moves the age cutoff while idle
PUBLICATION, GAP, START = b"p", b"g", b"s"

# ARGV: owner key, token, head key, maxlen, ttl ms, head position, control channel, tick,
# cutoff key, cutoff ('' to leave it), head id, then 5 per target: stream, id, entry, channel,
# message. The head (and the tick) only move forward: ``<head>:ids`` is a stream whose ids
# must grow, like the topic bases'.
_PUBLISH = """
if redis.call('GET', ARGV[1]) ~= ARGV[2] then return redis.error_reply('FENCED') end
for i = 12, #ARGV, 5 do
  local fresh = true
  if ARGV[i] ~= '' then
    local added = redis.pcall('XADD', ARGV[i], ARGV[i+1], 'd', ARGV[i+2])
    if type(added) == 'table' and added.err then fresh = false
    else
      if redis.call('XLEN', ARGV[i]) > tonumber(ARGV[4]) then
        local oldest = redis.call('XRANGE', ARGV[i], '-', '+', 'COUNT', 1)
        redis.call('XDEL', ARGV[i], oldest[1][1])  -- XDEL (not MAXLEN) records the floor
      end
      redis.call('PEXPIRE', ARGV[i], ARGV[5])
    end
  end
  if fresh and ARGV[i+3] ~= '' then redis.call('PUBLISH', ARGV[i+3], ARGV[i+4]) end
end
if ARGV[6] ~= '' then
  local ticked = redis.pcall('XADD', ARGV[3] .. ':ids', 'MAXLEN', '1', ARGV[11], 'p', ARGV[6])
  if not (type(ticked) == 'table' and ticked.err) then
    redis.call('SET', ARGV[3], ARGV[6])
    redis.call('PUBLISH', ARGV[7], ARGV[8])
  end
end
if ARGV[10] ~= '' then redis.call('SET', ARGV[9], ARGV[10]) end
return 1
"""
# KEYS: owner, stream, floor, head. ARGV: stream id, after, control channel, message.
_START = """
local token = redis.call('INCR', KEYS[1])
if redis.call('GET', KEYS[2]) ~= ARGV[1] or redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('SET', KEYS[3], ARGV[2])
  redis.call('SET', KEYS[4], ARGV[2])
  redis.call('DEL', KEYS[4] .. ':ids')
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return {token, redis.call('GET', KEYS[4])}
"""
# KEYS: owner, head, floor, gaps. ARGV: token, control channel, message, channels...
_GAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end
local head = redis.call('GET', KEYS[2])
if head then
  if #ARGV == 3 then redis.call('SET', KEYS[3], head) end
  for i = 4, #ARGV do redis.call('HSET', KEYS[4], ARGV[i], head) end
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""


def stream_id(position: int) -> str:
    return f"{position >> PLACE_BITS}-{position & PLACE_MASK}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def position_of(entry_id: bytes | str) -> int:
    lsn, _, place = _text(entry_id).partition("-")
    return (int(lsn) << PLACE_BITS) | int(place)


@dataclass(frozen=True, slots=True)
class RedisBusConfig:
    url: str
    namespace: str  # "rtgw:<slot>"
    history_size: int = 1000  # per topic base
    history_total: int = 100_000
    history_age_s: float = 300.0


class _Window:
    """The owner's record of what it published (position, commit time), bounded like history:
    where the age and total cutoff stands, and the oldest commit a slot must keep."""

    def __init__(self, total: int, age_s: float) -> None:
        self._kept: deque[tuple[int, float]] = deque()
        self._total, self._age_s = total, age_s
        self.cutoff = -1

    def add(self, position: int, committed_at: float) -> None:
        self._kept.append((position, committed_at))

    def trim(self, now: float) -> bool:
        """Drop what is over the bounds; True when the cutoff moved."""
        kept, expired, moved = self._kept, now - self._age_s, False
        while kept and (len(kept) > self._total or kept[0][1] < expired):
            self.cutoff = max(self.cutoff, kept.popleft()[0])
            moved = True
        return moved

    def oldest_needed(self) -> int | None:
        return self._kept[0][0] >> PLACE_BITS if self._kept else None


class RedisBus:
    def __init__(self, config: RedisBusConfig, channels: ChannelSet) -> None:
        self.config = config
        self.archive: Archive | None = self
        self._channels = channels
        ns = config.namespace
        self._keys = {name: f"{ns}:{name}" for name in
                      ("owner", "stream", "floor", "head", "cutoff", "gaps", "all")}
        self._receivers: list[Receiver] = []
        self._watchers: list[Callable[[bool], None]] = []
        self.wanted: dict[str, int] = {}
        self._asked: set[str] = set()  # pub/sub channels subscribed to (or being)
        self._outstanding: dict[str, int] = {}  # (un)subscribes Redis has not answered yet
        self._bases_prefix = f"{ns}:b:"
        self._confirmed = asyncio.Event()  # set when a confirmation or publication arrives
        self._resubscribe = asyncio.Event()
        self._connected = False
        self._last = -1  # the last position handed to the receivers
        self._arrived: list[Publication] = []  # read, not handed on yet (``_hand_on``)
        self._stream: str | None = None  # the position space they are in
        self._token: str | None = None  # this publisher's fencing token
        self._written = -1  # Redis held every position up to here when the token was taken
        self._window = _Window(config.history_total, config.history_age_s)
        self._writes: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: redis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    # -- the Bus -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def owner(self) -> bool:
        """Whether this node holds the current fencing token (as far as it knows)."""
        return self._token is not None

    def watch(self, changed: Callable[[bool], None]) -> None:
        self._watchers.append(changed)

    def attach(self, receiver: Receiver) -> None:
        self._receivers.append(receiver)

    def want(self, base: str) -> None:
        count = self.wanted.get(base, 0)
        self.wanted[base] = count + 1
        if count == 0:
            self._resubscribe.set()

    def unwant(self, base: str) -> None:
        count = self.wanted.get(base, 0) - 1
        if count > 0:
            self.wanted[base] = count
        else:
            self.wanted.pop(base, None)
            self._resubscribe.set()

    async def settle(self) -> None:
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writes.put_nowait(("settled", written))
        try:
            async with asyncio.timeout(LISTEN_WAIT_S):
                await written  # every start, gap and publish queued before it is in Redis
            await self._listen_to(self._keys["all"])
            for base in list(self.wanted):
                await self._listen_to(self._base_channel(base))
            head = await self._require_client().get(self._keys["head"])
            async with asyncio.timeout(LISTEN_WAIT_S):
                while head is not None and self._last < int(head):
                    self._confirmed.clear()
                    await self._confirmed.wait()
        except (RedisError, OSError, TimeoutError) as exc:
            raise BusUnavailable(f"Redis did not answer: {exc}") from None

    async def publish(self, batch: Sequence[Publication]) -> None:
        if not batch:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writes.put_nowait(("publish", batch, done))
        await done

    def gap(self, channels: Collection[str] | None, reason: str) -> None:
        self._writes.put_nowait(("gap", None if channels is None else sorted(channels), reason))

    def start(self, stream: str, after: int) -> None:
        self._token = None  # publishes wait behind the start, which takes a new token
        self._writes.put_nowait(("start", stream, after))

    # -- the Archive -------------------------------------------------------------------------

    async def recall(self, channel: str, base: str, after: int | None) -> list[Entry] | None:
        self.want(base)
        try:
            await self._listen_to(self._base_channel(base))
            if after is None:
                return []
            return await self._read(channel, base, after)
        except (RedisError, OSError, TimeoutError) as exc:
            raise BusUnavailable(f"Redis did not answer: {exc}") from None
        finally:
            self.unwant(base)  # the hub wants it before the next await

    def oldest_needed(self) -> int | None:
        return self._window.oldest_needed()

    async def _read(self, channel: str, base: str, after: int) -> list[Entry] | None:
        client = self._require_client()
        streams = (self._stream_key(base), self._stream_key(f"{channel}\0*"))
        async with client.pipeline(transaction=False) as pipe:
            pipe.mget(self._keys["floor"], self._keys["cutoff"])
            pipe.hget(self._keys["gaps"], channel)
            for key in streams:
                pipe.xinfo_stream(key)
                pipe.xrange(key, f"({stream_id(after)}", "+")
            floors, gap, *read = await pipe.execute(raise_on_error=False)
        if floors[0] is None:
            return None  # no history was started, or Redis lost it
        floor = max(int(floors[0]), int(floors[1] or -1), int(gap or -1))
        entries: list[Entry] = []
        for info, found in zip(read[::2], read[1::2], strict=True):
            if isinstance(info, dict):
                floor = max(floor, position_of(info.get("max-deleted-entry-id", b"0-0")))
            if isinstance(found, list):
                entries.extend(e for _, fields in found if (e := self._entry(fields)) is not None)
        if after < floor:
            return None
        entries.sort(key=lambda entry: entry.position)
        return entries

    def _entry(self, fields: dict[bytes, bytes]) -> Entry | None:
        """A stream entry as history, or None when this node cannot show it (a channel it
        does not define, or bytes it cannot read: logged)."""
        try:
            publication = wire.decode(fields[b"d"], self._channels)
        except (ValueError, KeyError, TypeError):
            log.warning("skipped a history entry that cannot be read: %.200r", fields)
            return None
        if not publication.targets:
            return None
        target = publication.targets[0]
        return Entry(publication.position, target.channel, target.base, target.payload,
                     publication.committed_at)

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> RedisBus:
        self._client = client = redis.Redis.from_url(
            self.config.url, retry=Retry(NoBackoff(), 0)
        )
        self._scripts = {name: client.register_script(text) for name, text in
                         (("publish", _PUBLISH), ("start", _START), ("gap", _GAP))}
        self._tasks = [
            asyncio.create_task(self._listen(), name="rtgw-bus-listen"),
            asyncio.create_task(self._write(), name="rtgw-bus-write"),
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._writes.empty():
            op = self._writes.get_nowait()
            if op[0] == "publish" and not op[2].done():
                op[2].set_exception(BusUnavailable("the bus stopped"))
        if self._client is not None:
            await self._client.aclose()

    # -- receiving ---------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Keep a pub/sub connection: subscribe, learn the stream, hand on what arrives;
        on any failure report the loss and start again."""
        while True:
            pubsub = self._require_client().pubsub()
            try:
                await self._session(pubsub)
            except (RedisError, OSError) as exc:
                log.warning("lost Redis (the bus): %s", exc)
            except Exception as exc:  # a bug: never leave the node starved silently
                log.error("the bus's listener failed; reconnecting", exc_info=exc)
            finally:
                self._asked.clear()
                self._outstanding.clear()
                self._set_connected(False)
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(RECONNECT_S)

    async def _session(self, pubsub: PubSub) -> None:
        control = self._keys["all"]
        await self._ask(pubsub, {control}, subscribe=True)
        pending = asyncio.create_task(self._follow_interest(pubsub))
        try:
            while True:
                # While publications wait to be handed on, take only what this read brought
                # (``timeout=0``: what is buffered already); then hand them on as one batch.
                message = await pubsub.get_message(timeout=0 if self._arrived else None)
                if message is None:
                    self._hand_on()
                    continue
                kind, channel = message["type"], _text(message["channel"])
                if kind != "message":
                    self._hand_on()  # everything else stays in order with the publications
                if kind in ("subscribe", "unsubscribe"):
                    self._outstanding[channel] = self._outstanding.get(channel, 1) - 1
                    self._confirmed.set()
                    if kind == "subscribe" and channel == control:
                        known = await self._require_client().mget(
                            self._keys["stream"], self._keys["head"]
                        )
                        if known[0] is not None:
                            self._begin(_text(known[0]), int(known[1] or 0))
                elif kind == "message":
                    self._handle(message["data"])
        finally:
            self._hand_on()  # what was read before the connection went is good
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending

    async def _follow_interest(self, pubsub: PubSub) -> None:
        """Subscribe to the bases wanted, unsubscribe from those no longer wanted."""
        while True:
            self._resubscribe.clear()
            gone = {c for c in self._asked if c.startswith(self._bases_prefix)} - self._wanted()
            if gone:
                await self._ask(pubsub, gone, subscribe=False)
            new = self._wanted() - self._asked
            if new:
                await self._ask(pubsub, new, subscribe=True)
            if not self._resubscribe.is_set():
                await self._resubscribe.wait()

    async def _ask(self, pubsub: PubSub, channels: set[str], *, subscribe: bool) -> None:
        """Send a (un)subscribe; a channel is listened to once every command about it is
        answered and it is still asked for (Redis answers in order)."""
        for channel in channels:
            self._outstanding[channel] = self._outstanding.get(channel, 0) + 1
        if subscribe:
            self._asked |= channels
            await pubsub.subscribe(*channels)
        else:
            self._asked -= channels
            await pubsub.unsubscribe(*channels)

    def _wanted(self) -> set[str]:
        return {self._base_channel(base) for base in self.wanted}

    def _listening(self, channel: str) -> bool:
        return self._connected and channel in self._asked and not self._outstanding.get(channel)

    async def _listen_to(self, channel: str) -> None:
        async with asyncio.timeout(LISTEN_WAIT_S):
            while not self._listening(channel):
                self._confirmed.clear()
                await self._confirmed.wait()

    def _begin(self, stream: str, after: int) -> None:
        """The stream (re)starts: a new owner (connected), or this node (re)connected, when
        what it kept may have holes and ``after`` is where Redis stands."""
        joining = not self._connected
        for receiver in self._receivers:
            if joining:
                receiver.rejoin(stream, after)
            else:
                receiver.start(stream, after)
        same = stream == self._stream and not joining
        self._last = max(self._last, after) if same else after
        self._stream = stream
        self._set_connected(True)

    def _handle(self, data: bytes) -> None:
        kind, body = data[:1], data[1:]
        if kind == PUBLICATION:
            try:
                publication = wire.decode(body, self._channels)
            except (ValueError, KeyError, TypeError):
                log.warning("skipped a bus message that cannot be read: %.200r", data)
                return
            arrived = self._arrived
            if publication.position <= (arrived[-1].position if arrived else self._last):
                return  # the same publication through another of its bases, or a replay
            arrived.append(publication)
            return
        self._hand_on()  # a gap or a start comes after what was read before it
        if kind == GAP:
            gap = loads(body)
            for receiver in self._receivers:
                receiver.gap(gap["channels"], gap["reason"])
        elif kind == START:
            start = loads(body)
            self._begin(start["stream"], int(start["after"]))

    def _hand_on(self) -> None:
        """Hand the publications read so far to the receivers, as one batch (so a hub holds
        their frames and writes each socket's once: ``gateway.writes``)."""
        batch = self._arrived
        if not batch:
            return
        self._arrived = []
        self._last = batch[-1].position
        for receiver in self._receivers:
            receiver.receive(batch)
        self._confirmed.set()

    def _set_connected(self, connected: bool) -> None:
        if connected is self._connected:
            return
        self._connected = connected
        self._confirmed.set()
        for changed in self._watchers:
            changed(connected)

    # -- publishing (the slot owner) -----------------------------------------------------------

    async def _write(self) -> None:
        """Carry out starts, gaps and publishes in order. A start or gap Redis did not take is
        retried (later publishes wait behind it); a publish fails back to its caller."""
        while True:
            try:
                async with asyncio.timeout(TRIM_EVERY_S):
                    op = await self._writes.get()
            except TimeoutError:
                if self._token is not None and self._window.trim(time.time()):
                    with contextlib.suppress(RedisError, OSError, BusUnavailable):
                        await self._run_publish([])
                continue
            while True:
                try:
                    await self._carry_out(op)
                    break
                except Exception as exc:
                    unavailable = isinstance(exc, RedisError | OSError | BusUnavailable)
                    if op[0] == "publish":
                        if not op[2].done():
                            op[2].set_exception(
                                BusUnavailable(f"Redis refused: {exc}") if unavailable else exc
                            )
                        break
                    if not unavailable or "FENCED" in str(exc):
                        log.warning("a %s was dropped: %s", op[0], exc)
                        break
                    log.warning("Redis did not take a %s (%s); retrying", op[0], exc)
                    await asyncio.sleep(RETRY_S)

    async def _carry_out(self, op: tuple[Any, ...]) -> None:
        keys = self._keys
        match op:
            case ("settled", written):
                if not written.done():
                    written.set_result(None)
            case ("start", stream, after):
                message = START + dumps({"stream": stream, "after": after})
                token, head = await self._scripts["start"](
                    (keys["owner"], keys["stream"], keys["floor"], keys["head"]),
                    (stream, str(after), keys["all"], message),
                )
                self._token, self._written = str(token), int(head or after)
                log.info("this gateway publishes to the bus (fencing token %s)", token)
            case ("gap", channels, reason):
                if self._token is None:
                    raise BusUnavailable("FENCED: no token")
                message = GAP + dumps({"channels": channels, "reason": reason})
                await self._scripts["gap"](
                    (keys["owner"], keys["head"], keys["floor"], keys["gaps"]),
                    (self._token, keys["all"], message, *(channels or ())),
                )
            case ("publish", batch, done):
                await self._run_publish(batch)
                if not done.done():
                    done.set_result(None)

    async def _run_publish(self, batch: Sequence[Publication]) -> None:
        if self._token is None:
            raise BusUnavailable("this gateway does not own the slot")
        args: list[Any] = []
        for publication in batch:
            self._window.add(publication.position, publication.committed_at)
            if publication.position > self._written:  # a replay: Redis holds the rest
                args.extend(self._publication_args(publication))
        moved = self._window.trim(time.time())
        if batch and batch[-1].position <= self._written and not moved:
            return
        head = ""
        tick = b""
        if batch:
            last = batch[-1]
            head = str(last.position)
            tick = PUBLICATION + wire.encode(Publication(last.position, last.committed_at))
        ttl_ms = int(self.config.history_age_s * 2000) + 1
        try:
            await self._scripts["publish"]((), (
                self._keys["owner"], self._token, self._keys["head"], self.config.history_size,
                ttl_ms, head, self._keys["all"], tick, self._keys["cutoff"],
                str(self._window.cutoff) if moved else "",
                stream_id(batch[-1].position) if batch else "", *args,
            ))
        except ResponseError as exc:
            if "FENCED" in str(exc):
                self._token = None
                log.warning("deposed: another gateway took the slot; publishing stops here")
            raise

    def _publication_args(self, publication: Publication) -> list[Any]:
        encoded = wire.encode(publication)
        message = PUBLICATION + encoded
        entry_id = stream_id(publication.position)
        args: list[Any] = []
        # Every node: a published event (its node waits for it), and role changes (each node
        # applies them at their place, whatever it wants).
        everyone = publication.receipt is not None or bool(publication.roles)
        alone = (
            len(publication.targets) == 1 and publication.receipt is None and not publication.roles
        )
        for target in publication.targets:
            entry = encoded if alone else wire.encode(
                Publication(publication.position, publication.committed_at, (target,))
            )
            if target.base is None:  # a TRUNCATE: every node
                key, channel = self._stream_key(f"{target.channel}\0*"), self._keys["all"]
            else:
                key, channel = self._stream_key(target.base), self._base_channel(target.base)
            args += [key, entry_id, entry, channel, message]
            everyone = everyone and target.base is not None
        if everyone:
            args += ["", "", "", self._keys["all"], message]
        return args

    # -- names -------------------------------------------------------------------------------

    def _stream_key(self, key: str) -> str:
        return f"{self.config.namespace}:h:{key}"

    def _base_channel(self, base: str) -> str:
        return f"{self.config.namespace}:b:{base}"

    def _require_client(self) -> redis.Redis:
        if self._client is None:
            raise BusUnavailable("the bus is not entered")
        return self._client

