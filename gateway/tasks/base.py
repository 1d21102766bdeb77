"""The task queue: where a channel's tasks (``[channels.<c>.tasks.<name>]``) go.

Contract every queue keeps:

* **Before the confirm.** ``enqueue`` returns once every task of the batch is stored durably;
  the router awaits it inside the source's sink, so a batch is never confirmed upstream before
  its tasks are queued. A queue that cannot take them raises ``SinkUnavailable``: the source
  confirms nothing and delivers the batch again after its backoff (fan-out to clients is not
  repeated: the hub drops what it has seen, by position).
* **Exactly once per key.** A task is queued once per (task, change), whatever the source
  redelivers after a crash or a reconnect: the queue remembers how far it enqueued each
  stream's positions (``started`` names the stream), atomically with the jobs.
* **At-least-once work.** A job or delivery runs at least once; it carries the idempotency
  key, the change id (``webhook-id``, and ``id`` in the change JSON), the same on every retry.
* **Only the slot owner enqueues**: the queue sits in the router's path, which only the
  process reading the source runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.errors import RtgwError
from gateway.router import Work


class QueueUnavailable(RtgwError):
    """The task queue's store (Redis) cannot be reached; the message says why."""


@dataclass(slots=True)
class TaskStats:
    """What became of the tasks: ``enqueued`` by this process, the rest by every worker (kept
    in the queue's store), each by task name (``<channel>.<task>``); and the queue's depth."""

    enqueued: dict[str, int] = field(default_factory=dict)
    succeeded: dict[str, int] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)
    dead_lettered: dict[str, int] = field(default_factory=dict)
    waiting: int = 0  # queued, not yet taken by a worker
    retrying: int = 0  # failed, waiting for their next attempt
    dead: int = 0  # dead letters: every attempt failed (``rtgw tasks replay``)


class TaskQueue(Protocol):
    stats: TaskStats

    def started(self, stream: str) -> None:
        """The positions of the items that follow are in position space ``stream``."""

    async def enqueue(self, batch: Sequence[Work]) -> None:
        """Queue the batch's tasks (see the contract above). Raises ``SinkUnavailable``."""

    async def sample(self) -> None:
        """Refresh ``stats`` from the queue's store (best effort, bounded in time)."""

    async def close(self) -> None:
        """Release connections."""
