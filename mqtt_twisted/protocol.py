"""The one MQTT protocol class: bytes in, packets to the broker core, bytes out.

Serves every stream transport (TCP, TLS, and WebSocket through a thin adapter).
Timers use the broker's clock, so tests drive them with ``task.Clock``.
"""
from __future__ import annotations

import uuid

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted.broker import Broker, Message, Session
from mqtt_twisted.packets import (
    MQTT_3_1,
    MQTT_5,
    ConnAck,
    ConnackCode,
    Connect,
    Disconnect,
    PacketError,
    PacketTooLarge,
    PacketType,
    Parser,
    Property,
    ReasonCode,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    UnsupportedProtocolVersion,
    encode,
)
from mqtt_twisted.tls import peer_common_name
from mqtt_twisted.topics import validate_topic_name

log = Logger()

#: MQTT 3.1 limits client ids to 23 characters (3.1 spec, CONNECT payload)
MQTT31_MAX_CLIENT_ID = 23
#: how long a closing connection may take to flush before it is aborted
CLOSE_GRACE_SECONDS = 5.0

PINGRESP = b"\xd0\x00"
PROTOCOL_NAMES = {3: "3.1", 4: "3.1.1", 5: "5.0"}


class Refused(Exception):
    """A CONNECT the broker answers with a refusing CONNACK."""

    def __init__(self, reason: str, code_v3: int | None, code_v5: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code_v3 = code_v3
        self.code_v5 = code_v5


@implementer(IPushProducer)
class MQTTProtocol(Protocol):
    """One client connection. The transport's flow control pauses delivery to slow readers."""

    def __init__(
        self, broker: Broker, listener: str = "", use_identity_as_username: bool = False
    ) -> None:
        self.broker = broker
        self.listener = listener
        #: take the username from the TLS client certificate's CN (Mosquitto's option)
        self.use_identity_as_username = use_identity_as_username
        self.username: str | None = None
        self.protocol_level = 4
        self.paused = False
        self.session: Session | None = None
        self.will = None
        self.keep_alive = 0
        self._clock = broker.clock
        self._stats = broker.stats
        self._parser = Parser(max_packet_size=broker.config.max_packet_size)
        self._ended = False
        self._last_seen = 0.0
        self._connect_timer = None
        self._keepalive_timer = None
        self._abort_timer = None
        self._handlers = {
            PacketType.CONNECT: self._on_connect,
            PacketType.PUBLISH: self._on_publish,
            PacketType.PUBACK: self._on_puback,
            PacketType.PUBREC: self._on_pubrec,
            PacketType.PUBREL: self._on_pubrel,
            PacketType.PUBCOMP: self._on_pubcomp,
            PacketType.SUBSCRIBE: self._on_subscribe,
            PacketType.UNSUBSCRIBE: self._on_unsubscribe,
            PacketType.PINGREQ: self._on_pingreq,
            PacketType.DISCONNECT: self._on_disconnect,
            PacketType.AUTH: self._on_auth,
        }

    # -- connection lifetime ----------------------------------------------------------

    def connectionMade(self) -> None:
        stats = self._stats
        stats.sockets_total += 1
        stats.listener_connections[self.listener] = (
            stats.listener_connections.get(self.listener, 0) + 1
        )
        self._last_seen = self._clock.seconds()
        self.transport.registerProducer(self, True)
        self._connect_timer = self._clock.callLater(
            self.broker.config.connect_timeout, self._connect_timed_out
        )

    def connectionLost(self, reason=None) -> None:
        counts = self._stats.listener_connections
        counts[self.listener] = counts.get(self.listener, 1) - 1
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        if not self._ended:
            self._end("connection lost", publish_will=True)

    def _peer(self) -> str:
        peer = self.transport.getPeer()
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        return f"{host}:{port}" if host is not None else str(peer)

    def _connect_timed_out(self) -> None:
        self._connect_timer = None
        log.info(
            "closing connection from {peer}: no CONNECT within {seconds:g} s",
            peer=self._peer(),
            seconds=self.broker.config.connect_timeout,
        )
        self._end("no CONNECT in time", publish_will=False)

    def _end(self, reason: str, publish_will: bool, reason_code: int | None = None) -> None:
        """Close the connection once: DISCONNECT (5.0), will, session bookkeeping, log."""
        if self._ended:
            return
        self._ended = True
        for timer in (self._connect_timer, self._keepalive_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._connect_timer = self._keepalive_timer = None
        session = self.session
        if session is not None:
            if reason_code is not None and self.protocol_level == MQTT_5:
                self._write(encode(Disconnect(reason_code), MQTT_5))
            will = self.will if publish_will else None
            self.will = None
            self.broker.session_closed(session, self, will)
            log.info(
                "client {client_id} disconnected ({peer}, listener {listener}): {reason}",
                client_id=session.client_id,
                peer=self._peer(),
                listener=self.listener,
                reason=reason,
            )
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        if self.transport.connected:
            self._abort_timer = self._clock.callLater(CLOSE_GRACE_SECONDS, self._abort)

    def _abort(self) -> None:
        self._abort_timer = None
        self.transport.abortConnection()

    def take_over(self) -> None:
        """Another connection took this client id [MQTT-3.1.4-2]."""
        self._end("session taken over", publish_will=True, reason_code=ReasonCode.SESSION_TAKEN_OVER)

    # -- flow control (IPushProducer: the transport tells us when its buffer is full) --

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.session is not None:
            self.session.drain()

    def stopProducing(self) -> None:
        self.paused = True

    # -- bytes in ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._ended:
            return
        self._last_seen = self._clock.seconds()
        stats = self._stats
        stats.bytes_received += len(data)
        parser = self._parser
        parser.feed(data)
        handlers = self._handlers
        try:
            while not self._ended:
                packet = parser.next_packet()
                if packet is None:
                    return
                stats.messages_received += 1
                handlers[packet.type](packet)
        except UnsupportedProtocolVersion as error:
            self._refuse(
                Refused(str(error.message), ConnackCode.UNACCEPTABLE_PROTOCOL_VERSION,
                        ReasonCode.UNSUPPORTED_PROTOCOL_VERSION),
                level=MQTT_5 if error.protocol_level == MQTT_5 else 4,
            )
        except PacketError as error:
            self._violation(error)

    def _violation(self, error: PacketError) -> None:
        """A malformed packet or protocol error: log it and close (will published)."""
        if self.session is None:
            log.info(
                "closing connection from {peer} before CONNECT: {error}",
                peer=self._peer(), error=error.message,
            )
            self._end(error.message, publish_will=False)
            return
        kind = "packet too large" if isinstance(error, PacketTooLarge) else "protocol error"
        self._end(f"{kind}: {error.message}", publish_will=True, reason_code=error.reason_code)

    # -- bytes out --------------------------------------------------------------------

    def write_publish(self, head: bytes, packet_id: int | None, tail: bytes) -> None:
        """Write one pre-encoded PUBLISH (see :meth:`Message.parts`)."""
        stats = self._stats
        stats.messages_sent += 1
        if packet_id is None:
            stats.bytes_sent += len(head)
            self.transport.write(head)
        else:
            stats.bytes_sent += len(head) + 2 + len(tail)
            self.transport.writeSequence((head, packet_id.to_bytes(2, "big"), tail))

    def write_pubrel(self, packet_id: int) -> None:
        self._write(b"\x62\x02" + packet_id.to_bytes(2, "big"))

    def _write(self, data: bytes) -> None:
        """Write one encoded packet, counting it."""
        stats = self._stats
        stats.messages_sent += 1
        stats.bytes_sent += len(data)
        self.transport.write(data)

    def _send(self, packet) -> None:
        self._write(encode(packet, self.protocol_level))

    # -- CONNECT ----------------------------------------------------------------------

    def _on_connect(self, connect: Connect) -> None:
        if self.session is not None:  # [MQTT-3.1.0-2]
            raise PacketError("second CONNECT on a connection", ReasonCode.PROTOCOL_ERROR)
        self.protocol_level = connect.protocol_level
        if self._connect_timer is not None and self._connect_timer.active():
            self._connect_timer.cancel()
        self._connect_timer = None
        try:
            client_id, assigned = self._check_connect(connect)
        except Refused as refused:
            self._refuse(refused, self.protocol_level)
            return
        broker = self.broker
        config = broker.config
        self.username = connect.username
        if self.use_identity_as_username:
            self.username = peer_common_name(self.transport)
            if self.username is None:
                self._refuse(Refused("no client certificate to take the username from",
                                     ConnackCode.NOT_AUTHORIZED, ReasonCode.NOT_AUTHORIZED),
                             self.protocol_level)
                return
        session, present = broker.open_session(client_id, connect.clean_start, self)
        self.session = session
        self.will = connect.will
        self.keep_alive = connect.keep_alive
        properties = {}
        if self.protocol_level == MQTT_5:
            properties = self._connack_properties(connect, client_id if assigned else None)
            if Property.SERVER_KEEP_ALIVE in properties:
                self.keep_alive = config.max_keepalive
        self._send(ConnAck(present, 0, properties))  # [MQTT-3.2.2-2], [MQTT-3.2.2-3]
        if self.keep_alive:
            self._keepalive_timer = self._clock.callLater(
                self.keep_alive * 1.5, self._check_keepalive
            )
        log.info(
            "client {client_id} connected from {peer} (MQTT {version}, listener {listener}, "
            "clean session {clean}, keep alive {keep_alive}, username {username})",
            client_id=client_id,
            peer=self._peer(),
            version=PROTOCOL_NAMES.get(self.protocol_level, "?"),
            listener=self.listener,
            clean=connect.clean_start,
            keep_alive=self.keep_alive,
            username=self.username,
        )
        session.attach(self)

    def _check_connect(self, connect: Connect) -> tuple[str, bool]:
        """Apply the broker's CONNECT rules; returns (client id, whether it was assigned)."""
        config = self.broker.config
        level = connect.protocol_level
        client_id = connect.client_id
        assigned = False
        if not client_id:
            if level == MQTT_3_1:
                raise Refused("empty client id (MQTT 3.1)", ConnackCode.IDENTIFIER_REJECTED, 0x85)
            if level < MQTT_5 and not connect.clean_start:  # [MQTT-3.1.3-8]
                raise Refused("empty client id without clean session",
                              ConnackCode.IDENTIFIER_REJECTED, 0x85)
            if not config.allow_zero_length_clientid:
                raise Refused("empty client id not allowed", ConnackCode.IDENTIFIER_REJECTED,
                              ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)
            client_id = f"auto-{uuid.uuid4()}"  # [MQTT-3.1.3-6]
            assigned = True
        elif level == MQTT_3_1 and len(client_id) > MQTT31_MAX_CLIENT_ID:
            raise Refused("client id longer than 23 characters (MQTT 3.1)",
                          ConnackCode.IDENTIFIER_REJECTED, 0x85)
        if level < MQTT_5 and connect.keep_alive > config.max_keepalive:
            # 3.x cannot be told another keep alive: refused, as Mosquitto does
            raise Refused(f"keep alive {connect.keep_alive} above max_keepalive",
                          ConnackCode.IDENTIFIER_REJECTED, ReasonCode.UNSPECIFIED_ERROR)
        will = connect.will
        if will is not None:
            if not validate_topic_name(will.topic):
                raise Refused("invalid will topic", None, ReasonCode.TOPIC_NAME_INVALID)
            if will.qos > config.max_qos:
                raise Refused("will QoS above max_qos", None, ReasonCode.QOS_NOT_SUPPORTED)
            if will.retain and not config.retain_available:
                raise Refused("retained will not supported", None,
                              ReasonCode.RETAIN_NOT_SUPPORTED)
        return client_id, assigned

    def _connack_properties(self, connect: Connect, assigned_id: str | None) -> dict:
        config = self.broker.config
        properties: dict = {
            Property.MAXIMUM_PACKET_SIZE: config.max_packet_size,
            Property.SUBSCRIPTION_IDENTIFIER_AVAILABLE: 0,
            Property.SHARED_SUBSCRIPTION_AVAILABLE: 0,
        }
        if config.max_inflight_messages:
            properties[Property.RECEIVE_MAXIMUM] = config.max_inflight_messages
        if config.max_qos < 2:
            properties[Property.MAXIMUM_QOS] = config.max_qos
        if not config.retain_available:
            properties[Property.RETAIN_AVAILABLE] = 0
        if assigned_id is not None:
            properties[Property.ASSIGNED_CLIENT_IDENTIFIER] = assigned_id
        if connect.keep_alive > config.max_keepalive or (
            connect.keep_alive == 0 and config.max_keepalive < 65535
        ):
            properties[Property.SERVER_KEEP_ALIVE] = config.max_keepalive
        return properties

    def _refuse(self, refused: Refused, level: int) -> None:
        """Answer CONNECT with a refusing CONNACK (when the version has a code for it) and close."""
        self.protocol_level = level
        code = refused.code_v5 if level == MQTT_5 else refused.code_v3
        if code is not None:
            self._write(encode(ConnAck(False, code), level))  # [MQTT-3.2.2-5]
        log.info(
            "refused connection from {peer} (listener {listener}): {reason}",
            peer=self._peer(), listener=self.listener, reason=refused.reason,
        )
        self._end(refused.reason, publish_will=False)

    # -- keep alive -------------------------------------------------------------------

    def _check_keepalive(self) -> None:
        """Close a client silent for 1.5 x its keep alive [MQTT-3.1.2-24]."""
        limit = self.keep_alive * 1.5
        idle = self._clock.seconds() - self._last_seen
        if idle >= limit:
            self._keepalive_timer = None
            self._end("keep alive timeout", publish_will=True,
                      reason_code=ReasonCode.KEEP_ALIVE_TIMEOUT)
        else:
            self._keepalive_timer = self._clock.callLater(limit - idle, self._check_keepalive)

    # -- PUBLISH and its acknowledgements ----------------------------------------------

    def _on_publish(self, packet) -> None:
        topic = packet.topic
        if not topic or "+" in topic or "#" in topic:  # [MQTT-3.3.2-2], [MQTT-4.7.3-1]
            raise PacketError(f"invalid topic name {topic!r} in PUBLISH",
                              ReasonCode.TOPIC_NAME_INVALID)
        qos = packet.qos
        config = self.broker.config
        if qos > config.max_qos:
            raise PacketError(f"QoS {qos} above max_qos", ReasonCode.QOS_NOT_SUPPORTED)
        if packet.retain and not config.retain_available:
            raise PacketError("retained PUBLISH but retain is not available",
                              ReasonCode.RETAIN_NOT_SUPPORTED)
        # Clients cannot publish into $SYS: accepted (and acknowledged) but not routed.
        routed = not (topic[0] == "$" and topic.startswith("$SYS"))
        session = self.session
        if qos == 0:
            if routed:
                self.broker.publish(
                    Message(topic, packet.payload, 0, packet.retain, packet.properties), session
                )
            return
        packet_id = packet.packet_id
        if qos == 1:
            if routed:
                self.broker.publish(
                    Message(topic, packet.payload, 1, packet.retain, packet.properties), session
                )
            self._write(b"\x40\x02" + packet_id.to_bytes(2, "big"))  # PUBACK
            return
        awaiting = session.awaiting_pubrel
        if packet_id not in awaiting:  # exactly once: a resent PUBLISH is not routed again
            awaiting.add(packet_id)
            if routed:
                self.broker.publish(
                    Message(topic, packet.payload, 2, packet.retain, packet.properties), session
                )
        self._write(b"\x50\x02" + packet_id.to_bytes(2, "big"))  # PUBREC

    def _on_puback(self, packet) -> None:
        self.session.puback(packet.packet_id)

    def _on_pubrec(self, packet) -> None:
        self.session.pubrec(packet.packet_id)

    def _on_pubrel(self, packet) -> None:
        self.session.awaiting_pubrel.discard(packet.packet_id)
        self._write(b"\x70\x02" + packet.packet_id.to_bytes(2, "big"))  # PUBCOMP

    def _on_pubcomp(self, packet) -> None:
        self.session.pubcomp(packet.packet_id)

    # -- subscriptions ----------------------------------------------------------------

    def _on_subscribe(self, packet: Subscribe) -> None:
        session = self.session
        requests = packet.subscriptions
        existed = [r.topic_filter in session.subscriptions for r in requests]
        codes = self.broker.subscribe(session, requests)
        wire_codes = codes
        if self.protocol_level == MQTT_5:
            wire_codes = [ReasonCode.TOPIC_FILTER_INVALID if c == 0x80 else c for c in codes]
        self._send(SubAck(packet.packet_id, wire_codes))  # [MQTT-3.8.4-1]
        self.broker.send_retained(session, requests, codes, existed)

    def _on_unsubscribe(self, packet: Unsubscribe) -> None:
        codes = self.broker.unsubscribe(self.session, packet.topic_filters)
        self._send(UnsubAck(packet.packet_id, codes))  # [MQTT-3.10.4-4]

    def _on_pingreq(self, packet) -> None:
        self._write(PINGRESP)  # [MQTT-3.12.4-1]

    def _on_disconnect(self, packet) -> None:
        # A clean DISCONNECT discards the will [MQTT-3.14.4-3]; 5.0 reason 0x04 keeps it.
        keep_will = self.protocol_level == MQTT_5 and packet.reason_code == 0x04
        self._end("client sent DISCONNECT", publish_will=keep_will)

    def _on_auth(self, packet) -> None:
        raise PacketError("AUTH without an authentication method", ReasonCode.PROTOCOL_ERROR)


class MQTTFactory(Factory):
    """Builds :class:`MQTTProtocol` connections onto one broker for one listener."""

    noisy = False

    def __init__(
        self, broker: Broker, listener: str = "", use_identity_as_username: bool = False
    ) -> None:
        self.broker = broker
        self.listener = listener
        self.use_identity_as_username = use_identity_as_username

    def buildProtocol(self, addr) -> MQTTProtocol:
        protocol = MQTTProtocol(self.broker, self.listener, self.use_identity_as_username)
        protocol.factory = self
        return protocol
