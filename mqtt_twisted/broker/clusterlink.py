"""What the broker core tells the other nodes of a cluster, and when (see ``--cluster``).

The core calls a :class:`ClusterLink` where shared state changes: a filter gets its first
or loses its last local subscription, a message is routed, a retained message is set, a
client id is claimed or let go. Without ``--cluster`` the broker has none and the calls
are skipped. The implementation (``mqtt_twisted.cluster``) does the I/O; the core stays
transport-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

from twisted.internet.defer import Deferred

from mqtt_twisted.broker.entries import SubscriptionOptions
from mqtt_twisted.broker.journal import Barrier
from mqtt_twisted.broker.message import Message

if TYPE_CHECKING:
    from mqtt_twisted.broker.session import Session
    from mqtt_twisted.broker.shared import SharedGroup

#: a persistent session's deliveries numbered below this were stored by publishers' nodes;
#: those it records itself (retained messages on SUBSCRIBE) are numbered from here
LOCAL_SEQ_BASE = 1 << 40


class ClusterFigures(NamedTuple):
    """This node's view of the cluster, for ``$SYS/broker/cluster/...`` and /metrics;
    totals as the nodes last reported them (every half lease)."""

    node_id: str
    #: connected to Redis, shared state read: acknowledging
    up: bool
    nodes: int
    clients_connected: int
    publish_received: int
    publish_sent: int


class ClusterLink(Protocol):
    """The other nodes, as the broker core sees them."""

    def forward(self, message: Message, origin: Session | None) -> bool:
        """Send ``message`` to the nodes with matching subscriptions and store it for the
        persistent sessions it matches; shared groups take turns between this node's
        members (``Broker.deliver_shared``) and other nodes'. Returns whether anything
        matched (local plain subscriptions are the broker's)."""

    def hand_over(self, group: SharedGroup, message: Message) -> bool:
        """A shared group's message its member here did not take (it went away): to a
        member on another node. False if no other node has one."""

    def barrier(self) -> Barrier | None:
        """Fires once every message forwarded so far reached the cluster (None: nothing
        pending). Acknowledgements of forwarded QoS 1/2 messages wait for it."""

    def subscribed(self, topic_filter: str) -> None:
        """A local session subscribed to ``topic_filter`` (plain or ``$share/...``)."""

    def unsubscribed(self, topic_filter: str) -> None:
        """A local session's subscription on ``topic_filter`` went."""

    def session_subscribed(
        self, client_id: str, topic_filter: str, options: SubscriptionOptions
    ) -> None:
        """A persistent session's plain subscription (added or changed), for every node."""

    def session_unsubscribed(self, client_id: str, topic_filter: str) -> None:
        """A persistent session's plain subscription went."""

    def retain(self, message: Message) -> None:
        """A retained message was set (or cleared, with an empty payload) here."""

    def claim(self, client_id: str, will: Message | None) -> Deferred[int]:
        """Take ``client_id`` for this node (the node that held it closes its connection).
        Fires with the claim's number, or fails with ``Refused`` (cluster unavailable).
        ``will`` is published by another node if this one dies while the client is on."""

    def claimed(self, client_id: str, epoch: int) -> None:
        """The connection that made claim ``epoch`` is attached (it may be kicked at once)."""

    def disconnected(self, client_id: str) -> None:
        """The client's connection ended here: its will is this node's business again."""

    def session_ended(self, client_id: str) -> None:
        """The client's session ended here: the client id is free."""

    def figures(self) -> ClusterFigures:
        """The cluster's totals as last reported (see :class:`ClusterFigures`)."""
