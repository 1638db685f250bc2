"""This node's copy of the cluster's routes and retained messages, kept in Redis order.

Events arrive on the subscriber connection; snapshots (``HGETALL``) on the command
connection, so the two can overtake each other. Each node numbers its route events and
the cluster numbers retained events; a gap (a lost connection, a restart, a new node)
asks for a snapshot, and events that arrive while it is on its way wait and are applied
after it if they are newer. Pure: ``fetch_routes`` and ``fetch_retained`` are given.
"""

from __future__ import annotations

from collections.abc import Callable

from mqtt_twisted.broker.message import Message
from mqtt_twisted.cluster.routes import RemoteRoutes
from mqtt_twisted.cluster.wire import (
    ROUTE_ADDED,
    ROUTE_REMOVED,
    ROUTES_REWRITTEN,
    RetainedEvent,
    RouteEvent,
)

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
    ) -> None:
        self.node_id = node_id
        self.routes = RemoteRoutes()
        self._fetch_routes = fetch_routes
        self._fetch_retained = fetch_retained
        self._apply_retained = apply_retained
        #: last route event applied, per node
        self._route_seq: dict[str, int] = {}
        #: nodes whose snapshot is on its way, with the events that came meanwhile
        self._waiting_routes: dict[str, list[RouteEvent]] = {}
        self._retained_seq: int | None = None
        self._waiting_retained: list[RetainedEvent] | None = None

    def reset(self) -> None:
        """Forget every sequence number (after a lost connection): all will be re-read."""
        self._route_seq.clear()
        self._waiting_routes.clear()
        self._retained_seq = None
        self._waiting_retained = None

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

    # -- retained -----------------------------------------------------------------------

    def refresh_retained(self) -> None:
        if self._waiting_retained is None:
            self._waiting_retained = []
            self._fetch_retained()

    def retained_event(self, event: RetainedEvent) -> None:
        waiting = self._waiting_retained
        if waiting is not None:
            waiting.append(event)
            return
        last = self._retained_seq
        if last is None or event.seq != last + 1:
            self.refresh_retained()
            if self._waiting_retained is not None:
                self._waiting_retained.append(event)
            return
        self._retained_seq = event.seq
        self._apply_retained(event.topic, event.message)

    def retained_snapshot(self, seq: int, messages: dict[str, Message], present: set[str]) -> None:
        """The cluster's retained messages at event ``seq``; ``present`` are the topics this
        node holds now (those not in the snapshot are cleared)."""
        waiting, self._waiting_retained = self._waiting_retained or [], None
        for topic in present - messages.keys():
            self._apply_retained(topic, None)
        for topic, message in messages.items():
            self._apply_retained(topic, message)
        self._retained_seq = seq
        for event in waiting:
            if event.seq > seq:
                self._retained_seq = event.seq
                self._apply_retained(event.topic, event.message)
