"""Broker-wide settings, filled from the command line by :mod:`mqtt_twisted.tap`."""

from __future__ import annotations

import attrs

#: the high-water mark of a connected subscriber's queue when --max-queued-messages is 0
DEFAULT_HIGH_WATER = 1000


@attrs.define(frozen=True)
class BrokerConfig:
    """Limits and switches of one broker; names follow ``mosquitto.conf(5)``."""

    max_keepalive: int = 65535
    #: unacknowledged outgoing QoS 1/2 messages per client; 0 = no limit
    max_inflight_messages: int = 20
    #: queued messages per offline or slow client; 0 = no limit
    max_queued_messages: int = 1000
    #: queued payload bytes per offline or slow client; 0 = no limit. The default keeps a
    #: broker's memory bounded even with large messages (1,000 x 2 MB would be 2 GB a client)
    max_queued_bytes: int = 64 * 1024 * 1024
    #: open client connections at most (0 = no limit)
    max_connections: int = 0
    #: largest PUBLISH payload accepted (0 = only max_packet_size applies)
    message_size_limit: int = 0
    #: subscriptions one client may hold (0 = no limit)
    max_subscriptions_per_client: int = 10_000
    #: new connections per second from one source address (0 = no limit)
    max_connection_rate: int = 0
    #: seconds a connected subscriber whose queue is full may hold its publishers back
    #: before it counts as slow and messages beyond its queue are dropped (0 = never hold)
    slow_client_grace: float = 5.0
    max_packet_size: int = 2_000_000
    max_qos: int = 2
    retain_available: bool = True
    allow_zero_length_clientid: bool = True
    #: seconds a connection may stay open without sending CONNECT
    connect_timeout: float = 10.0
    #: seconds after which a disconnected persistent session is removed; None = never
    persistent_client_expiration: float | None = None
    #: MQTT 5: topic aliases a client may set (advertised in CONNACK)
    max_topic_alias: int = 10
    #: MQTT 5: topic aliases the broker assigns towards a client that allows them
    max_topic_alias_broker: int = 10
    #: MQTT 5: Response Information sent to clients that request it (PREFIX/CLIENT-ID); None = off
    response_information: str | None = None

    @property
    def queue_high_water(self) -> int:
        """Queued messages at which a connected subscriber holds its publishers back."""
        return self.max_queued_messages or DEFAULT_HIGH_WATER
