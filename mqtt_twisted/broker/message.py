"""An application message as the broker routes it, with its encodings cached."""

from __future__ import annotations

import math

import attrs

from mqtt_twisted.packets import Property, encode_publish_parts

MESSAGE_EXPIRY = Property.MESSAGE_EXPIRY_INTERVAL
SUBSCRIPTION_IDENTIFIER = Property.SUBSCRIPTION_IDENTIFIER
TOPIC_ALIAS = Property.TOPIC_ALIAS
#: encodings kept per message for MQTT 5 per-subscriber variants (ids, aliases, expiry)
MAX_CACHED_VARIANTS = 32


@attrs.define(eq=False)
class Message:
    """One published message, shared by every subscriber it goes to.

    ``parts`` encodes it once per variant (protocol family, QoS, retain and, for MQTT 5,
    subscription identifiers, topic alias and remaining expiry) and keeps the bytes, so
    fan-out to many subscribers costs one encoding per variant, not per subscriber.
    """

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: dict = attrs.field(factory=dict)
    #: clock time after which the message must not be delivered (MQTT 5 Message Expiry)
    expires_at: float | None = None
    #: the PUBLISH as received from a 3.x client without retain or DUP, split around its
    #: packet id: what a 3.x subscriber at the message's QoS gets (None: encoded)
    raw: tuple[bytes, bytes] | None = attrs.field(default=None, repr=False)
    #: its id in the store while deliveries to persistent sessions refer to it (0: none)
    store_id: int = attrs.field(default=0, init=False, repr=False)
    _encoded: dict | None = attrs.field(default=None, init=False, repr=False)

    def expired(self, now: float) -> bool:
        """True once the Message Expiry Interval has passed [MQTT-3.3.2-5]."""
        return self.expires_at is not None and now >= self.expires_at

    def parts(
        self,
        protocol_level: int,
        qos: int,
        retain: bool,
        subscription_ids: tuple[int, ...] = (),
        alias: int = 0,
        send_topic: bool = True,
        now: float = 0.0,
        dup: bool = False,
    ) -> tuple[bytes, bytes]:
        """(head, tail) of this message as a PUBLISH; the packet id goes between them
        when qos > 0. For QoS 0 the packet is head + tail (tail often empty)."""
        v5 = protocol_level == 5
        if not v5 and not retain and not dup and qos == self.qos:
            raw = self.raw
            if raw is not None:
                return raw
        if v5 and (subscription_ids or alias or self.expires_at is not None):
            remaining = None
            if self.expires_at is not None:  # the remaining lifetime is sent [MQTT-3.3.2-6]
                remaining = max(0, math.ceil(self.expires_at - now))
            key: tuple = (True, qos, retain, dup, subscription_ids, alias, send_topic, remaining)
        else:
            key = (v5, qos, retain, dup)
            remaining = None
        cache = self._encoded
        if cache is None:
            cache = self._encoded = {}
        else:
            found = cache.get(key)
            if found is not None:
                return found
        properties = self.properties
        topic = self.topic
        if len(key) > 4:
            properties = dict(properties)
            if subscription_ids:
                properties[SUBSCRIPTION_IDENTIFIER] = list(subscription_ids)
            if alias:
                properties[TOPIC_ALIAS] = alias
                if not send_topic:
                    topic = ""
            if remaining is not None:
                properties[MESSAGE_EXPIRY] = remaining
        head, tail = encode_publish_parts(
            topic, self.payload, qos, retain, dup, properties, protocol_level
        )
        if qos == 0:
            head, tail = head + tail, b""
        if len(key) == 4 or len(cache) < MAX_CACHED_VARIANTS:
            cache[key] = (
                head,
                tail,
            )  # per-subscriber variants are bounded (retained messages live long)
        return head, tail
