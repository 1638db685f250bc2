"""The one MQTT protocol class: bytes in, packets to the broker core, bytes out.

Serves every stream transport (TCP, TLS, and WebSocket through a thin adapter) and
every protocol level (3.1, 3.1.1, 5.0). Timers use the broker's clock, so tests
drive them with ``task.Clock``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted.broker import Broker, Session
from mqtt_twisted.broker.aliases import InboundAliases, OutboundAliases
from mqtt_twisted.broker.hooks import ClientIdentity
from mqtt_twisted.connect import (
    NEVER_EXPIRES,
    ConnectTerms,
    Refused,
    connack_properties,
)
from mqtt_twisted.handshake import Handshake
from mqtt_twisted.inputgate import PACKETS_PER_TURN, InputGate, Linger
from mqtt_twisted.outputbatch import begin, end
from mqtt_twisted.outputgate import HeldOutput, OutputFlow
from mqtt_twisted.packets import (
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
    Will,
    encode,
)
from mqtt_twisted.publishing import PublishFlow
from mqtt_twisted.topics import validate_topic_filter

log = Logger()

#: how long a closing connection may take to flush before it is aborted
CLOSE_GRACE_SECONDS = 5.0
PINGRESP = b"\xd0\x00"
PROTOCOL_NAMES = {3: "3.1", 4: "3.1.1", 5: "5.0"}
SHARE_PREFIX = "$share/"
TOPIC_ALIAS = Property.TOPIC_ALIAS
MESSAGE_EXPIRY = Property.MESSAGE_EXPIRY_INTERVAL
NOT_FOUND = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND


@implementer(IPushProducer)
class MQTTProtocol(OutputFlow, PublishFlow, Protocol):
    """One client connection. The transport's flow control pauses delivery to slow readers."""

    #: a TCP or TLS transport, or the WebSocket adapter (set by makeConnection)
    transport: Any

    def __init__(
        self, broker: Broker, listener: str = "", use_identity_as_username: bool = False
    ) -> None:
        self.broker = broker
        self.listener = listener
        #: take the username from the TLS client certificate's CN (Mosquitto's option)
        self.use_identity_as_username = use_identity_as_username
        self.username: str | None = None
        self.protocol_level = 4
        #: True while the session should not write QoS 0 messages: the transport's buffer
        #: is full, or the output waits for the store; and since when
        self.paused = False
        self.paused_at = 0.0
        self._transport_paused = False
        #: output waiting for a commit (see mqtt_twisted.outputgate), or None
        self._held: HeldOutput | None = None
        self.session: Session | None = None
        self.terms: ConnectTerms | None = None
        self.will: Will | None = None
        #: who the client is, once CONNECT is accepted (for the hooks: ACL checks)
        self.identity: ClientIdentity | None = None
        self._handshake: Handshake | None = None
        self.keep_alive = 0
        #: the client's Receive Maximum and Maximum Packet Size (MQTT 5)
        self.receive_maximum = 65535
        self.max_packet_size: int | None = None
        self._inbound_aliases: InboundAliases | None = None
        self._outbound_aliases: OutboundAliases | None = None
        self._clock = broker.clock
        self._stats = broker.stats
        self._hooks = broker.hooks
        self._parser = Parser(max_packet_size=broker.config.max_packet_size)
        self._ended = False
        self._last_seen = 0.0
        self._connect_timer: IDelayedCall | None = None
        self._keepalive_timer: IDelayedCall | None = None
        self._abort_timer: IDelayedCall | None = None
        #: reading side of flow control (made when the transport is known)
        self._input: InputGate = None  # type: ignore[assignment]
        #: set while a closing connection discards its input (after a reason code)
        self._linger: Linger | None = None
        #: bytes written while input is handled, sent together (see outputbatch)
        self._pending: list[bytes] | None = None

    # -- connection lifetime ----------------------------------------------------------

    def connectionMade(self) -> None:
        stats = self._stats
        stats.sockets_total += 1
        stats.connections_open += 1
        stats.listener_connections[self.listener] = (
            stats.listener_connections.get(self.listener, 0) + 1
        )
        broker = self.broker
        limit = broker.config.max_connections
        if limit and stats.connections_open > limit:
            self._over_limit("max-connections", f"--max-connections {limit} reached")
            return
        broker.limits.ok("max-connections")
        if not broker.connection_rate.allow(self.peer_host(), self._clock.seconds()):
            rate = broker.config.max_connection_rate
            self._over_limit("max-connection-rate", f"--max-connection-rate {rate}/s exceeded")
            return
        broker.limits.ok("max-connection-rate")
        self._last_seen = self._clock.seconds()
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:  # small MQTT packets must not wait for Nagle's algorithm
            try:
                set_no_delay(True)
            except OSError:
                pass
        self.transport.registerProducer(self, True)
        self._input = InputGate(self.transport, self._clock, self._stats, self._handle_input)
        self._connect_timer = self._clock.callLater(
            self.broker.config.connect_timeout, self._connect_timed_out
        )

    def connectionLost(self, reason=None) -> None:
        self._stats.connections_open -= 1
        counts = self._stats.listener_connections
        counts[self.listener] = counts.get(self.listener, 1) - 1
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        if self._linger is not None:
            self._linger.cancel()
        if not self._ended:
            self._end("connection lost", publish_will=True)

    def _over_limit(self, name: str, why: str) -> None:
        """--max-connections, --max-connection-rate: closed at once, counted, logged once
        per burst."""
        self._ended = True
        self._stats.connections_refused += 1
        self.broker.limits.exceeded(
            name, "connection from {peer} closed: {why}", peer=self._peer(), why=why
        )
        self.transport.loseConnection()

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

    def _end(
        self,
        reason: str,
        publish_will: bool,
        reason_code: int | None = None,
        told: bool = False,
    ) -> None:
        """Close the connection once: DISCONNECT (5.0), will, session bookkeeping, log.

        A client that was told why (a DISCONNECT, or ``told``: a refusing CONNACK) gets
        time to read it before the connection closes (:class:`Linger`)."""
        if self._ended:
            return
        self._ended = True
        for timer in (self._connect_timer, self._keepalive_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._connect_timer = self._keepalive_timer = None
        if self._input is not None:
            for holder in self._input.close():
                holder.forget_reader(self)
        if self._held is not None:  # never sent: the client sends again on its next connection
            self._held.abandon()
            self._held = None
        session = self.session
        if session is not None:
            if reason_code is not None and self.protocol_level == MQTT_5:
                self._write(self._disconnect_packet(reason_code, reason))
                told = True
            will = self.will if publish_will else None
            self.will = None
            self.broker.session_closed(session, self, will)
            log.info(
                "client {client_id} disconnected ({peer}, listener {listener}): {reason}",
                client_id=session.client_id,
                peer=self._peer(),
                listener=self.listener,
                reason=_short(reason),
            )
        self.flush_output()  # before the transport closes: the reason code included
        self.transport.unregisterProducer()
        if told and self.transport.connected:
            self._linger = Linger(self.transport, self._clock, self._close)
        else:
            self._close()

    def _close(self) -> None:
        """Close the transport; abort it if it cannot flush in time."""
        self.transport.loseConnection()
        if self.transport.connected:
            self._abort_timer = self._clock.callLater(CLOSE_GRACE_SECONDS, self._abort)

    def _disconnect_packet(self, reason_code: int, reason: str) -> bytes:
        """A 5.0 DISCONNECT; its Reason String only when allowed [MQTT-3.1.2-29] and only
        when it keeps the packet within the client's Maximum Packet Size [MQTT-3.14.2-3]."""
        allowed = self.terms is None or self.terms.request_problem_information
        return _fitting(
            lambda properties: encode(Disconnect(reason_code, properties), MQTT_5),
            {Property.REASON_STRING: _short(reason)} if allowed else {},
            self.max_packet_size,
        )

    def _abort(self) -> None:
        self._abort_timer = None
        self.transport.abortConnection()

    def take_over(self) -> None:
        """Another connection took this client id [MQTT-3.1.4-2]."""
        self._end(
            "session taken over", publish_will=True, reason_code=ReasonCode.SESSION_TAKEN_OVER
        )

    def shut_down(self) -> None:
        """The broker is stopping: DISCONNECT 0x8B (5.0) and close, without the will."""
        self._end(
            "server shutting down", publish_will=False, reason_code=ReasonCode.SERVER_SHUTTING_DOWN
        )

    # -- bytes in ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._ended:
            if self._linger is not None:
                self._linger.discard(data)
            return
        self._last_seen = self._clock.seconds()
        self._stats.bytes_received += len(data)
        self._parser.feed(data)
        if self._input.open:
            self._handle_input()

    # -- flow control of input (see mqtt_twisted.inputgate) ----------------------------

    def hold_input(self, by: object) -> None:
        """Stop handling input for now: a subscriber this connection publishes to is full,
        or the handshake awaits an answer."""
        if not self._ended:
            self._input.hold(by)

    def release_input(self, by: object) -> None:
        """``by`` no longer needs this connection to wait: read and handle input again."""
        if not self._ended:
            self._input.release(by)

    def _handle_input(self) -> None:
        """Handle buffered packets: at most PACKETS_PER_TURN, and none while held; what
        that writes to any connection leaves when it returns (see outputbatch)."""
        begin()
        try:
            self._handle_packets()
        finally:
            end()

    def _handle_packets(self) -> None:
        parser = self._parser
        handlers = HANDLERS
        gate = self._input
        budget = PACKETS_PER_TURN
        self._last_seen = self._clock.seconds()
        try:
            while budget:
                packet = parser.next_packet()
                if packet is None:
                    return
                budget -= 1
                handlers[packet.type](self, packet)  # type: ignore[operator]
                if self._ended or not gate.open:
                    return
            if parser.buffered:
                gate.next_turn()
        except UnsupportedProtocolVersion as error:
            if self.session is not None or self._handshake is not None:  # [MQTT-3.1.0-2]
                self._violation(
                    PacketError("second CONNECT on a connection", ReasonCode.PROTOCOL_ERROR)
                )
                return
            self.refuse(
                Refused(
                    str(error.message),
                    ConnackCode.UNACCEPTABLE_PROTOCOL_VERSION,
                    ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
                ),
                level=MQTT_5 if error.protocol_level == MQTT_5 else 4,
            )
        except PacketError as error:
            self._violation(error)
        finally:
            self._stats.messages_received += PACKETS_PER_TURN - budget

    def _violation(self, error: PacketError) -> None:
        """A malformed packet or protocol error: log it and close (will published)."""
        if self.session is None and self._handshake is not None:  # during AUTH: a CONNACK
            self._handshake.refuse(Refused(error.message, None, error.reason_code))
            return
        if self.session is None:
            log.info(
                "closing connection from {peer} before CONNECT: {error}",
                peer=self._peer(),
                error=error.message,
            )
            self._end(error.message, publish_will=False)
            return
        kind = "packet too large" if isinstance(error, PacketTooLarge) else "protocol error"
        self._end(
            f"{kind}: {_short(error.message)}", publish_will=True, reason_code=error.reason_code
        )

    # -- bytes out --------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Write one encoded packet, counting it."""
        stats = self._stats
        stats.messages_sent += 1
        stats.bytes_sent += len(data)
        if self._held is None:
            self.emit(data)
        else:
            self._hold_output(data)

    def _send(self, packet) -> None:
        self._write(encode(packet, self.protocol_level))

    # -- CONNECT ----------------------------------------------------------------------

    def _on_connect(self, connect: Connect) -> None:
        if self.session is not None or self._handshake is not None:  # [MQTT-3.1.0-2]
            raise PacketError("second CONNECT on a connection", ReasonCode.PROTOCOL_ERROR)
        self.protocol_level = connect.protocol_level
        self._handshake = Handshake(self, connect)
        self._handshake.start()

    def accept(self, handshake: Handshake, auth_data: bytes | None = None) -> None:
        """The handshake accepted the client: open its session and send CONNACK."""
        self._handshake = None
        terms, connect, identity = handshake.terms, handshake.connect, handshake.identity
        assert terms is not None and identity is not None
        if self._connect_timer is not None and self._connect_timer.active():
            self._connect_timer.cancel()
        self._connect_timer = None
        broker = self.broker
        config = broker.config
        self.terms = terms
        self.identity = identity
        self.username = identity.username
        self.keep_alive = terms.keep_alive
        properties = {}
        if self.protocol_level == MQTT_5:
            self.receive_maximum = terms.receive_maximum
            self.max_packet_size = terms.max_packet_size
            self._inbound_aliases = InboundAliases(config.max_topic_alias)
            if terms.topic_alias_maximum:
                self._outbound_aliases = OutboundAliases(terms.topic_alias_maximum)
            properties = connack_properties(terms, config)
            if handshake.method is not None:  # enhanced authentication [MQTT-4.12.0-1]
                properties[Property.AUTHENTICATION_METHOD] = handshake.method
                if auth_data is not None:
                    properties[Property.AUTHENTICATION_DATA] = auth_data
        session, present = broker.open_session(
            terms.client_id,
            connect.clean_start,
            terms.expiry_interval,
            identity,
            self.protocol_level,
        )
        self.session = session
        self.will = connect.will
        if present:  # the session it promises is committed first
            self.await_commit()
        self._send(ConnAck(present, 0, properties))  # [MQTT-3.2.2-2], [MQTT-3.2.2-3]
        if self.keep_alive:
            self._keepalive_timer = self._clock.callLater(
                self.keep_alive * 1.5, self._check_keepalive
            )
        log.info(
            "client {client_id} connected from {peer} (MQTT {version}, listener {listener}, "
            "clean session {clean}, keep alive {keep_alive}, username {username})",
            client_id=terms.client_id,
            peer=self._peer(),
            version=PROTOCOL_NAMES.get(self.protocol_level, "?"),
            listener=self.listener,
            clean=connect.clean_start,
            keep_alive=self.keep_alive,
            username=self.username,
        )
        session.attach(self)

    # -- what the handshake needs ---------------------------------------------------------

    @property
    def ended(self) -> bool:
        """Whether this connection has been closed (or is closing)."""
        return self._ended

    def peer(self) -> str:
        """``host:port`` of the client."""
        return self._peer()

    def peer_host(self) -> str:
        """The client's host (its address without the port)."""
        return str(getattr(self.transport.getPeer(), "host", ""))

    def send_packet(self, packet) -> None:
        """Encode and write one packet at this connection's protocol level."""
        self._send(packet)

    def refuse(
        self,
        refused: Refused,
        level: int,
        problem_information: bool = True,
        max_packet_size: int | None = None,
    ) -> None:
        """Answer CONNECT with a refusing CONNACK (when the version has a code for it) and close.

        The Reason String is left out when the client sent Request Problem Information 0,
        or when it would make the CONNACK larger than the client's Maximum Packet Size
        [MQTT-3.2.2-19]."""
        self.protocol_level = level
        code = refused.code_v5 if level == MQTT_5 else refused.code_v3
        if code is not None:  # [MQTT-3.2.2-5]
            properties = (
                {Property.REASON_STRING: _short(refused.reason)}
                if level == MQTT_5 and problem_information
                else {}
            )
            self._write(
                _fitting(
                    lambda props: encode(ConnAck(False, code, props), level),
                    properties,
                    max_packet_size,
                )
            )
        log.info(
            "refused connection from {peer} (listener {listener}): {reason}",
            peer=self._peer(),
            listener=self.listener,
            reason=_short(refused.reason),
        )
        self._end(refused.reason, publish_will=False, told=code is not None)

    # -- keep alive -------------------------------------------------------------------

    def _check_keepalive(self) -> None:
        """Close a client silent for 1.5 x its keep alive [MQTT-3.1.2-24].

        While its input is held back by flow control the broker is not reading it, so the
        client counts as alive."""
        limit = self.keep_alive * 1.5
        if not self._input.open:
            self._last_seen = self._clock.seconds()
        idle = self._clock.seconds() - self._last_seen
        if idle >= limit:
            self._keepalive_timer = None
            self._end(
                "keep alive timeout", publish_will=True, reason_code=ReasonCode.KEEP_ALIVE_TIMEOUT
            )
        else:
            self._keepalive_timer = self._clock.callLater(limit - idle, self._check_keepalive)

    # -- subscriptions ----------------------------------------------------------------

    def _on_subscribe(self, packet: Subscribe) -> None:
        session = self.session
        assert session is not None
        requests = packet.subscriptions
        v5 = self.protocol_level == MQTT_5
        subscription_id = None
        if v5:
            ids = packet.properties.get(Property.SUBSCRIPTION_IDENTIFIER)
            subscription_id = ids[0] if ids else None
            for request in requests:
                if request.no_local and request.topic_filter.startswith(SHARE_PREFIX):
                    raise PacketError(
                        "No Local on a shared subscription",  # [MQTT-3.8.3-4]
                        ReasonCode.PROTOCOL_ERROR,
                    )
        existed = [r.topic_filter in session.subscriptions for r in requests]
        changes = self._journal_changes()
        codes = self.broker.subscribe(session, requests, subscription_id)
        if self._journal_changes() != changes:
            self.await_commit()
        if self.broker.cluster is not None:
            self._await_cluster()  # SUBACK once the other nodes know the subscription
        if v5:
            wire_codes = [ReasonCode.TOPIC_FILTER_INVALID if c == 0x80 else c for c in codes]
        else:  # 3.x has one failure code [MQTT-3.9.3-2]
            wire_codes = [0x80 if c >= 0x80 else c for c in codes]
        self._send(SubAck(packet.packet_id, wire_codes))  # [MQTT-3.8.4-1]
        self.broker.send_retained(session, requests, codes, existed)

    def _on_unsubscribe(self, packet: Unsubscribe) -> None:
        session = self.session
        assert session is not None
        changes = self._journal_changes()
        codes = self.broker.unsubscribe(session, packet.topic_filters)
        if self._journal_changes() != changes:
            self.await_commit()
        if self.broker.cluster is not None:
            self._await_cluster()
        if self.protocol_level == MQTT_5:
            codes = [
                ReasonCode.TOPIC_FILTER_INVALID
                if code and not validate_topic_filter(topic_filter)
                else code
                for code, topic_filter in zip(codes, packet.topic_filters)
            ]
        self._send(UnsubAck(packet.packet_id, codes))  # [MQTT-3.10.4-4]

    def _on_pingreq(self, packet) -> None:
        self._write(PINGRESP)  # [MQTT-3.12.4-1]

    def _on_disconnect(self, packet) -> None:
        session, terms = self.session, self.terms
        assert session is not None and terms is not None
        if self.protocol_level == MQTT_5:
            expiry = packet.properties.get(Property.SESSION_EXPIRY_INTERVAL)
            if expiry is not None:
                if terms.expiry_interval == 0 and expiry != 0:  # [MQTT-3.14.2-2]
                    raise PacketError(
                        "session expiry set on DISCONNECT after 0 in CONNECT",
                        ReasonCode.PROTOCOL_ERROR,
                    )
                session.expiry_interval = None if expiry == NEVER_EXPIRES else float(expiry)
        # A clean DISCONNECT discards the will [MQTT-3.14.4-3]; 5.0 reason 0x04 keeps it.
        keep_will = self.protocol_level == MQTT_5 and packet.reason_code == 0x04
        self._end("client sent DISCONNECT", publish_will=keep_will)

    def _on_auth(self, packet) -> None:
        if self._handshake is None or self._handshake.method is None:  # [MQTT-4.12.0-1]
            raise PacketError("AUTH without an authentication method", ReasonCode.PROTOCOL_ERROR)
        self._handshake.auth(packet)


#: characters of a reason (Reason String, log line) kept: a reason quoting a client's topic
#: or client id must not exceed an MQTT string, nor flood the log
MAX_REASON = 200


def _short(reason: str) -> str:
    """``reason``, cut to MAX_REASON characters."""
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 1] + "…"


def _fitting(
    encoder: Callable[[dict], bytes], properties: dict, max_packet_size: int | None
) -> bytes:
    """Encode with ``properties``, or without them if that packet would exceed the client's
    Maximum Packet Size [MQTT-3.1.2-24] (they are only a Reason String here)."""
    data = encoder(properties)
    if properties and max_packet_size is not None and len(data) > max_packet_size:
        data = encoder({})
    return data


#: packet type -> MQTTProtocol method (one table for all connections)
HANDLERS = {
    PacketType.CONNECT: MQTTProtocol._on_connect,
    PacketType.PUBLISH: MQTTProtocol._on_publish,
    PacketType.PUBACK: MQTTProtocol._on_puback,
    PacketType.PUBREC: MQTTProtocol._on_pubrec,
    PacketType.PUBREL: MQTTProtocol._on_pubrel,
    PacketType.PUBCOMP: MQTTProtocol._on_pubcomp,
    PacketType.SUBSCRIBE: MQTTProtocol._on_subscribe,
    PacketType.UNSUBSCRIBE: MQTTProtocol._on_unsubscribe,
    PacketType.PINGREQ: MQTTProtocol._on_pingreq,
    PacketType.DISCONNECT: MQTTProtocol._on_disconnect,
    PacketType.AUTH: MQTTProtocol._on_auth,
}


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
