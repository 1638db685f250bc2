"""From CONNECT to CONNACK: the broker's rules, authentication (perhaps an AUTH exchange,
perhaps waiting for a Deferred), then acceptance or a refusing CONNACK.

While an answer is awaited the connection handles none of its later packets, so a client's
packets are never reordered and the reactor never waits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtt_twisted.broker.hooks import (
    Authenticated,
    Challenge,
    ClientIdentity,
    ConnectRequest,
)
from mqtt_twisted.connect import ConnectTerms, Refused, check_connect
from mqtt_twisted.packets import (
    Auth,
    ConnackCode,
    Connect,
    PacketError,
    Property,
    ReasonCode,
)
from mqtt_twisted.tls import peer_common_name

if TYPE_CHECKING:
    from mqtt_twisted.protocol import MQTTProtocol

log = Logger()

METHOD = Property.AUTHENTICATION_METHOD
DATA = Property.AUTHENTICATION_DATA


class Handshake:
    """One CONNECT being answered. Made by the protocol; calls back ``accept`` or ``refuse``."""

    __slots__ = ("protocol", "connect", "terms", "identity", "_respond", "_waiting")

    def __init__(self, protocol: MQTTProtocol, connect: Connect) -> None:
        self.protocol = protocol
        self.connect = connect
        self.terms: ConnectTerms | None = None
        self.identity: ClientIdentity | None = None
        #: the next step of an enhanced authentication exchange (AUTH expected)
        self._respond: Any = None
        self._waiting = False

    @property
    def method(self) -> str | None:
        """The MQTT 5 Authentication Method, if the client asked for one."""
        return self.connect.properties.get(METHOD)

    def start(self) -> None:
        """Apply the broker's rules, then ask the hooks who this is."""
        protocol, connect = self.protocol, self.connect
        broker = protocol.broker
        try:
            if not broker.accepting:
                raise Refused(
                    "server shutting down",
                    ConnackCode.SERVER_UNAVAILABLE,
                    ReasonCode.SERVER_UNAVAILABLE,
                )
            self.terms = check_connect(connect, broker.config)
            certificate_username = None
            if protocol.use_identity_as_username:
                certificate_username = peer_common_name(protocol.transport)
                if certificate_username is None:
                    raise Refused(
                        "no client certificate to take the username from",
                        ConnackCode.NOT_AUTHORIZED,
                        ReasonCode.NOT_AUTHORIZED,
                    )
        except Refused as refused:
            self.refuse(refused)
            return
        request = ConnectRequest(
            client_id=self.terms.client_id,
            username=connect.username,
            password=connect.password,
            host=protocol.peer_host(),
            listener=protocol.listener,
            protocol_level=connect.protocol_level,
            method=self.method,
            data=connect.properties.get(DATA),
            certificate_username=certificate_username,
        )
        self._step(broker.hooks.authenticate, request)

    def auth(self, packet: Auth) -> None:
        """An AUTH packet from the client during the exchange."""
        respond, self._respond = self._respond, None
        if respond is None or self._waiting:
            raise PacketError("AUTH not expected now", ReasonCode.PROTOCOL_ERROR)
        if packet.reason_code != ReasonCode.CONTINUE_AUTHENTICATION:
            raise PacketError("AUTH must continue the authentication", ReasonCode.PROTOCOL_ERROR)
        if packet.properties.get(METHOD) != self.method:  # [MQTT-4.12.0-5]
            raise PacketError("AUTH with another authentication method", ReasonCode.PROTOCOL_ERROR)
        self._step(respond, packet.properties.get(DATA, b""))

    def _step(self, call: Any, argument: Any) -> None:
        try:
            result = call(argument)
        except Refused as refused:
            self.refuse(refused)
            return
        except Exception:
            self._failed(Failure())
            return
        if isinstance(result, Deferred):
            if not result.called:  # a cached or anonymous answer goes on at once
                self._waiting = True
                self.protocol.hold_input(self)
            result.addCallbacks(self._answered, self._failed)
        else:
            self._answered(result)

    def _answer_arrived(self) -> bool:
        """The awaited answer came: the connection may read again; False if it is gone."""
        if self._waiting:
            self._waiting = False
            self.protocol.release_input(self)
        return not self.protocol.ended

    def _answered(self, result: Authenticated | Challenge) -> None:
        protocol = self.protocol
        if not self._answer_arrived():
            return
        if isinstance(result, Challenge):
            self._respond = result.respond
            auth = Auth(
                ReasonCode.CONTINUE_AUTHENTICATION, {METHOD: self.method, DATA: result.data}
            )
            protocol.send_packet(auth)
            return
        terms, connect = self.terms, self.connect
        assert terms is not None
        identity = ClientIdentity(
            terms.client_id, result.username, protocol.peer(), protocol.listener
        )
        will = connect.will
        if will is not None and not protocol.broker.hooks.may_publish(identity, will.topic):
            self.refuse(
                Refused(
                    f"not authorised to publish the will to {will.topic!r}",
                    ConnackCode.NOT_AUTHORIZED,
                    ReasonCode.NOT_AUTHORIZED,
                )
            )
            return
        self.identity = identity
        claim = protocol.broker.claim(identity.client_id, will)
        if claim is None:
            protocol.accept(self, result.data)
            return
        # In a cluster the client id is taken from whichever node holds it first.
        self._waiting = True
        protocol.hold_input(self)
        claim.addCallbacks(self._claimed, self._failed, (result.data,))

    def _claimed(self, epoch: int, auth_data: bytes | None) -> None:
        if not self._answer_arrived():
            return
        protocol = self.protocol
        protocol.accept(self, auth_data)
        cluster = protocol.broker.cluster
        assert cluster is not None and self.terms is not None
        cluster.claimed(self.terms.client_id, epoch)

    def _failed(self, failure: Failure) -> None:
        if not self._answer_arrived():
            return
        if failure.check(Refused):
            self.refuse(failure.value)
            return
        log.failure("authenticating {client_id} failed", failure, client_id=self.connect.client_id)
        self.refuse(
            Refused(
                "authentication is not available",
                ConnackCode.SERVER_UNAVAILABLE,
                ReasonCode.SERVER_UNAVAILABLE,
            )
        )

    def refuse(self, refused: Refused) -> None:
        """Answer with a refusing CONNACK (the protocol closes the connection)."""
        properties = self.connect.properties
        self.protocol.refuse(
            refused,
            self.connect.protocol_level,
            bool(properties.get(Property.REQUEST_PROBLEM_INFORMATION, 1)),
            properties.get(Property.MAXIMUM_PACKET_SIZE),
        )

    def forget_reader(self, reader: object) -> None:
        """(The connection it held while waiting ended: nothing to forget.)"""
