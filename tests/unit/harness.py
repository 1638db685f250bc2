"""Drive MQTTProtocol connections over StringTransport with a task.Clock: no sockets, no reactor."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mqtt_twisted.broker import Broker, BrokerConfig
from mqtt_twisted.inputgate import LINGER_SECONDS
from mqtt_twisted.packets import Connect, Parser, encode
from mqtt_twisted.protocol import MQTTProtocol


def make_broker(**config) -> tuple[Broker, Clock]:
    clock = Clock()
    return Broker(clock, BrokerConfig(**config)), clock


class FakeClient:
    """One client connection: send packets in, read decoded packets out."""

    def __init__(self, broker: Broker, level: int = 4) -> None:
        self.level = level
        self.protocol = MQTTProtocol(broker, "unit")
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self._parser = Parser(protocol_level=level, client_side=True)

    def send(self, packet) -> None:
        self.protocol.dataReceived(encode(packet, self.level))

    def send_bytes(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def received_bytes(self) -> bool:
        """Whether the broker wrote anything not yet read with :meth:`received`."""
        return bool(self.transport.value())

    def received(self) -> list:
        """Packets the broker wrote since the last call."""
        self._parser.feed(self.transport.value())
        self.transport.clear()
        out = []
        while (packet := self._parser.next_packet()) is not None:
            out.append(packet)
        return out

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def closes_after_linger(self, clock) -> bool:
        """Told why it is closed (a DISCONNECT or refusing CONNACK), the connection first
        lingers so the client can read the reason, then closes."""
        if self.transport.disconnecting:
            return False
        clock.advance(LINGER_SECONDS)
        return self.transport.disconnecting

    def lose(self) -> None:
        """The socket went away (no DISCONNECT)."""
        self.protocol.connectionLost(None)


def connected(broker: Broker, client_id: str, level: int = 4, **connect) -> FakeClient:
    """A client that sent CONNECT and got its CONNACK (consumed)."""
    client = FakeClient(broker, level)
    protocol_name = "MQIsdp" if level == 3 else "MQTT"
    client.send(Connect(client_id, level, protocol_name, **connect))
    (connack,) = client.received()
    assert connack.return_code == 0, connack
    return client
