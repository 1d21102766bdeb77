"""Every Prometheus metric the gateway exports, and the small hooks that feed them.

Two kinds of metric:

* process-wide counters and the latency histogram, kept in ``REGISTRY`` and fed by cheap calls
  (once per batch, per connection end or per auth failure, never per subscriber and message);
* a node's state (connections, subscriptions, topics, deliveries, replication lag), read from
  the node when Prometheus scrapes, by ``NodeCollector``: nothing to update on the hot path.

There is no bus yet, so no bus lag: each process is its own bus.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.auth import Claims, Verifier
from gateway.changes import Change, Item
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.node import Node


# No *_created series: they double the output and nobody graphs them.
disable_created_metrics()  # type: ignore[no-untyped-call]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REGISTRY = CollectorRegistry(auto_describe=True)

CHANGES = Counter(
    "rtgw_changes_received",
    "Row changes received from the source, by table and operation.",
    ("table", "op"),
    registry=REGISTRY,
)
LATENCY = Histogram(
    "rtgw_delivery_latency_seconds",
    "From a transaction's commit in Postgres to its events being written to the subscribers' "
    "sockets (measured once per transaction, one event-loop turn after publishing).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
DISCONNECTS = Counter(
    "rtgw_disconnects",
    "Connections that ended, by transport, close code and reason (code 'client': the client "
    "left; 4008 slow_consumer: the outbox overflowed).",
    ("transport", "code", "reason"),
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "rtgw_auth_failures",
    "Tokens refused (at auth or refresh) and authentication timeouts, by error code.",
    ("code",),
    registry=REGISTRY,
)

# -- hooks ---------------------------------------------------------------------------------------

_change_children: dict[tuple[str, str, str], Callable[[float], None]] = {}


def record_changes(items: Sequence[Item]) -> None:
    """Count a batch of changes (published events are not changes). One dict lookup per change;
    label children are cached."""
    counts: dict[tuple[str, str, str], int] = {}
    for change in items:
        if type(change) is not Change:
            continue
        key = (change.schema, change.table, change.op.value)
        counts[key] = counts.get(key, 0) + 1
    for key, count in counts.items():
        inc = _change_children.get(key)
        if inc is None:
            inc = CHANGES.labels(f"{key[0]}.{key[1]}", key[2]).inc
            _change_children[key] = inc
        inc(count)


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


def record_disconnect(transport: str, code: int | None, reason: str) -> None:
    DISCONNECTS.labels(transport, "client" if code is None else str(code), reason).inc()
    if reason == "auth_timeout":
        AUTH_FAILURES.labels(reason).inc()


class MeteredVerifier(Verifier):
    """A ``Verifier`` that counts the tokens it refuses, by error code."""

    async def verify(self, token: str) -> Claims:
        try:
            return await super().verify(token)
        except GatewayError as exc:
            AUTH_FAILURES.labels(exc.code).inc()
            raise


# -- a node's state, read at scrape time ---------------------------------------------------------


class NodeCollector(Collector):
    """Reads a node's gauges when scraped."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        node = self._node
        connections = GaugeMetricFamily(
            "rtgw_connections", "Open client connections, by transport.", labels=("transport",)
        )
        subscriptions = GaugeMetricFamily(
            "rtgw_subscriptions", "Active subscriptions, by transport.", labels=("transport",)
        )
        for transport, (open_, subscribed) in node.connection_counts().items():
            connections.add_metric((transport,), open_)
            subscriptions.add_metric((transport,), subscribed)
        yield connections
        yield subscriptions
        yield GaugeMetricFamily("rtgw_topics", "Topics in the hub.", value=len(node.hub))
        yield GaugeMetricFamily(
            "rtgw_history_events", "Events kept for resume (what the slot keeps for a restart).",
            value=len(node.hub.history),
        )
        yield GaugeMetricFamily(
            "rtgw_history_replayed",
            "1 once the history held at start has been replayed from the source, else 0.",
            value=float(node.hub.caught_up.is_set()),
        )
        yield CounterMetricFamily(
            "rtgw_changes_replayed",
            "Changes the source sent again after a reconnect, recognised by position and dropped.",
            value=node.router.stats.replayed,
        )
        yield CounterMetricFamily(
            "rtgw_messages_delivered",
            "Events queued to subscribers (counted once per publish, not per client).",
            value=node.router.stats.deliveries,
        )
        yield CounterMetricFamily(
            "rtgw_changes_withheld",
            "Changes on partitioned channels withheld because their partition value is unknown.",
            value=node.router.stats.withheld,
        )
        yield GaugeMetricFamily(
            "rtgw_source_streaming",
            "1 while the source streams changes, else 0.",
            value=1.0 if node.source.streaming else 0.0,
        )
        yield GaugeMetricFamily(
            "rtgw_draining", "1 while the node drains for shutdown.", value=float(node.draining)
        )
        lag = node.source.lag_bytes
        if lag is not None:
            yield GaugeMetricFamily(
                "rtgw_replication_lag_bytes",
                "WAL bytes between the server's current position and the slot's confirmed "
                "position (sampled periodically).",
                value=lag,
            )


def render(node_registry: CollectorRegistry) -> bytes:
    """The exposition text: process-wide metrics, then the node's."""
    return generate_latest(REGISTRY) + generate_latest(node_registry)


def node_registry(node: Node) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return registry
