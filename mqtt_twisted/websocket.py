"""MQTT over WebSocket: a thin autobahn adapter that feeds the one :class:`MQTTProtocol`.

MQTT 5.0 section 6 / 3.1.1 section 6: binary frames only [MQTT-6.0.0-1], packets need not
align with frames [MQTT-6.0.0-2], subprotocol ``mqtt`` (``mqttv3.1`` for old clients)
[MQTT-6.0.0-3]; a handshake offering neither is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import ITransport
from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted.broker import Broker
from mqtt_twisted.protocol import MQTTProtocol

log = Logger()

SUBPROTOCOLS = ("mqtt", "mqttv3.1")
CLOSE_UNSUPPORTED_DATA = 1003


@implementer(ITransport)
class WebSocketTransport:
    """What the MQTT protocol writes to: each write is one binary WebSocket message."""

    def __init__(self, websocket: MQTTWebSocketProtocol) -> None:
        self._websocket = websocket
        self.connected = True
        self.disconnecting = False

    @property
    def _stream(self) -> Any:
        """The TCP or TLS transport under the WebSocket (a producer and a consumer)."""
        return self._websocket.transport

    def write(self, data: bytes) -> None:
        if self.connected:
            self._websocket.sendMessage(data, isBinary=True)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self.connected and not self.disconnecting:
            self.disconnecting = True
            self._websocket.sendClose(1000)

    def abortConnection(self) -> None:
        self._websocket.dropConnection(abort=True)

    def getPeer(self):
        return self._websocket.transport.getPeer()

    def getHost(self):
        return self._websocket.transport.getHost()

    def getPeerCertificate(self):
        """The client certificate when the WebSocket runs over TLS (WSS)."""
        get_certificate = getattr(self._websocket.transport, "getPeerCertificate", None)
        return get_certificate() if get_certificate is not None else None

    def registerProducer(self, producer, streaming: bool) -> None:
        # Flow control comes from the TCP/TLS transport underneath. twisted.web's HTTPChannel
        # registered itself there before the upgrade and autobahn's WebSocketResource leaves it
        # registered, so take its place (registering on top of it raises RuntimeError).
        transport = self._stream
        transport.unregisterProducer()
        transport.registerProducer(producer, streaming)

    def pauseProducing(self) -> None:
        """Stop reading the connection underneath (flow control of the MQTT input)."""
        transport = self._stream
        if transport is not None and self.connected:
            transport.pauseProducing()

    def resumeProducing(self) -> None:
        transport = self._stream
        if transport is not None and self.connected:
            transport.resumeProducing()

    def unregisterProducer(self) -> None:
        if self._stream is not None:
            self._stream.unregisterProducer()


class MQTTWebSocketProtocol(WebSocketServerProtocol):
    """One WebSocket connection carrying one MQTT connection."""

    mqtt: MQTTProtocol | None = None

    def onConnect(self, request) -> str:
        factory = self.factory
        origins = factory.allowed_origins
        origin = request.headers.get("origin")
        if origins and origin is not None and origin not in origins:
            log.info(
                "refused WebSocket handshake from {peer}: origin {origin} not allowed",
                peer=request.peer,
                origin=origin,
            )
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        for subprotocol in SUBPROTOCOLS:
            if subprotocol in request.protocols:
                return subprotocol
        log.info(
            "refused WebSocket handshake from {peer}: no mqtt subprotocol offered ({offered})",
            peer=request.peer,
            offered=request.protocols,
        )
        raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, "subprotocol mqtt or mqttv3.1 required")

    def onOpen(self) -> None:
        factory = self.factory
        self.mqtt = MQTTProtocol(factory.broker, factory.listener, factory.use_identity_as_username)
        self.mqtt.makeConnection(WebSocketTransport(self))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not isBinary:  # [MQTT-6.0.0-1]
            # sendClose() only takes 1000 / 3000-4999; 1003 (unsupported data) is a protocol code
            self.sendCloseFrame(
                CLOSE_UNSUPPORTED_DATA, b"MQTT over WebSocket uses binary frames only"
            )
            return
        if self.mqtt is not None:
            self.mqtt.dataReceived(payload)

    def onClose(self, wasClean: bool, code, reason) -> None:
        mqtt, self.mqtt = self.mqtt, None
        if mqtt is not None:
            mqtt.transport.connected = False  # the adapter: a plain attribute
            mqtt.connectionLost(None)


class MQTTWebSocketFactory(WebSocketServerFactory):
    """WebSocket factory for the ``/mqtt`` resource of one HTTP listener."""

    protocol = MQTTWebSocketProtocol

    def __init__(
        self,
        broker: Broker,
        listener: str = "",
        allowed_origins: Sequence[str] = (),
        use_identity_as_username: bool = False,
    ) -> None:
        super().__init__()
        self.broker = broker
        self.listener = listener
        self.allowed_origins = frozenset(allowed_origins)
        self.use_identity_as_username = use_identity_as_username
        limit = broker.config.max_packet_size + 5  # one WebSocket message never exceeds a packet
        self.setProtocolOptions(
            maxFramePayloadSize=limit,
            maxMessagePayloadSize=limit,
            perMessageCompressionAccept=lambda offers: None,
        )
