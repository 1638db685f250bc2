"""PUBLISH both ways and its acknowledgements, for :class:`mqtt_twisted.protocol.MQTTProtocol`.

A mixin of the one protocol class (no extra object on the message path): it reads the
connection's state declared below and writes through ``_write``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mqtt_twisted.broker import Message
from mqtt_twisted.packets import MQTT_5, PacketError, Property, ReasonCode
from mqtt_twisted.topics import MAX_TOPIC_LEVELS

if TYPE_CHECKING:
    from mqtt_twisted.broker import Broker, BrokerStats, Session
    from mqtt_twisted.broker.aliases import InboundAliases, OutboundAliases
    from mqtt_twisted.broker.hooks import ClientIdentity, Hooks
    from mqtt_twisted.broker.journal import Barrier

TOPIC_ALIAS = Property.TOPIC_ALIAS
NOT_FOUND = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND


class PublishFlow:
    """PUBLISH in (QoS 0/1/2, MQTT 5 properties, limits, ACL) and out (encoded per client)."""

    # the connection's state, kept by MQTTProtocol
    broker: Broker
    session: Session | None
    identity: ClientIdentity | None
    protocol_level: int
    max_packet_size: int | None
    transport: Any
    _stats: BrokerStats
    _clock: Any
    _hooks: Hooks
    _inbound_aliases: InboundAliases | None
    _outbound_aliases: OutboundAliases | None

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def await_commit(self) -> None:
        raise NotImplementedError

    def await_barrier(self, barrier: Barrier) -> None:
        raise NotImplementedError

    def encode_publish(
        self,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: tuple[int, ...],
        dup: bool,
    ) -> tuple[bytes, bytes] | None:
        """(head, tail) of ``message`` for this client; None if larger than its Maximum
        Packet Size (the message is then not sent to it [MQTT-3.1.2-25])."""
        level = self.protocol_level
        if level != MQTT_5:
            return message.parts(level, qos, retain, dup=dup)
        aliases = self._outbound_aliases
        alias, send_topic = (0, True) if aliases is None else aliases.lookup(message.topic)
        now = self._clock.seconds() if message.expires_at is not None else 0.0
        head, tail = message.parts(
            MQTT_5, qos, retain, subscription_ids, alias, send_topic, now, dup
        )
        limit = self.max_packet_size
        if limit is not None and len(head) + len(tail) + (2 if qos else 0) > limit:
            if alias and send_topic and aliases is not None:
                aliases.forget(message.topic)
            return None
        return head, tail

    def write_publish(self, head: bytes, packet_id: int | None, tail: bytes) -> None:
        """Write one pre-encoded PUBLISH (see :meth:`Message.parts`)."""
        if packet_id is None:  # QoS 0: head + tail (tail empty unless forwarded as received)
            self._write(head + tail if tail else head)
        else:
            self._write(head + packet_id.to_bytes(2, "big") + tail)

    def _journal_changes(self) -> int:
        """A number that changes whenever durable state is recorded (0 without a store)."""
        journal = self.broker.journal
        return 0 if journal is None else journal.changes

    def write_pubrel(self, packet_id: int) -> None:
        self._write(b"\x62\x02" + packet_id.to_bytes(2, "big"))

    def _ack(self, first_byte: int, packet_id: int, reason: int = 0) -> None:
        """PUBACK / PUBREC / PUBREL / PUBCOMP; a reason code only in 5.0 and only when not 0."""
        if reason and self.protocol_level == MQTT_5:
            self._write(bytes((first_byte, 3)) + packet_id.to_bytes(2, "big") + bytes((reason,)))
        else:
            self._write(bytes((first_byte, 2)) + packet_id.to_bytes(2, "big"))

    def _on_publish(self, packet) -> None:
        topic = packet.topic
        properties = packet.properties
        expires_at = None
        if self.protocol_level == MQTT_5 and (properties or not topic):
            topic, properties, expires_at, reject = self._publish_v5(packet)
            if reject:
                self._ack(0x40 if packet.qos == 1 else 0x50, packet.packet_id, reject)
                return
        if not topic or "+" in topic or "#" in topic:  # [MQTT-3.3.2-2], [MQTT-4.7.3-1]
            raise PacketError(
                f"invalid topic name {topic!r} in PUBLISH", ReasonCode.TOPIC_NAME_INVALID
            )
        if len(topic) >= MAX_TOPIC_LEVELS and topic.count("/") >= MAX_TOPIC_LEVELS:
            raise PacketError(
                f"topic name deeper than {MAX_TOPIC_LEVELS} levels", ReasonCode.TOPIC_NAME_INVALID
            )
        qos = packet.qos
        config = self.broker.config
        if qos > config.max_qos:  # [MQTT-3.2.2-11]
            raise PacketError(f"QoS {qos} above max_qos", ReasonCode.QOS_NOT_SUPPORTED)
        if packet.retain and not config.retain_available:  # [MQTT-3.2.2-14]
            raise PacketError(
                "retained PUBLISH but retain is not available", ReasonCode.RETAIN_NOT_SUPPORTED
            )
        # A topic the client may not publish to (the hooks' ACL; $SYS for everyone): 3.x
        # acknowledged and dropped, 5.0 refused with 0x87.
        session = self.session
        assert session is not None  # the parser lets nothing but CONNECT come first
        if topic[0] == "$" or not self._hooks.plain_topics_writable:
            routed = self._hooks.may_publish(session.identity, topic)
        else:  # the hooks allow every topic not starting with "$": no call per message
            routed = True
        size_limit = config.message_size_limit
        if size_limit and len(packet.payload) > size_limit:
            self._payload_too_large(packet, size_limit)
            return
        if qos == 0:
            if routed:
                self.broker.publish(
                    Message(
                        topic, packet.payload, 0, packet.retain, properties, expires_at, packet.raw
                    ),
                    session,
                )
            return
        packet_id = packet.packet_id
        journal = self.broker.journal
        changes = 0 if journal is None else journal.changes
        if qos == 1:
            matched = routed and self.broker.publish(
                Message(
                    topic, packet.payload, 1, packet.retain, properties, expires_at, packet.raw
                ),
                session,
            )
            if journal is not None and journal.changes != changes:
                self.await_commit()  # PUBACK once the message is kept
            if self.broker.cluster is not None:
                self._await_cluster()  # PUBACK once the other nodes have it
            if matched or self.protocol_level != MQTT_5:
                self._write(b"\x40\x02" + packet_id.to_bytes(2, "big"))  # PUBACK
            else:
                self._ack(
                    0x40,
                    packet_id,
                    ReasonCode.NO_MATCHING_SUBSCRIBERS if routed else ReasonCode.NOT_AUTHORIZED,
                )
            return
        awaiting = session.awaiting_pubrel
        reason = 0
        if packet_id not in awaiting:  # exactly once: a resent PUBLISH is not routed again
            limit = config.max_inflight_messages
            if self.protocol_level == MQTT_5 and limit and len(awaiting) >= limit:
                raise PacketError(
                    "more unacknowledged QoS 2 PUBLISH than Receive Maximum",
                    ReasonCode.RECEIVE_MAXIMUM_EXCEEDED,
                )  # [MQTT-3.3.4-7]
            session.expect_pubrel(packet_id)
            matched = routed and self.broker.publish(
                Message(
                    topic, packet.payload, 2, packet.retain, properties, expires_at, packet.raw
                ),
                session,
            )
            if not matched:
                reason = ReasonCode.NO_MATCHING_SUBSCRIBERS if routed else ReasonCode.NOT_AUTHORIZED
                if not routed and self.protocol_level == MQTT_5:
                    session.pubrel(packet_id)  # refused: the id is free again [MQTT-4.3.3-9]
        if journal is not None and (journal.changes != changes or session.journal is not None):
            self.await_commit()  # PUBREC once the message and its id are kept (also resent)
        if self.broker.cluster is not None:
            self._await_cluster()
        self._ack(0x50, packet_id, reason)  # PUBREC

    def _await_cluster(self) -> None:
        cluster = self.broker.cluster
        assert cluster is not None
        barrier = cluster.barrier()
        if barrier is not None:
            self.await_barrier(barrier)

    def _payload_too_large(self, packet, limit: int) -> None:
        """--message-size-limit: not accepted; 3.x acknowledged (and dropped), 5.0 refused
        with 0x83 (the receiver is not willing to accept it). Counted, logged per burst."""
        self._stats.publish_too_large += 1
        self.broker.limits.exceeded(
            "message-size-limit",
            "PUBLISH of {size} bytes from {client_id} refused: --message-size-limit {limit}",
            size=len(packet.payload),
            client_id=self.identity.client_id if self.identity else "?",
            limit=limit,
        )
        if packet.qos:
            self._ack(0x40 if packet.qos == 1 else 0x50, packet.packet_id, 0x83)

    def _publish_v5(self, packet) -> tuple[str, dict, float | None, int]:
        """MQTT 5 PUBLISH properties: topic alias, payload format, message expiry.

        Returns (topic, properties to forward, expiry time, reason code to refuse it with or 0).
        """
        properties = packet.properties
        assert self._inbound_aliases is not None  # made at CONNECT for 5.0
        topic = self._inbound_aliases.resolve(packet.topic, properties.get(TOPIC_ALIAS))
        if TOPIC_ALIAS in properties:  # an alias belongs to this connection, not the message
            properties = {k: v for k, v in properties.items() if k != TOPIC_ALIAS}
        if properties.get(Property.PAYLOAD_FORMAT_INDICATOR) == 1:
            try:
                packet.payload.decode("utf-8")
            except UnicodeDecodeError:
                if packet.qos == 0:
                    raise PacketError(
                        "payload is not the UTF-8 its format indicator says",
                        ReasonCode.PAYLOAD_FORMAT_INVALID,
                    ) from None
                return topic, properties, None, ReasonCode.PAYLOAD_FORMAT_INVALID
        return topic, properties, self.broker.expiry_time(properties), 0

    def _on_puback(self, packet) -> None:
        session = self.session
        assert session is not None  # the parser lets nothing but CONNECT come first
        session.puback(packet.packet_id)

    def _on_pubrec(self, packet) -> None:
        session = self.session
        assert session is not None
        failed = packet.reason_code >= 0x80
        if not session.pubrec(packet.packet_id, failed) and not failed:
            self._ack(0x62, packet.packet_id, NOT_FOUND)  # PUBREL, 0x92 in 5.0

    def _on_pubrel(self, packet) -> None:
        session = self.session
        assert session is not None
        if session.pubrel(packet.packet_id):
            if session.journal is not None:
                self.await_commit()  # PUBCOMP once the id is forgotten for good
            self._write(b"\x70\x02" + packet.packet_id.to_bytes(2, "big"))  # PUBCOMP
        else:
            self._ack(0x70, packet.packet_id, NOT_FOUND)  # [MQTT-4.3.3-11]

    def _on_pubcomp(self, packet) -> None:
        session = self.session
        assert session is not None
        session.pubcomp(packet.packet_id)
