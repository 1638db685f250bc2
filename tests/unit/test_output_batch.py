"""Output written while one connection's input is handled leaves in one transport write
per connection, in order, when that handling returns (mqtt_twisted.outputbatch). Writes made outside input handling
(timers, commits) go out at once: the keep-alive, $SYS and store tests cover those."""

from __future__ import annotations

from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactor, StringTransport

from mqtt_twisted.inputgate import LINGER_SECONDS
from mqtt_twisted.packets import (
    Connect,
    Parser,
    PubAck,
    Publish,
    Subscribe,
    SubscriptionRequest,
    encode,
)
from mqtt_twisted.protocol import MQTTProtocol

from .harness import FakeClient, connected, make_broker


class CountingTransport(StringTransport):
    """A StringTransport that counts the calls that wrote to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def writeSequence(self, data) -> None:
        self.writes += 1
        super().writeSequence(data)


def counted(broker, client_id: str) -> FakeClient:
    client = connected(broker, client_id)
    counting = CountingTransport()
    counting.producer = client.transport.producer
    client.transport = counting
    client.protocol.transport = counting
    return client


def test_a_burst_reaches_each_connection_in_one_write_in_order():
    broker, _clock = make_broker()
    subscribers = [counted(broker, f"sub{i}") for i in range(3)]
    for subscriber in subscribers:
        subscriber.send(Subscribe(1, [SubscriptionRequest("t/#", 1)]))
        subscriber.received()
        subscriber.transport.writes = 0
    publisher = counted(broker, "pub")
    burst = b"".join(
        encode(Publish(f"t/{i}", b"%d" % i, qos=1, packet_id=i + 1), 4) for i in range(10)
    )
    publisher.send_bytes(burst)  # one segment: ten PUBLISHes
    # every subscriber: ten PUBLISHes in publish order [MQTT-4.6.0-6], in one write
    for subscriber in subscribers:
        packets = subscriber.received()
        assert [p.payload for p in packets] == [b"%d" % i for i in range(10)]
        assert subscriber.transport.writes == 1
    # the publisher: its ten PUBACKs in order [MQTT-4.6.0-2], in one write
    assert [p.packet_id for p in publisher.received() if isinstance(p, PubAck)] == list(
        range(1, 11)
    )
    assert publisher.transport.writes == 1


class FakeSocket(FileDescriptor):
    """A socket transport (Twisted's FileDescriptor, as TCP and Unix connections are)
    whose kernel buffer takes ``room`` bytes, registered with a MemoryReactor that never
    runs: what reaches ``sent`` was handed to the socket without waiting for a turn."""

    def __init__(self, room: int = 1 << 20) -> None:
        self.memory_reactor = MemoryReactor()
        super().__init__(self.memory_reactor)
        self.connected = 1
        self.room = room
        self.sent = b""
        self.closed = False

    def fileno(self) -> int:
        return 99

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 40000)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 1883)

    def writeSomeData(self, data) -> int:
        taken = bytes(data[: self.room])
        self.room -= len(taken)
        self.sent += taken
        return len(taken)

    def loseConnection(self, *args) -> None:
        self.closed = True
        super().loseConnection(*args)

    def reactor_turn(self) -> None:
        """What the reactor does when the socket is writable again."""
        self.room = 1 << 20
        if self in self.memory_reactor.getWriters():
            self.doWrite()

    def packets(self, level: int = 4) -> list:
        parser = Parser(protocol_level=level, client_side=True)
        parser.feed(self.sent)
        return list(iter(parser.next_packet, None))


def socket_client(
    broker, client_id: str, room: int = 1 << 20, level: int = 4
) -> tuple[MQTTProtocol, FakeSocket]:
    protocol = MQTTProtocol(broker, "unit")
    transport = FakeSocket(room)
    protocol.makeConnection(transport)
    protocol.dataReceived(encode(Connect(client_id, level, "MQTT"), level))
    return protocol, transport


def test_a_socket_is_handed_the_burst_before_the_reactor_turns_again():
    broker, _clock = make_broker()
    subscriber, sub_socket = socket_client(broker, "sub")
    subscriber.dataReceived(encode(Subscribe(1, [SubscriptionRequest("t/#", 1)]), 4))
    publisher, pub_socket = socket_client(broker, "pub")
    burst = b"".join(
        encode(Publish(f"t/{i}", b"%d" % i, qos=1, packet_id=i + 1), 4) for i in range(10)
    )
    publisher.dataReceived(burst)
    # in the subscriber's socket already, in publish order [MQTT-4.6.0-6]
    publishes = [p for p in sub_socket.packets() if isinstance(p, Publish)]
    assert [p.payload for p in publishes] == [b"%d" % i for i in range(10)]
    assert sub_socket not in sub_socket.memory_reactor.getWriters()  # nothing left to send
    acks = [p.packet_id for p in pub_socket.packets() if isinstance(p, PubAck)]
    assert acks == list(range(1, 11))  # in order [MQTT-4.6.0-2]


def test_what_the_socket_cannot_take_is_sent_by_the_reactor_in_order():
    broker, _clock = make_broker()
    subscriber, sub_socket = socket_client(broker, "sub")
    subscriber.dataReceived(encode(Subscribe(1, [SubscriptionRequest("t/#", 0)]), 4))
    _publisher, _pub_socket = socket_client(broker, "pub")
    sub_socket.room = 20  # the kernel buffer is nearly full
    _publisher.dataReceived(b"".join(encode(Publish(f"t/{i}", b"x" * 30), 4) for i in range(5)))
    assert len(sub_socket.sent) < 5 * 37
    assert sub_socket in sub_socket.memory_reactor.getWriters()  # the rest waits for it
    sub_socket.reactor_turn()
    assert [p.topic for p in sub_socket.packets() if isinstance(p, Publish)] == [
        f"t/{i}" for i in range(5)
    ]


def test_a_connection_taken_over_reads_its_reason_code_then_closes():
    """[MQTT-3.1.4-2]: the old MQTT 5 connection gets DISCONNECT 0x8E (Session taken over)
    in its socket, then closes once it had time to read it. A closing connection's last
    bytes are left to the reactor, which also finishes the close."""
    broker, clock = make_broker()
    _first, first_socket = socket_client(broker, "same", level=5)
    _second, second_socket = socket_client(broker, "same", level=5)
    first_socket.reactor_turn()
    reply = first_socket.packets(level=5)
    assert [(type(p).__name__, p.reason_code) for p in reply[1:]] == [("Disconnect", 0x8E)]
    assert not first_socket.closed
    clock.advance(LINGER_SECONDS)
    assert first_socket.closed
    assert not second_socket.closed
