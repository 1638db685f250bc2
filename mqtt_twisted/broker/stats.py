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
    clients_expired: int = 0
    clients_maximum: int = 0
    #: open network connections by listener name
    listener_connections: dict[str, int] = attrs.field(factory=dict)
