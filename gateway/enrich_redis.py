"""The shared lookup cache: a ``LookupCache`` (gateway/enrich.py) in Redis, so that several
nodes reading the same database fetch a looked-up row once between them (``RTGW_CACHE=redis``).

Every key carries ``prefix`` (``RTGW_CACHE_PREFIX``) and the stream's id (the database system
and timeline: ``Keeper.started``), so nodes share rows only where their positions compare. A
row's key holds its **version**, the stream position its reader had reached when it read the
row from the database (every change up to there is in the row), then its value (JSON;
``null``: no such row) or nothing: a **tombstone**, left by ``drop`` at the position of the
change. Per looked-up table a marker holds the position of its last TRUNCATE, and one marker the
position of the last ``reset``. Each write is a Lua script, so it is atomic:

* ``drop`` writes a tombstone at the change's position over any older version (a value read
  at or after the change already has it, and stays);
* ``put`` writes a value only over an older version (or a tombstone of its own position), and
  never below a table's or the reset marker: so a reader that read the row before another node
  dropped it cannot write it back. A ``put`` whose ``get`` is ``ttl`` old or more is refused
  whole: a tombstone it should meet may have expired;
* ``get`` returns only values not older than their table's marker and the reset marker.

Every key expires ``ttl_ms`` after its write; at most ``max_entries`` values are kept (an index
of them, sorted by expiry; when full, new rows are not kept until others expire or are
dropped), tombstones and markers are bounded by the changes in one ``ttl``. Redis must keep
what it acknowledged while a node stays connected to it (``maxmemory-policy noeviction``, the
default, so it never evicts a tombstone); a restart breaks every node's connection, and a
node resets the cache (``reset``) before it trusts it again.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from gateway.changes import Row
from gateway.encoding import dumps, loads
from gateway.enrich import CacheUnavailable, Changed, Entry, Target

# A position (84 bits) in decimal, zero-padded: Lua compares versions as strings.
VERSION_DIGITS = 26
TIMEOUT_S = 1.0  # for each Redis call: a slow Redis must not hold the stream up
PART = 1000  # rows written by one script call
T = TypeVar("T")

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# KEYS: the index, then rows (or table markers); ARGV: ttl_ms, then each key's version.
_DROP = """
local dropped = 0
for i = 2, #KEYS do
  local version = ARGV[i]
  local current = redis.call('GET', KEYS[i])
  if not current or string.sub(current, 1, #version) < version then
    if current and #current > #version then dropped = dropped + 1 end
    redis.call('SET', KEYS[i], version, 'PX', ARGV[1])
    redis.call('ZREM', KEYS[1], KEYS[i])
  end
end
return dropped
"""

# KEYS: the reset marker, the table markers, the rows; returns the time (ms), then each value.
_GET = _NOW_MS + """
local found = {now}
for first = 1, #KEYS, 1000 do  -- unpack takes a few thousand values at most
  local part = redis.call('MGET', unpack(KEYS, first, math.min(first + 999, #KEYS)))
  for i = 1, #part do found[#found + 1] = part[i] end
end
return found
"""

# KEYS: the index, the reset marker, the table markers (ARGV[5] of them), the rows.
# ARGV: ttl_ms, the time of the get (ms), max_entries, version, markers, then per row: the
# number of its table marker (1-based) and its value. Returns the values kept.
_PUT = _NOW_MS + """
local ttl, version, markers = tonumber(ARGV[1]), ARGV[4], tonumber(ARGV[5])
if now - tonumber(ARGV[2]) >= ttl then return -1 end
local floor = redis.call('GET', KEYS[2])
if floor and floor > version then return -1 end
local refused = {}
for m = 1, markers do
  local truncated = redis.call('GET', KEYS[2 + m])
  refused[m] = truncated and truncated > version
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local count = redis.call('ZCARD', KEYS[1])
local first = 3 + markers
for i = first, #KEYS do
  local arg = 6 + 2 * (i - first)
  local current = redis.call('GET', KEYS[i])
  -- over nothing, an older version, or a tombstone of this position (current == version)
  if not refused[tonumber(ARGV[arg])] and (not current or current <= version) then
    local indexed = redis.call('ZSCORE', KEYS[1], KEYS[i])
    if indexed or count < tonumber(ARGV[3]) then
      redis.call('SET', KEYS[i], version .. ARGV[arg + 1], 'PX', ttl)
      redis.call('ZADD', KEYS[1], now + ttl, KEYS[i])
      if not indexed then count = count + 1 end
    end
  end
end
return count
"""

# KEYS: the index, the reset marker; ARGV: ttl_ms, version. Values older than the marker are
# deleted (they can no longer be returned, and they would fill the index).
_RESET = """
local current = redis.call('GET', KEYS[2])
if current and current >= ARGV[2] then return redis.call('ZCARD', KEYS[1]) end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1])
for _, key in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local value = redis.call('GET', key)
  if not value or string.sub(value, 1, #ARGV[2]) < ARGV[2] then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], key)
  end
end
return redis.call('ZCARD', KEYS[1])
"""


def _parts(items: list[T]) -> Iterator[list[T]]:
    """``items`` in slices of ``PART``: each script call stays short (Redis runs one at a time)."""
    for start in range(0, len(items), PART):
        yield items[start:start + PART]


def _version(position: int) -> str:
    return f"{position:0{VERSION_DIGITS}d}"


class RedisCache:
    """A ``LookupCache`` in the Redis at ``url``, under ``prefix``."""

    def __init__(
        self, url: str, prefix: str, max_entries: int = 100_000, ttl_s: float = 300.0
    ) -> None:
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # a failure is seen at once (and the cache reset)
        )
        self._prefix = prefix
        self._max_entries = max_entries
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self.started("")
        self._drop = self._redis.register_script(_DROP)
        self._get = self._redis.register_script(_GET)
        self._put = self._redis.register_script(_PUT)
        self._reset = self._redis.register_script(_RESET)
        self._read_at = 0  # Redis's time (ms) at the last ``get``
        self._entries = 0

    @property
    def entries(self) -> int:
        return self._entries

    def started(self, stream: str) -> None:
        """Keys under ``prefix:stream``: positions of another stream are not comparable."""
        self._namespace = f"{self._prefix}:{stream}" if stream else self._prefix
        self._index = f"{self._namespace}:index"
        self._reset_marker = f"{self._namespace}:reset"

    async def drop(self, changed: Changed) -> int:
        dropped = 0
        for part in _parts(list(changed.items())):
            keys = [self._index]
            versions = [str(self._ttl_ms)]
            for (target, key), position in part:
                keys.append(self._marker(target) if key is None else self._row((target, key)))
                versions.append(_version(position))
            dropped += int(await self._call(self._drop, keys, versions))
        return dropped

    async def get(
        self, wanted: Collection[Entry], columns: Mapping[Target, tuple[str, ...]]
    ) -> dict[Entry, Row | None]:
        entries = list(wanted)
        targets = list({target for target, _ in entries})
        keys = [self._reset_marker, *map(self._marker, targets), *map(self._row, entries)]
        now, reset, *values = await self._call(self._get, keys, [])
        self._read_at = int(now)
        floors = dict(zip(targets, values[: len(targets)], strict=True))
        found: dict[Entry, Row | None] = {}
        for entry, value in zip(entries, values[len(targets):], strict=True):
            if value is None or len(value) <= VERSION_DIGITS:
                continue  # not cached, or a tombstone
            version = value[:VERSION_DIGITS]
            if (reset is not None and version < reset) or (
                floors[entry[0]] is not None and version < floors[entry[0]]
            ):
                continue
            row = loads(value[VERSION_DIGITS:])
            if row is None or all(c in row for c in columns[entry[0]]):
                found[entry] = row
        return found

    async def put(self, found: Mapping[Entry, Row | None], position: int) -> None:
        for part in _parts(list(found.items())):
            targets = list({target for (target, _), _ in part})
            number = {target: str(n) for n, target in enumerate(targets, 1)}
            args: list[Any] = [self._ttl_ms, self._read_at, self._max_entries,
                               _version(position), len(targets)]
            for (target, _), row in part:
                args += [number[target], dumps(row)]
            keys = [self._index, self._reset_marker, *map(self._marker, targets),
                    *(self._row(entry) for entry, _ in part)]
            kept = int(await self._call(self._put, keys, args))
            if kept < 0:
                return  # refused whole (see the module)
            self._entries = kept

    async def reset(self, position: int) -> None:
        self._entries = int(await self._call(
            self._reset, [self._index, self._reset_marker], [self._ttl_ms, _version(position)]
        ))

    async def close(self) -> None:
        await self._redis.aclose()

    def _row(self, entry: Entry) -> str:
        target, key = entry
        return f"{self._namespace}:r:{self._table(target)}:{dumps(list(key)).decode()}"

    def _marker(self, target: Target) -> str:
        return f"{self._namespace}:t:{self._table(target)}"

    @staticmethod
    def _table(target: Target) -> str:
        return f"{target.schema}.{target.table}({','.join(target.key_columns)})"

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(f"redis: {type(exc).__name__}: {exc}") from None
