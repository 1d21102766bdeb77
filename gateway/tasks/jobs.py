"""How a task becomes an RQ job, and how a chunk of them is written to Redis in one call.

A job's hash is RQ's own: ``Job.to_dict`` of a job of the same task, built by RQ once per task
(``shared_fields``), with the fields that differ from job to job filled in (``VARYING``; the
timestamps once per chunk). One Lua script per chunk checks the stream's mark, writes the
hashes, pushes the ids on the queue and moves the mark, atomically: no WATCH, no retry, and
the arguments of a job are a handful of strings, not its twenty fields. RQ's worker, its
scheduler and its registries see the jobs as any RQ enqueued
(tests/integration/test_task_jobs.py compares them with RQ's, field by field).

A job's id is ``<queue>-<change id>-<task digest>``: deterministic, so a task is the same job
on every attempt. Jobs and their arguments are JSON (RQ's JSON serializer reads them): a job
function is called with one string, the change as JSON (gateway.router.change_body); a webhook
delivery (gateway.tasks.webhook.deliver) with the URL, the webhook-id and the body. The job's
data is a zlib stream as RQ's is, but stored, not compressed: compressing cost more than the
rest of the job, and a job's hash lives only until a worker ran it.
"""

from __future__ import annotations

import functools
import hashlib
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from rq import Queue, Retry
from rq.job import Job
from rq.utils import now, utcformat

from gateway.encoding import dumps_text
from gateway.router import Work, change_body

WEBHOOK_JOB = "gateway.tasks.webhook.deliver"
DEAD_LETTER_TTL_S = 30 * 24 * 3600  # how long RQ keeps a dead letter
JITTER = 0.2  # each retry delay is drawn from +-20% around the configured one
VARYING = ("data", "description", "meta", "retry_intervals")  # per job, in this order
STAMPED = ("created_at", "enqueued_at")  # per chunk

# KEYS: the mark, the queue's list, RQ's set of queues, then each job's hash.
# ARGV: the stream; the number of varying fields and their names; the number of shapes and
# each shape (its number of field pairs, then the pairs); then per job its shape (1-based),
# id, position (decimal) and varying values. Jobs come in position order: those at or before
# the stream's mark are skipped (their number is returned), the rest written and pushed.
ENQUEUE = """
local function later(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local mark = redis.call('HGET', KEYS[1], ARGV[1])
local names, shapes = {}, {}
for j = 1, tonumber(ARGV[2]) do names[j] = ARGV[2 + j] end
local i = 3 + #names
for s = 1, tonumber(ARGV[i]) do
  local fields, pairs = {}, tonumber(ARGV[i + 1])
  for j = 1, 2 * pairs do fields[j] = ARGV[i + 1 + j] end
  i = i + 1 + 2 * pairs
  for j = 1, #names do
    fields[2 * (pairs + j) - 1] = names[j]
    fields[2 * (pairs + j)] = ''
  end
  shapes[s] = {fields, 2 * pairs}
end
i = i + 1
local skipped, top = 0, nil
for k = 4, #KEYS do
  local position = ARGV[i + 2]
  if mark == false or later(position, mark) then
    local shape = shapes[tonumber(ARGV[i])]
    local fields, base = shape[1], shape[2]
    for j = 1, #names do fields[base + 2 * j] = ARGV[i + 2 + j] end
    redis.call('HSET', KEYS[k], unpack(fields))
    redis.call('RPUSH', KEYS[2], ARGV[i + 1])
    top = position
  else
    skipped = skipped + 1
  end
  i = i + 3 + #names
end
if top then
  redis.call('HSET', KEYS[1], ARGV[1], top)
  redis.call('SADD', KEYS[3], KEYS[2])
end
return skipped
"""


def jittered(delays: Sequence[int], draw: Callable[[], float] = random.random) -> list[int]:
    """The retry delays of one job: each within ``JITTER`` of the configured one, so failures
    that came together do not retry together."""
    return [round(delay * (1 - JITTER + 2 * JITTER * draw())) for delay in delays]


@functools.cache
def digest(task: str) -> str:
    return hashlib.blake2b(task.encode(), digest_size=6).hexdigest()


def job_id(queue: str, work: Work) -> str:
    change = work.payload.change.id
    return f"{queue}-{change.lsn:016X}-{change.seq:06d}-{digest(work.task.name)}"


def webhook_body(work: Work) -> str:
    """A Standard Webhooks payload: ``{"type": "<channel>.<op>", "timestamp", "data"}``."""
    payload = work.payload
    return dumps_text({
        "type": f"{payload.channel.name}.{payload.op.lower()}",
        "timestamp": payload.change.commit_time,
        "data": change_body(payload),
    })


def arguments(work: Work) -> tuple[str, list[str]]:
    """The job's function and its arguments."""
    task = work.task
    if task.job is not None:
        return task.job.replace(":", "."), [dumps_text(change_body(work.payload))]
    assert task.webhook is not None, "channels.py requires a job or a webhook"
    return WEBHOOK_JOB, [task.webhook, str(work.payload.change.id), webhook_body(work)]


def stored(data: bytes) -> bytes:
    """``data`` as a zlib stream of stored blocks (what ``zlib.decompress`` reads, at a
    fraction of the cost of compressing; a small window keeps the set-up cheap)."""
    compressor = zlib.compressobj(0, zlib.DEFLATED, 9, 1)
    return compressor.compress(data) + compressor.flush()


def shared_fields(queue: Queue, name: str, function: str, delays: Sequence[int]) -> list[bytes]:
    """The fields (and values, in turn) that every job of task ``name`` shares: those of a job
    RQ builds as it would enqueue it, but the ``VARYING`` and ``STAMPED`` ones."""
    job = queue.create_job(
        function, args=(), job_id="shape", description=name, meta={"task": name},
        retry=Retry(len(delays), list(delays)) if delays else None,
        result_ttl=0, failure_ttl=DEAD_LETTER_TTL_S,
    )
    job.enqueued_at = now()
    encoder = queue.connection.get_encoder()  # as redis-py encodes HSET's arguments
    return [
        part for field, value in job.to_dict().items() if field not in VARYING + STAMPED
        for part in (encoder.encode(field), encoder.encode(value))  # type: ignore[no-untyped-call]
    ]


@dataclass(frozen=True, slots=True)
class Call:
    """One atomic call of the ``ENQUEUE`` script."""

    keys: list[str]
    args: list[Any]


class JobWriter:
    """Writes chunks of works as RQ jobs on ``queue``, past each stream's mark in ``mark``."""

    def __init__(self, queue: Queue, delays: Sequence[int], mark: str) -> None:
        self._queue = queue
        self._delays = tuple(delays)
        self._varying = VARYING if delays else VARYING[:-1]  # retry_intervals with retries
        self._keys = (mark, queue.key, Queue.redis_queues_keys)
        self._script = queue.connection.register_script(ENQUEUE)
        self._shared: dict[str, list[bytes]] = {}  # by task name

    def prepare(self, chunk: Sequence[Work], stream: str) -> Call:
        """The call that enqueues the works of ``chunk`` (in position order) past the stream's
        mark and moves the mark."""
        stamp = utcformat(now())
        shapes: dict[str, int] = {}  # the chunk's tasks: their shape's place, from 1
        shared: list[Any] = []
        keys = list(self._keys)
        jobs: list[Any] = []
        queue, delays = self._queue.name, self._delays
        for work in chunk:
            task = work.task
            function, args = arguments(work)
            place = shapes.get(task.name)
            if place is None:
                place = shapes[task.name] = len(shapes) + 1
                fields = self._shared_fields(task.name, function)
                shared += [len(fields) // 2 + 2, *fields, STAMPED[0], stamp, STAMPED[1], stamp]
            identifier = job_id(queue, work)
            keys.append(Job.key_for(identifier))
            key = str(work.payload.change.id)
            jobs += [
                place, identifier, str(work.position),
                stored(orjson.dumps([function, None, args, {}])),
                f"{task.name} {key}",
                orjson.dumps({"task": task.name, "key": key}),
            ]
            if delays:
                jobs.append(orjson.dumps(jittered(delays)))
        return Call(keys, [stream, len(self._varying), *self._varying, len(shapes), *shared, *jobs])

    def send(self, call: Call) -> int:
        """Make ``call`` (blocking): how many of its jobs were at or before the mark, skipped."""
        return int(self._script(keys=call.keys, args=call.args))

    def _shared_fields(self, name: str, function: str) -> list[bytes]:
        fields = self._shared.get(name)
        if fields is None:
            fields = self._shared[name] = shared_fields(self._queue, name, function, self._delays)
        return fields
