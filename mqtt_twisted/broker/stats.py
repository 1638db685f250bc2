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
    bytes_received: int = 0
    bytes_sent: int = 0
    connections_total: int = 0
    clients_expired: int = 0
