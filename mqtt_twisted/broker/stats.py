"""Counters the broker keeps for ``$SYS`` and ``/metrics``; plain integers, cheap to bump."""

from __future__ import annotations

import attrs


@attrs.define
class BrokerStats:
    """Running totals since the broker started."""

    publish_received: int = 0
    publish_sent: int = 0
    #: messages a client should have had but did not get (queue full, ...)
    publish_dropped: int = 0
    #: MQTT packets of any type
    messages_received: int = 0
    messages_sent: int = 0
    #: payload bytes of PUBLISH packets
    publish_bytes_received: int = 0
    publish_bytes_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    #: accepted CONNECTs / opened network connections
    connections_total: int = 0
    sockets_total: int = 0
    #: network connections open now, and those closed at once for --max-connections
    connections_open: int = 0
    connections_refused: int = 0
    #: PUBLISH refused for --message-size-limit, SUBSCRIBE filters for too many
    publish_too_large: int = 0
    subscriptions_refused: int = 0
    clients_expired: int = 0
    #: cluster: messages sent to other nodes (one per node) and received from them
    cluster_forwarded: int = 0
    cluster_received: int = 0
    clients_maximum: int = 0
    #: messages held for clients (queued or in flight) and their payload bytes, kept up to
    #: date on every enqueue and dequeue
    stored_messages: int = 0
    stored_bytes: int = 0
    #: connected clients past their grace time whose queue drops what does not fit
    clients_slow: int = 0
    #: connections whose input is paused because a subscriber they feed is full
    connections_held: int = 0
    #: open network connections by listener name
    listener_connections: dict[str, int] = attrs.field(factory=dict)
