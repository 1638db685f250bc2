"""Pure (sans-I/O) MQTT 3.1 / 3.1.1 / 5.0 packet codec.

* :func:`encode` turns a packet object into bytes for a protocol level;
  :func:`encode_publish_parts` is the broker's PUBLISH fast path.
* :class:`Parser` turns a byte stream into packet objects, enforcing the
  spec's well-formedness rules and raising :class:`PacketError` otherwise.

MQTT 5.0 properties are plain dicts keyed by :class:`Property` values: ints
for integer properties, str for UTF-8 strings, bytes for binary data,
``list[tuple[str, str]]`` for USER_PROPERTY (wire order) and ``list[int]``
for SUBSCRIPTION_IDENTIFIER.
"""

from .constants import (
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    ConnackCode,
    PacketType,
    Property,
    ReasonCode,
)
from .encode import encode, encode_publish_parts
from .errors import PacketError, PacketTooLarge, UnsupportedProtocolVersion
from .parser import Parser
from .speedups import compiled_parser
from .types import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    SubscriptionRequest,
    UnsubAck,
    Unsubscribe,
    Will,
)
from .wire import encode_varint

__all__ = [
    "MQTT_3_1",
    "MQTT_3_1_1",
    "MQTT_5",
    "PacketType",
    "Property",
    "ReasonCode",
    "ConnackCode",
    "Will",
    "Connect",
    "ConnAck",
    "Publish",
    "PubAck",
    "PubRec",
    "PubRel",
    "PubComp",
    "SubscriptionRequest",
    "Subscribe",
    "SubAck",
    "Unsubscribe",
    "UnsubAck",
    "PingReq",
    "PingResp",
    "Disconnect",
    "Auth",
    "Packet",
    "PacketError",
    "PacketTooLarge",
    "UnsupportedProtocolVersion",
    "encode",
    "encode_publish_parts",
    "encode_varint",
    "Parser",
]

#: the compiled parser when built for this source (see speedups), else the pure one
Parser = compiled_parser() or Parser  # type: ignore[misc]
