"""``/metrics``: the broker's figures in the Prometheus text format (``prometheus_client``).

Counters are read from :class:`BrokerStats` when Prometheus scrapes, so the message path
pays nothing for them. The PUBLISH handling histogram is sampled (one PUBLISH in
``PUBLISH_SAMPLE_EVERY``), which keeps timing off most messages.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web.resource import Resource

from mqtt_twisted.broker import Broker, BrokerStats
from mqtt_twisted.broker.clusterlink import ClusterFigures

#: counters exported as mqtt_<name>_total, from BrokerStats fields
COUNTERS = {
    "messages_received": ("messages_received", "MQTT packets received"),
    "messages_sent": ("messages_sent", "MQTT packets sent"),
    "publish_messages_received": ("publish_received", "PUBLISH packets received from clients"),
    "publish_messages_sent": ("publish_sent", "PUBLISH packets sent to clients"),
    "publish_messages_dropped": ("publish_dropped", "messages dropped (queue full, client gone)"),
    "publish_bytes_received": ("publish_bytes_received", "payload bytes of PUBLISH received"),
    "publish_bytes_sent": ("publish_bytes_sent", "payload bytes of PUBLISH sent"),
    "bytes_received": ("bytes_received", "bytes received on all connections"),
    "bytes_sent": ("bytes_sent", "bytes sent on all connections"),
    "connections": ("connections_total", "accepted MQTT connections (CONNACK 0)"),
    "clients_expired": ("clients_expired", "persistent sessions removed after expiry"),
    "connections_refused": (
        "connections_refused",
        "connections closed at once for --max-connections or --max-connection-rate",
    ),
    "publish_messages_too_large": (
        "publish_too_large",
        "PUBLISH refused for --message-size-limit",
    ),
    "subscriptions_refused": (
        "subscriptions_refused",
        "filters refused for --max-subscriptions-per-client",
    ),
}


class BrokerCollector:
    """Reads the broker's figures at scrape time."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self):
        broker = self.broker
        stats = broker.stats
        for name, (field, doc) in COUNTERS.items():
            metric = CounterMetricFamily(f"mqtt_{name}", doc)
            metric.add_metric([], getattr(stats, field))
            yield metric
        gauges = {
            "clients_connected": (broker.connected, "clients connected now"),
            "clients_disconnected": (
                len(broker.sessions) - broker.connected,
                "persistent sessions whose client is away",
            ),
            "clients_maximum": (stats.clients_maximum, "most clients connected at once"),
            "subscriptions": (len(broker.subscriptions), "subscriptions"),
            "retained_messages": (len(broker.retained), "retained messages"),
            "uptime_seconds": (broker.clock.seconds() - broker.started, "seconds since start"),
            "stored_messages": (stats.stored_messages, "messages queued or in flight for clients"),
            "stored_bytes": (stats.stored_bytes, "payload bytes queued or in flight for clients"),
            "clients_slow": (
                stats.clients_slow,
                "connected clients past their grace time, dropping what their queue cannot hold",
            ),
            "connections_held": (
                stats.connections_held,
                "connections not read because a subscriber they publish to is full",
            ),
        }
        for name, (value, doc) in gauges.items():
            metric = GaugeMetricFamily(f"mqtt_{name}", doc)
            metric.add_metric([], value)
            yield metric
        listeners = GaugeMetricFamily(
            "mqtt_listener_connections",
            "open network connections per listener",
            labels=["listener"],
        )
        for listener, count in sorted(stats.listener_connections.items()):
            listeners.add_metric([listener], count)
        yield listeners
        dropped = CounterMetricFamily(
            "mqtt_client_messages_dropped",
            "messages dropped for one client (queue full, too large); clients with drops only",
            labels=["client_id"],
        )
        for session in broker.sessions.values():
            if session.dropped:
                dropped.add_metric([session.client_id], session.dropped)
        yield dropped
        cluster = broker.cluster
        if cluster is not None:
            yield from _cluster_metrics(cluster.figures(), stats)
        journal = broker.journal
        if journal is not None:
            commits = CounterMetricFamily("mqtt_store_commits", "store transactions committed")
            commits.add_metric([], journal.commits)
            yield commits
            rows = CounterMetricFamily("mqtt_store_rows", "rows written or deleted by commits")
            rows.add_metric([], journal.rows)
            yield rows
            failing = GaugeMetricFamily(
                "mqtt_store_failing", "1 while the store's commits fail (acknowledgements wait)"
            )
            failing.add_metric([], int(journal.failing))
            yield failing


def _cluster_metrics(figures: ClusterFigures, stats: BrokerStats) -> Iterator[Metric]:
    """This node in the cluster, and the cluster's totals as the nodes last reported."""
    gauges = {
        "cluster_up": (int(figures.up), "1 while this node is in the cluster and acknowledging"),
        "cluster_nodes": (figures.nodes, "nodes alive in the cluster"),
        "cluster_clients_connected": (figures.clients_connected, "clients on every node"),
    }
    for name, (value, doc) in gauges.items():
        metric = GaugeMetricFamily(f"mqtt_{name}", doc, labels=["node"])
        metric.add_metric([figures.node_id], value)
        yield metric
    counters = {
        "cluster_publish_received": (figures.publish_received, "PUBLISH received, every node"),
        "cluster_publish_sent": (figures.publish_sent, "PUBLISH sent, every node"),
        "cluster_forwarded": (stats.cluster_forwarded, "messages this node sent to others"),
        "cluster_received": (stats.cluster_received, "messages this node got from others"),
    }
    for name, (value, doc) in counters.items():
        counter = CounterMetricFamily(f"mqtt_{name}", doc, labels=["node"])
        counter.add_metric([figures.node_id], value)
        yield counter


class MetricsResource(Resource):
    """Serves the registry in the Prometheus text format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)


def metrics_resource(broker: Broker) -> MetricsResource:
    """The ``/metrics`` resource of ``broker`` (one registry per broker, made once)."""
    resource: MetricsResource | None = getattr(broker, "_metrics_resource", None)
    if resource is None:
        registry = CollectorRegistry()
        registry.register(BrokerCollector(broker))
        histogram = Histogram(
            "mqtt_publish_handling_seconds",
            "time to route one PUBLISH to its subscribers (sampled)",
            registry=registry,
            buckets=(1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2, 0.25, 1.0),
        )
        broker.publish_timer = histogram.observe
        resource = MetricsResource(registry)
        broker._metrics_resource = resource  # type: ignore[attr-defined]
    return resource
