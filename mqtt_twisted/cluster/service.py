"""``--cluster``: the options and the service that make this process a node of a cluster."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from mqtt_twisted.broker import Broker
from mqtt_twisted.cluster.node import ClusterNode, default_node_id
from mqtt_twisted.cluster.redis import RedisAddress


def _node_id(text: str) -> str:
    if not text or "\x00" in text or len(text) > 200:
        raise ValueError("a node id is 1 to 200 characters, no NUL")
    return text


def _lease(text: str) -> float:
    value = float(text)
    if not 0.5 <= value <= 3600:
        raise ValueError("the lease is 0.5 to 3600 seconds")
    return value


#: twistd options of the cluster, added to ``mqtt_twisted.tap.Options``
CLUSTER_OPTIONS: list[list[Any]] = [
    [
        "cluster",
        None,
        None,
        "Run as one node of a cluster whose shared state is in this Redis: "
        "redis://[USER:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS; ?ssl_ca_certs=CA&"
        "ssl_certfile=CERT&ssl_keyfile=KEY) or unix:///PATH "
        "(default: no cluster, this process is the whole broker).",
        RedisAddress.parse,
    ],
    [
        "node-id",
        None,
        None,
        "This node's name in the cluster (default: host name and process id).",
        _node_id,
    ],
    [
        "cluster-lease",
        None,
        10.0,
        "Seconds after which the other nodes declare a silent node dead, publish its clients' "
        "wills and forget its subscriptions.",
        _lease,
    ],
    [
        "cluster-prefix",
        None,
        "mq:",
        "Prefix of every Redis key and channel of the cluster (several clusters, one Redis).",
    ],
]


class ClusterService(Service):
    """Joins the cluster at start-up (CONNECT is refused until then), leaves it at the end."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    def startService(self) -> None:
        super().startService()
        self.node.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        # Clients are closed by now: what the journal still holds goes to Redis (bounded),
        # then the node leaves.
        return self.node.flush().addBoth(lambda _: self.node.stop())


def cluster_service(options: Any, broker: Broker, reactor: Any) -> ClusterService | None:
    """The cluster node these options ask for (None without ``--cluster``), attached to
    ``broker``."""
    address = options["cluster"]
    if address is None:
        return None
    node = ClusterNode(
        reactor,
        broker,
        address,
        options["node-id"] or default_node_id(),
        options["cluster-lease"],
        options["cluster-prefix"],
    )
    broker.cluster = node
    return ClusterService(node)
