"""Which other nodes want which messages: a replica of their subscription filters. Pure.

Every node keeps one, so the node a message is published on matches it locally and sends
it only to the nodes with a matching subscription. Plain filters map to nodes; shared
subscriptions (``$share/NAME/FILTER``) map to groups, each with the nodes that have members.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mqtt_twisted.broker.entries import SubscriptionOptions
from mqtt_twisted.broker.message import Message
from mqtt_twisted.topics import SubscriptionTree, parse_shared_subscription


class RemoteGroup:
    """One shared group's nodes (other than this one), taken in turn."""

    __slots__ = ("share_filter", "nodes", "_next")

    def __init__(self, share_filter: str) -> None:
        self.share_filter = share_filter
        self.nodes: list[str] = []
        self._next = 0

    def pick(self, here: bool = False) -> str | None:
        """The next node in turn (the group is never empty while in the tree); with
        ``here`` (this node has members too) this node takes turns with them: None."""
        nodes = self.nodes
        turn = self._next % (len(nodes) + here)
        self._next += 1
        return None if turn == len(nodes) else nodes[turn]


class RemoteRoutes:
    """Other nodes' filters: ``nodes_for(topic)`` and ``groups_for(topic)`` match a topic."""

    def __init__(self) -> None:
        self._plain: SubscriptionTree[str, bool] = SubscriptionTree()
        self._groups: dict[str, RemoteGroup] = {}
        self._group_tree: SubscriptionTree[RemoteGroup, bool] = SubscriptionTree()
        self._by_node: dict[str, set[str]] = {}

    def __len__(self) -> int:
        """Number of (node, filter) routes."""
        return sum(len(filters) for filters in self._by_node.values())

    def nodes(self) -> list[str]:
        """Nodes with at least one route."""
        return [node for node, filters in self._by_node.items() if filters]

    def filters_of(self, node: str) -> set[str]:
        return set(self._by_node.get(node, ()))

    def add(self, node: str, topic_filter: str) -> None:
        """``node`` has a subscription on ``topic_filter`` (plain or shared)."""
        filters = self._by_node.setdefault(node, set())
        if topic_filter in filters:
            return
        filters.add(topic_filter)
        shared = parse_shared_subscription(topic_filter)
        if shared is None:
            self._plain.add(topic_filter, node, True)
            return
        group = self._groups.get(topic_filter)
        if group is None:
            group = self._groups[topic_filter] = RemoteGroup(topic_filter)
            self._group_tree.add(shared[1], group, True)
        group.nodes.append(node)

    def remove(self, node: str, topic_filter: str) -> None:
        """``node`` has no subscription on ``topic_filter`` any more."""
        filters = self._by_node.get(node)
        if not filters or topic_filter not in filters:
            return
        filters.discard(topic_filter)
        shared = parse_shared_subscription(topic_filter)
        if shared is None:
            self._plain.remove(topic_filter, node)
            return
        group = self._groups[topic_filter]
        group.nodes.remove(node)
        if not group.nodes:
            del self._groups[topic_filter]
            self._group_tree.remove(shared[1], group)

    def replace(self, node: str, topic_filters: Iterable[str]) -> None:
        """``node``'s routes are exactly ``topic_filters`` now."""
        wanted = set(topic_filters)
        for topic_filter in self.filters_of(node) - wanted:
            self.remove(node, topic_filter)
        for topic_filter in wanted:
            self.add(node, topic_filter)

    def drop(self, node: str) -> None:
        """``node`` is gone: none of its routes remain."""
        self.replace(node, ())
        self._by_node.pop(node, None)

    def nodes_for(self, topic: str) -> set[str]:
        """Nodes with a plain subscription matching ``topic``."""
        found: set[str] = set()
        for nodes in self._plain.match(topic):
            found.update(nodes)
        return found

    def group(self, share_filter: str) -> RemoteGroup | None:
        """The group of ``$share/NAME/FILTER`` if other nodes have members."""
        return self._groups.get(share_filter)

    def groups_for(self, topic: str) -> list[RemoteGroup]:
        """Shared groups with members on other nodes whose filter matches ``topic``."""
        return [group for groups in self._group_tree.match(topic) for group in groups]


def merge_deliveries(
    message: Message,
    matches: list[dict[str, SubscriptionOptions]],
    origin: str | None,
) -> dict[str, tuple[int, bool, tuple[int, ...]]]:
    """Persistent sessions' subscriptions matching ``message`` as one delivery per client
    id: (QoS, retain flag, subscription ids). Overlapping subscriptions give one copy at
    the highest QoS [MQTT-3.3.5-1] with every identifier [MQTT-3.3.4-3]; ``origin``'s own
    No Local subscriptions get nothing [MQTT-3.8.3-3]."""
    merged: dict[str, list[Any]] = {}
    for subscribers in matches:
        for client_id, opts in subscribers.items():
            if opts.no_local and client_id == origin:
                continue
            entry = merged.get(client_id)
            if entry is None:
                entry = merged[client_id] = [opts.qos, opts.retain_as_published, []]
            else:
                entry[0] = max(entry[0], opts.qos)
                entry[1] = entry[1] or opts.retain_as_published
            if opts.subscription_id:
                entry[2].append(opts.subscription_id)
    qos = message.qos
    retain = message.retain
    return {
        client_id: (min(qos, granted), retain and as_published, tuple(ids))
        for client_id, (granted, as_published, ids) in merged.items()
    }
