"""The ``$SYS/broker/...`` topics, with Mosquitto's names and meanings, published periodically."""

from __future__ import annotations

import math

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mqtt_twisted import __version__
from mqtt_twisted.broker.core import Broker
from mqtt_twisted.broker.message import Message

log = Logger()

PREFIX = "$SYS/broker/"
LOAD_WINDOWS = (("1min", 60.0), ("5min", 300.0), ("15min", 900.0))
#: counters with load averages: $SYS/broker/load/<name>/<window>, from BrokerStats fields
LOAD_COUNTERS = {
    "messages/received": "messages_received",
    "messages/sent": "messages_sent",
    "publish/received": "publish_received",
    "publish/sent": "publish_sent",
    "publish/dropped": "publish_dropped",
    "bytes/received": "bytes_received",
    "bytes/sent": "bytes_sent",
    "connections": "connections_total",
}


def _number(value: float) -> str:
    return f"{value:.2f}"


class SysTopics:
    """Publishes broker figures under ``$SYS`` every ``interval`` seconds, retained,
    only those whose value changed; static ones (version) once at start."""

    def __init__(self, broker: Broker, interval: float, clock: IReactorTime | None = None) -> None:
        self.broker = broker
        self.interval = interval
        self.clock = clock or broker.clock
        self._last: dict[str, str] = {}
        self._previous_counts: dict[str, int] = {}
        self._load: dict[tuple[str, str], float] = {}
        self._last_tick = self.clock.seconds()
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        """Publish the static topics and the first figures, then every interval."""
        self._publish("version", f"mqtt-twisted version {__version__}")
        self._last_tick = self.clock.seconds()
        self._previous_counts = {
            name: getattr(self.broker.stats, field) for name, field in LOAD_COUNTERS.items()
        }
        self.tick()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def tick(self) -> None:
        """Publish what changed and schedule the next tick; a failing tick is logged and
        the next one still comes (``$SYS`` and the dashboard never freeze)."""
        try:
            for name, value in self.values().items():
                self._publish(name, value)
        except Exception:
            log.failure(
                "$SYS update failed; trying again in {interval:g} s", interval=self.interval
            )
        finally:
            self._call = self.clock.callLater(self.interval, self.tick)

    def _publish(self, name: str, value: str) -> None:
        if self._last.get(name) == value:
            return
        self._last[name] = value
        self.broker.route(Message(PREFIX + name, value.encode(), 0, True))

    def values(self) -> dict[str, str]:
        """Every periodic ``$SYS/broker/`` topic (without the prefix) and its current text."""
        broker = self.broker
        stats = broker.stats
        sessions = broker.sessions
        stored = stats.stored_messages + len(broker.retained)
        values = {
            "uptime": f"{int(self.clock.seconds() - broker.started)} seconds",
            "clients/connected": str(broker.connected),
            "clients/active": str(broker.connected),
            "clients/disconnected": str(len(sessions) - broker.connected),
            "clients/inactive": str(len(sessions) - broker.connected),
            "clients/total": str(len(sessions)),
            "clients/maximum": str(stats.clients_maximum),
            "clients/expired": str(stats.clients_expired),
            "messages/received": str(stats.messages_received),
            "messages/sent": str(stats.messages_sent),
            "messages/stored": str(stored),
            "publish/messages/received": str(stats.publish_received),
            "publish/messages/sent": str(stats.publish_sent),
            "publish/messages/dropped": str(stats.publish_dropped),
            "publish/bytes/received": str(stats.publish_bytes_received),
            "publish/bytes/sent": str(stats.publish_bytes_sent),
            "bytes/received": str(stats.bytes_received),
            "bytes/sent": str(stats.bytes_sent),
            "subscriptions/count": str(len(broker.subscriptions)),
            "retained messages/count": str(len(broker.retained)),
            "store/messages/count": str(stored),
            "store/messages/bytes": str(stats.stored_bytes),
            "clients/slow": str(stats.clients_slow),
            "connections/held": str(stats.connections_held),
        }
        journal = broker.journal
        if journal is not None:  # --store sqlite: commits of durable state so far
            values["store/commits"] = str(journal.commits)
            values["store/rows"] = str(journal.rows)
        cluster = broker.cluster
        if cluster is not None:  # this node's view of the whole cluster
            figures = cluster.figures()
            values["cluster/node"] = figures.node_id
            values["cluster/state"] = "up" if figures.up else "down: not acknowledging"
            values["cluster/nodes"] = str(figures.nodes)
            values["cluster/clients/connected"] = str(figures.clients_connected)
            values["cluster/publish/messages/received"] = str(figures.publish_received)
            values["cluster/publish/messages/sent"] = str(figures.publish_sent)
            values["cluster/forwarded"] = str(stats.cluster_forwarded)
            values["cluster/received"] = str(stats.cluster_received)
        values.update(self._loads())
        return values

    def _loads(self) -> dict[str, str]:
        """Exponentially decaying per-minute rates, as Mosquitto's ``load/.../1min`` etc."""
        now = self.clock.seconds()
        elapsed = now - self._last_tick
        out: dict[str, str] = {}
        stats = self.broker.stats
        current = {name: getattr(stats, field) for name, field in LOAD_COUNTERS.items()}
        current["sockets"] = stats.sockets_total
        if elapsed > 0:
            self._last_tick = now
            for name, count in current.items():
                per_minute = (count - self._previous_counts.get(name, 0)) * 60.0 / elapsed
                for window, seconds in LOAD_WINDOWS:
                    factor = math.exp(-elapsed / seconds)
                    key = (name, window)
                    load = self._load.get(key, 0.0) * factor + per_minute * (1 - factor)
                    self._load[key] = load
            self._previous_counts = current
        for (name, window), load in self._load.items():
            out[f"load/{name}/{window}"] = _number(load)
        return out
