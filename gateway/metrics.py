"""Every Prometheus metric the gateway exports, and the small hooks that feed them.

Two kinds of metric:

* the delivery latency histogram, kept in ``REGISTRY`` and fed once per batch
  (``schedule_delivery_observation``, the node's batch observer);
* everything else is read when Prometheus scrapes, by ``PartsCollector``, from the counters
  and state the parts expose themselves (connections, hub, router, verifier, source): nothing
  to update on the hot path, and no part knows this module.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.auth import Verifier
from gateway.changes import Item
from gateway.connection import Connections
from gateway.enrich import Enrichment
from gateway.hub import Hub
from gateway.publish import PublishStats
from gateway.roles import Roles
from gateway.router import Router
from gateway.sources.base import Source
from gateway.tasks.base import TaskQueue, TaskStats

# No *_created series: they double the output and nobody graphs them.
disable_created_metrics()  # type: ignore[no-untyped-call]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REGISTRY = CollectorRegistry(auto_describe=True)


class LoopHistogram(Collector):
    """A histogram observed only on the event loop: plain integers per bucket, where
    ``prometheus_client.Histogram`` takes three locks per observation (about 1.5 µs, once per
    transaction). Exported as a Prometheus histogram when scraped."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name, self._documentation = name, documentation
        self._bounds = buckets
        self._counts = [0] * (len(buckets) + 1)  # the last: above every bound
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1  # bounds are inclusive (le)
        self._sum += value

    def collect(self) -> Iterator[Metric]:
        counts, total, cumulative = list(self._counts), self._sum, 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*map(repr, self._bounds), "+Inf"), counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=total
        )


LATENCY = LoopHistogram(
    "rtgw_delivery_latency_seconds",
    "From a transaction's commit in Postgres to its events being written to the subscribers' "
    "sockets (measured once per transaction, one event-loop turn after publishing).",
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REGISTRY.register(LATENCY)


# -- hooks ---------------------------------------------------------------------------------------


def observe_delivery(commit_times_us: Iterable[int]) -> None:
    """Observe commit-to-send latency once per transaction (its commit time, in µs)."""
    now_us = time.time() * 1_000_000
    for commit_us in commit_times_us:
        LATENCY.observe(max(0.0, (now_us - commit_us) / 1_000_000))


def schedule_delivery_observation(changes: Sequence[Item]) -> None:
    """After a batch was published: client writers woken by it run first, then this observes
    their latency (one event-loop turn later, when unthrottled sockets have been written)."""
    commits = {change.commit_time_us for change in changes}
    if commits:
        asyncio.get_running_loop().call_soon(observe_delivery, commits)


# -- a node's state, read at scrape time ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parts:
    """What the collector reads."""

    connections: Connections
    hub: Hub
    router: Router
    verifier: Verifier
    source: Source
    enrichment: Enrichment | None = None
    roles: Roles | None = None
    tasks: TaskQueue | None = None
    slot_owner: Callable[[], bool] = lambda: True
    publishing: PublishStats | None = None


class PartsCollector(Collector):
    """Reads a node's parts when scraped."""

    def __init__(self, parts: Parts) -> None:
        self._parts = parts

    def collect(self) -> Iterator[Metric]:
        parts = self._parts
        hub, router_stats = parts.hub, parts.router.stats
        connections = GaugeMetricFamily(
            "rtgw_connections", "Open client connections, by transport.", labels=("transport",)
        )
        subscriptions = GaugeMetricFamily(
            "rtgw_subscriptions", "Active subscriptions, by transport.", labels=("transport",)
        )
        for transport, (open_, subscribed) in parts.connections.counts().items():
            connections.add_metric((transport,), open_)
            subscriptions.add_metric((transport,), subscribed)
        yield connections
        yield subscriptions
        changes = CounterMetricFamily(
            "rtgw_changes_received",
            "Row changes received from the source, by table and operation.",
            labels=("table", "op"),
        )
        for (schema, table, op), count in router_stats.by_table.items():
            changes.add_metric((f"{schema}.{table}", op), count)
        yield changes
        disconnects = CounterMetricFamily(
            "rtgw_disconnects",
            "Connections that ended, by transport, close code and reason (code 'client': the "
            "client left; 4008 slow_consumer: the outbox overflowed).",
            labels=("transport", "code", "reason"),
        )
        for key, count in parts.connections.ended.items():
            disconnects.add_metric(key, count)
        yield disconnects
        refusals = dict(parts.verifier.refusals)
        timeouts = sum(n for (_, _, reason), n in parts.connections.ended.items()
                       if reason == "auth_timeout")
        if timeouts:
            refusals["auth_timeout"] = timeouts
        auth_failures = CounterMetricFamily(
            "rtgw_auth_failures",
            "Tokens refused (at auth or refresh) and authentication timeouts, by error code.",
            labels=("code",),
        )
        for code, count in refusals.items():
            auth_failures.add_metric((code,), count)
        yield auth_failures
        tokens = parts.verifier.tokens
        token_cache = CounterMetricFamily(
            "rtgw_token_cache_lookups",
            "Tokens looked up in the verified-token cache, by result (hit: no signature check).",
            labels=("result",),
        )
        token_cache.add_metric(("hit",), tokens.hits)
        token_cache.add_metric(("miss",), tokens.misses)
        yield token_cache
        yield GaugeMetricFamily("rtgw_topics", "Topics in the hub.", value=len(hub))
        yield GaugeMetricFamily(
            "rtgw_history_events", "Events kept for resume (what the slot keeps for a restart).",
            value=len(hub.history),
        )
        yield GaugeMetricFamily(
            "rtgw_history_replayed",
            "1 once the history held at start has been replayed from the source, else 0.",
            value=float(hub.caught_up.is_set()),
        )
        yield CounterMetricFamily(
            "rtgw_changes_replayed",
            "Changes the source sent again after a reconnect, recognised by position and dropped.",
            value=hub.stats.replayed,
        )
        yield CounterMetricFamily(
            "rtgw_messages_delivered",
            "Events queued to subscribers (counted once per publish, not per client).",
            value=hub.stats.deliveries,
        )
        yield CounterMetricFamily(
            "rtgw_changes_withheld",
            "Changes on partitioned channels withheld because their partition value is unknown.",
            value=router_stats.withheld,
        )
        yield GaugeMetricFamily(
            "rtgw_source_streaming",
            "1 while the source streams changes, else 0.",
            value=1.0 if parts.source.streaming else 0.0,
        )
        yield GaugeMetricFamily(
            "rtgw_slot_owner",
            "1 while this node reads the source and publishes (the slot owner), else 0.",
            value=float(parts.slot_owner()),
        )
        yield GaugeMetricFamily(
            "rtgw_draining", "1 while the node drains for shutdown.",
            value=float(parts.connections.draining),
        )
        if parts.publishing is not None:
            yield CounterMetricFamily(
                "rtgw_published_events",
                "Events published over HTTP (POST /v1/publish, /v1/publish/batch).",
                value=parts.publishing.published,
            )
            yield CounterMetricFamily(
                "rtgw_publish_failures",
                "Events refused with not_ready after they passed the checks: the database did "
                "not take them, too many bytes waited to be written, or they did not come back "
                "in time.",
                value=parts.publishing.failed,
            )
        if parts.enrichment is not None:
            yield from _enrichment_metrics(parts.enrichment)
        if parts.roles is not None:
            yield from _roles_metrics(parts.roles)
        if parts.tasks is not None:
            yield from _task_metrics(parts.tasks.stats)
        lag = parts.source.lag_bytes
        if lag is not None:
            yield GaugeMetricFamily(
                "rtgw_replication_lag_bytes",
                "WAL bytes between the server's current position and the slot's confirmed "
                "position (sampled periodically).",
                value=lag,
            )


def _enrichment_metrics(enrichment: Enrichment) -> Iterator[Metric]:
    stats = enrichment.stats
    for name, text, value in (
        ("queries", "Lookup queries made (one per looked-up table per transaction).",
         stats.queries),
        ("hits", "Looked-up keys answered from the cache (once per transaction).", stats.hits),
        ("misses", "Looked-up keys fetched from the database.", stats.misses),
        ("invalidated", "Cached rows dropped because the stream showed them changed.",
         stats.invalidated),
        ("failures", "Custom enricher calls that raised or timed out.", stats.failures),
        ("dropped", "Events held back because an enricher failed (on_error = \"drop\").",
         stats.dropped),
        ("cache_errors", "Shared lookup cache (RTGW_CACHE=redis) calls that failed; the "
         "database answered instead.", stats.cache_errors),
    ):
        yield CounterMetricFamily(f"rtgw_enrich_{name}", text, value=value)
    yield GaugeMetricFamily("rtgw_enrich_cache_entries", "Looked-up rows cached.",
                            value=len(enrichment))


def _roles_metrics(roles: Roles) -> Iterator[Metric]:
    stats = roles.stats
    for name, text, value in (
        ("lookups", "Users whose roles were looked up (at auth, refresh or join).", stats.lookups),
        ("hits", "Role lookups answered from the cache.", stats.hits),
        ("queries", "Role queries made (one per batch of users not cached).", stats.queries),
        ("grants", "Roles granted, seen in the stream.", stats.grants),
        ("revocations", "Roles revoked, seen in the stream (a TRUNCATE counts once).",
         stats.revocations),
    ):
        yield CounterMetricFamily(f"rtgw_roles_{name}", text, value=value)
    yield GaugeMetricFamily("rtgw_roles_cache_users", "Users whose roles are cached.",
                            value=len(roles))


def _task_metrics(stats: TaskStats) -> Iterator[Metric]:
    """The channels' tasks: this process's enqueues; the workers' outcomes and the queue's
    depth as Redis holds them (read when scraped)."""
    for name, text, counts in (
        ("enqueued", "Tasks this gateway enqueued (once per task and change), by task.",
         stats.enqueued),
        ("succeeded", "Task attempts that succeeded (every worker), by task.", stats.succeeded),
        ("retried", "Task attempts that failed and were scheduled again, by task.",
         stats.retried),
        ("dead_lettered", "Tasks whose last attempt failed: kept as dead letters, by task.",
         stats.dead_lettered),
    ):
        family = CounterMetricFamily(f"rtgw_tasks_{name}", text, labels=("task",))
        for task, count in counts.items():
            family.add_metric((task,), count)
        yield family
    depth = GaugeMetricFamily(
        "rtgw_tasks_queue_depth",
        "Tasks in the queue: waiting for a worker, waiting to be retried, and dead letters "
        "(rtgw tasks replay).",
        labels=("state",),
    )
    for state, count in (("waiting", stats.waiting), ("retrying", stats.retrying),
                         ("dead", stats.dead)):
        depth.add_metric((state,), count)
    yield depth


def render(parts: CollectorRegistry) -> bytes:
    """The exposition text: process-wide metrics, then the parts'."""
    return generate_latest(REGISTRY) + generate_latest(parts)


def parts_registry(parts: Parts) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PartsCollector(parts))
    return registry
