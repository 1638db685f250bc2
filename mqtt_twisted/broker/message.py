"""An application message as the broker routes it, with its encodings cached."""
from __future__ import annotations

import attrs

from mqtt_twisted.packets import encode_publish_parts


@attrs.define(eq=False)
class Message:
    """One published message, shared by every subscriber it goes to.

    ``parts`` encodes it once per (protocol family, QoS, retain) variant and keeps
    the bytes, so fan-out to many subscribers costs one encoding per variant.
    """

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: dict = attrs.field(factory=dict)
    _encoded: dict | None = attrs.field(default=None, init=False, repr=False)

    def parts(self, protocol_level: int, qos: int, retain: bool) -> tuple[bytes, bytes]:
        """(head, tail) of this message as a PUBLISH; the packet id goes between them when qos > 0."""
        key = (protocol_level == 5, qos, retain)
        cache = self._encoded
        if cache is None:
            cache = self._encoded = {}
        else:
            found = cache.get(key)
            if found is not None:
                return found
        head, tail = encode_publish_parts(
            self.topic, self.payload, qos, retain, False, self.properties, protocol_level
        )
        if qos == 0:
            head, tail = head + tail, b""
        cache[key] = (head, tail)
        return head, tail

    def dup_parts(self, protocol_level: int, qos: int, retain: bool) -> tuple[bytes, bytes]:
        """(head, tail) with the DUP flag set, for a re-delivery (rare, so not cached)."""
        return encode_publish_parts(
            self.topic, self.payload, qos, retain, True, self.properties, protocol_level
        )
