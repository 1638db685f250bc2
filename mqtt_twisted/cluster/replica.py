"""This node's copy of the cluster's routes and retained messages, kept in Redis order.

Events arrive on the subscriber connection; snapshots (``HGETALL``) on the command
connection, so the two can overtake each other. Each node numbers its route events and
the cluster numbers retained events; a gap (a lost connection, a restart, a new node)
asks for a snapshot, and events that arrive while it is on its way wait and are applied
after it if they are newer. Pure: ``fetch_routes`` and ``fetch_retained`` are given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from mqtt_twisted.broker.entries import SubscriptionOptions
from mqtt_twisted.broker.message import Message
from mqtt_twisted.cluster.routes import RemoteRoutes
from mqtt_twisted.cluster.wire import (
    ROUTE_ADDED,
    ROUTE_REMOVED,
    ROUTES_REWRITTEN,
    RetainedEvent,
    RouteEvent,
    SessionRouteEvent,
)
from mqtt_twisted.topics import SubscriptionTree

K = TypeVar("K")
V = TypeVar("V")

NODE_GONE = b"X"


class Replica:
    """Other nodes' routes and the cluster's retained messages, as events and snapshots
    tell them."""

    def __init__(
        self,
        node_id: str,
        fetch_routes: Callable[[str], None],
        fetch_retained: Callable[[], None],
        apply_retained: Callable[[str, Message | None], None],
        fetch_session_routes: Callable[[], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.routes = RemoteRoutes()
        #: every persistent session's plain subscriptions, cluster-wide (by client id)
        self.persistent: SubscriptionTree[str, SubscriptionOptions] = SubscriptionTree()
        self._fetch_routes = fetch_routes
        self.retained: NumberedHash[str, Message] = NumberedHash(fetch_retained, apply_retained)
        self.session_routes: NumberedHash[tuple[str, str], SubscriptionOptions] = NumberedHash(
            fetch_session_routes or (lambda: None), self._apply_session_route
        )
        #: last route event applied, per node
        self._route_seq: dict[str, int] = {}
        #: nodes whose snapshot is on its way, with the events that came meanwhile
        self._waiting_routes: dict[str, list[RouteEvent]] = {}

    def reset(self) -> None:
        """Forget every sequence number (after a lost connection): all will be re-read."""
        self._route_seq.clear()
        self._waiting_routes.clear()
        self.retained.reset()
        self.session_routes.reset()

    def _apply_session_route(
        self, key: tuple[str, str], options: SubscriptionOptions | None
    ) -> None:
        client_id, topic_filter = key
        if options is None:
            self.persistent.remove(topic_filter, client_id)
        else:
            self.persistent.add(topic_filter, client_id, options)

    def persistent_routes(self) -> set[tuple[str, str]]:
        """Every (client id, filter) of the persistent sessions' subscriptions known here."""
        return {(client_id, f) for f, client_id, _ in self.persistent.filters()}

    # -- routes ---------------------------------------------------------------------------

    def refresh_node(self, node: str) -> None:
        """Read ``node``'s routes afresh (unless a read is on its way)."""
        if node == self.node_id or node in self._waiting_routes:
            return
        self._waiting_routes[node] = []
        self._fetch_routes(node)

    def route_event(self, event: RouteEvent) -> None:
        node = event.node
        if node == self.node_id:
            return
        if event.kind == NODE_GONE:
            self.routes.drop(node)
            self._route_seq.pop(node, None)
            self._waiting_routes.pop(node, None)
            return
        waiting = self._waiting_routes.get(node)
        if waiting is not None:
            waiting.append(event)
            return
        last = self._route_seq.get(node)
        if event.kind == ROUTES_REWRITTEN or last is None or event.seq != last + 1:
            self.refresh_node(node)
            return
        self._apply_route(event)

    def _apply_route(self, event: RouteEvent) -> None:
        if event.kind == ROUTE_ADDED:
            self.routes.add(event.node, event.topic_filter)
        elif event.kind == ROUTE_REMOVED:
            self.routes.remove(event.node, event.topic_filter)
        self._route_seq[event.node] = event.seq

    def routes_snapshot(self, node: str, fields: dict[bytes, bytes]) -> None:
        """``HGETALL`` of ``node``'s routes arrived (empty: the node is gone)."""
        waiting = self._waiting_routes.pop(node, None)
        if waiting is None:
            return  # the node left meanwhile
        seq_field = fields.pop(b"", None)
        if seq_field is None:
            self.routes.drop(node)
            self._route_seq.pop(node, None)
            return
        seq = int(seq_field)
        self.routes.replace(node, (f.decode() for f in fields))
        self._route_seq[node] = seq
        for index, event in enumerate(waiting):
            if event.seq <= self._route_seq[node]:
                continue
            if event.kind == ROUTES_REWRITTEN:  # rewritten after the snapshot: read again
                self.refresh_node(node)
                self._waiting_routes[node].extend(waiting[index + 1 :])
                return
            self._apply_route(event)

    # -- retained messages, persistent sessions' subscriptions ---------------------------

    def refresh_retained(self) -> None:
        self.retained.refresh()

    def retained_event(self, event: RetainedEvent) -> None:
        self.retained.event(event.seq, event.topic, event.message)

    def retained_snapshot(self, seq: int, messages: dict[str, Message], present: set[str]) -> None:
        """The cluster's retained messages at event ``seq``; ``present`` are the topics this
        node holds now (those not in the snapshot are cleared)."""
        self.retained.snapshot(seq, messages, present)

    def session_route_event(self, event: SessionRouteEvent) -> None:
        self.session_routes.event(event.seq, (event.client_id, event.topic_filter), event.options)


class NumberedHash(Generic[K, V]):
    """A Redis hash copied here through numbered events: applied in order; a gap reads the
    whole hash again, and events that arrive meanwhile wait for it (newer ones are applied
    after it, older ones are already in it)."""

    def __init__(self, fetch: Callable[[], None], apply: Callable[[K, V | None], None]) -> None:
        self._fetch = fetch
        self._apply = apply
        self._seq: int | None = None
        self._waiting: list[tuple[int, K, V | None]] | None = None

    def reset(self) -> None:
        self._seq = None
        self._waiting = None

    def refresh(self) -> None:
        if self._waiting is None:
            self._waiting = []
            self._fetch()

    def event(self, seq: int, key: K, value: V | None) -> None:
        waiting = self._waiting
        if waiting is not None:
            waiting.append((seq, key, value))
            return
        last = self._seq
        if last is None or seq != last + 1:
            self.refresh()
            if self._waiting is not None:
                self._waiting.append((seq, key, value))
            return
        self._seq = seq
        self._apply(key, value)

    def snapshot(self, seq: int, values: dict[K, V], present: set[K]) -> None:
        """The hash at event ``seq``; ``present``: the keys held here now (those missing
        from the snapshot go)."""
        waiting, self._waiting = self._waiting or [], None
        for key in present - values.keys():
            self._apply(key, None)
        for key, value in values.items():
            self._apply(key, value)
        self._seq = seq
        for event_seq, key, event_value in waiting:
            if event_seq > seq:
                self._seq = event_seq
                self._apply(key, event_value)
