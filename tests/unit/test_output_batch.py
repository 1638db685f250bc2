"""Output written while one connection's input is handled leaves in one transport write
per connection, in order, when that handling returns (mqtt_twisted.outputbatch). Writes made outside input handling
(timers, commits) go out at once: the keep-alive, $SYS and store tests cover those."""

from __future__ import annotations

from twisted.internet.testing import StringTransport

from mqtt_twisted.packets import PubAck, Publish, Subscribe, SubscriptionRequest, encode

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
