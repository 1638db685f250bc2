"""Flow control with StringTransport and task.Clock: watermarks, the fairness bound, the grace
time of a slow subscriber, lingering after a reason code.

What is asserted is what clients see: packets written to them, acknowledgements their
publishers get, and whether the broker reads their connection (the transport's producer
state: ``paused`` means the broker stopped reading it, so TCP slows that client)."""

from __future__ import annotations

from mqtt_twisted.broker.systopics import SysTopics
from mqtt_twisted.inputgate import LINGER_BYTES, LINGER_SECONDS, PACKETS_PER_TURN
from mqtt_twisted.packets import (
    Connect,
    Property,
    PubAck,
    Publish,
    ReasonCode,
    Subscribe,
    SubscriptionRequest,
    encode,
)

from .harness import FakeClient, connected, make_broker


def wait(clock, seconds: float) -> None:
    """Let ``seconds`` pass in steps of 50 ms, as a running reactor would."""
    clock.pump([0.05] * round(seconds / 0.05))


def subscribe(client, topic_filter, qos=0, packet_id=1):
    client.send(Subscribe(packet_id, [SubscriptionRequest(topic_filter, qos)]))
    return client.received()


def reads(client: FakeClient) -> bool:
    """Whether the broker reads this client's connection."""
    return client.transport.producerState == "producing"


def publish_numbered(publisher: FakeClient, count: int, qos: int = 1, start: int = 0) -> None:
    """``count`` PUBLISHes to topic t, payloads start..start+count-1, one per segment."""
    for i in range(start, start + count):
        publisher.send(Publish("t", b"%d" % i, qos=qos, packet_id=i % 60000 + 1 if qos else None))


def payloads(packets) -> list[int]:
    return [int(p.payload) for p in packets if isinstance(p, Publish)]


def acked(packets) -> int:
    return sum(isinstance(p, PubAck) for p in packets)


def test_full_subscriber_holds_its_publisher_until_the_low_water_mark():
    """A subscriber that cannot take more (its socket buffer is full) holds its publisher
    back: the broker stops reading the publisher and acknowledges nothing it has not queued;
    when the queue drains to 90 % of the limit, reading resumes. Nothing is dropped."""
    broker, clock = make_broker(max_queued_messages=4)
    reader = connected(broker, "reader")
    subscribe(reader, "t")
    publisher = connected(broker, "pub")
    reader.protocol.pauseProducing()  # the reader's socket buffer is full
    publish_numbered(publisher, 10)
    assert acked(publisher.received()) == 5  # 4 queued + 1 over the mark, then held
    assert not reads(publisher)
    assert reads(reader)  # the reader's own input (its acknowledgements) still flows

    reader.protocol.resumeProducing()  # it reads again: queue drains, publisher released
    clock.advance(0)  # the publisher is read again on the next reactor turn
    assert payloads(reader.received()) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert acked(publisher.received()) == 5
    assert reads(publisher)
    assert broker.stats.publish_dropped == 0


def test_qos1_window_and_queue_hold_the_publisher_and_lose_nothing():
    """QoS 1 to a subscriber with 2 in flight and a queue of 4: a publisher sending 50 is
    held whenever the queue is full and every acknowledged message arrives, in order
    [MQTT-4.6.0-6]."""
    broker, clock = make_broker(max_queued_messages=4, max_inflight_messages=2)
    reader = connected(broker, "reader")
    subscribe(reader, "t", qos=1)
    publisher = connected(broker, "pub")
    data = b"".join(encode(Publish("t", b"%d" % i, qos=1, packet_id=i + 1), 4) for i in range(50))
    publisher.send_bytes(data)  # one segment: the broker stops inside it when held
    got: list[int] = []
    puback_count = acked(publisher.received())
    assert puback_count < 50 and not reads(publisher)
    for _ in range(200):
        packets = reader.received()
        if not packets:
            break
        got += payloads(packets)
        for packet in packets:
            reader.send(PubAck(packet.packet_id))
        clock.advance(0)
        puback_count += acked(publisher.received())
    assert got == list(range(50))
    assert puback_count == 50
    assert reads(publisher)
    assert broker.stats.publish_dropped == 0


def test_slow_subscriber_is_isolated_after_the_grace_time():
    """A subscriber that stays full holds its publishers for slow_client_grace seconds at most;
    then they are released, a fast subscriber of the same topic gets everything, and the slow
    one's queue is bounded: what does not fit is dropped and counted."""
    broker, clock = make_broker(max_queued_messages=4, slow_client_grace=5)
    slow = connected(broker, "slow")
    subscribe(slow, "t")
    fast = connected(broker, "fast")
    subscribe(fast, "t")
    publisher = connected(broker, "pub")
    slow.protocol.pauseProducing()
    publish_numbered(publisher, 20)
    assert payloads(fast.received()) == [0, 1, 2, 3, 4]
    assert not reads(publisher)
    wait(clock, 4.5)
    assert not reads(publisher)  # still within the grace time
    wait(clock, 0.75)
    assert reads(publisher)
    assert acked(publisher.received()) == 20
    assert payloads(fast.received()) == list(range(5, 20))
    assert broker.sessions["slow"].dropped == 15  # its queue holds 5 (4 + 1 over the mark)
    assert broker.stats.publish_dropped == 15
    assert broker.stats.clients_slow == 1

    publish_numbered(publisher, 10, start=20)  # slow: no longer holds anybody back
    assert reads(publisher)
    assert payloads(fast.received()) == list(range(20, 30))
    assert broker.sessions["slow"].dropped == 25

    slow.protocol.resumeProducing()  # it caught up: the oldest messages, then the new ones
    assert payloads(slow.received()) == [0, 1, 2, 3, 4]
    assert broker.stats.clients_slow == 0
    publish_numbered(publisher, 1, start=30)
    assert payloads(slow.received()) == [30]


def test_grace_restarts_after_the_subscriber_catches_up():
    broker, clock = make_broker(max_queued_messages=4, slow_client_grace=5)
    reader = connected(broker, "reader")
    subscribe(reader, "t")
    publisher = connected(broker, "pub")
    reader.protocol.pauseProducing()
    publish_numbered(publisher, 6)
    wait(clock, 3)
    reader.protocol.resumeProducing()  # drained within the grace time
    clock.advance(0)
    reader.received()
    reader.protocol.pauseProducing()
    publish_numbered(publisher, 10, start=6)
    wait(clock, 3)  # 6 s since the first hold, 3 s since the queue emptied
    assert not reads(publisher)
    wait(clock, 2.25)
    assert reads(publisher)


def test_grace_zero_never_holds():
    """slow_client_grace 0: Mosquitto's behaviour, a full queue drops at once."""
    broker, clock = make_broker(max_queued_messages=4, slow_client_grace=0)
    reader = connected(broker, "reader")
    subscribe(reader, "t")
    publisher = connected(broker, "pub")
    reader.protocol.pauseProducing()
    publish_numbered(publisher, 10)
    assert reads(publisher)
    assert acked(publisher.received()) == 10
    assert broker.sessions["reader"].dropped == 6


def test_publisher_to_other_topics_is_not_held():
    broker, clock = make_broker(max_queued_messages=4)
    reader = connected(broker, "reader")
    subscribe(reader, "t")
    other = connected(broker, "other")
    subscribe(other, "u")
    publisher = connected(broker, "pub")
    bystander = connected(broker, "bystander")
    reader.protocol.pauseProducing()
    publish_numbered(publisher, 10)
    assert not reads(publisher)
    bystander.send(Publish("u", b"x", qos=1, packet_id=1))
    assert reads(bystander)
    assert acked(bystander.received()) == 1
    assert [p.payload for p in other.received()] == [b"x"]
    assert broker.stats.connections_held == 1


def test_client_subscribed_to_its_own_messages_is_not_held_by_itself():
    """Its input carries the acknowledgements that drain its own queue."""
    broker, clock = make_broker(max_queued_messages=4, max_inflight_messages=2)
    client = connected(broker, "echo")
    subscribe(client, "t", qos=1)
    publish_numbered(client, 10)
    assert reads(client)


def test_bytes_limit_holds_too():
    broker, clock = make_broker(max_queued_bytes=1000, slow_client_grace=5)
    reader = connected(broker, "reader")
    subscribe(reader, "t")
    publisher = connected(broker, "pub")
    reader.protocol.pauseProducing()
    for i in range(5):
        publisher.send(Publish("t", bytes(400), qos=1, packet_id=i + 1))
    assert acked(publisher.received()) == 3  # 800 bytes queued, then 1200 and held
    assert not reads(publisher)
    wait(clock, 5.25)
    assert acked(publisher.received()) == 2
    assert broker.sessions["reader"].dropped == 2
    assert broker.sessions["reader"].queued_bytes == 1200


def test_held_publisher_that_disconnects_is_forgotten():
    broker, clock = make_broker(max_queued_messages=4)
    reader = connected(broker, "reader")
    subscribe(reader, "t")
    publisher = connected(broker, "pub")
    reader.protocol.pauseProducing()
    publish_numbered(publisher, 10)
    publisher.lose()
    assert broker.stats.connections_held == 0
    reader.protocol.resumeProducing()
    assert payloads(reader.received()) == [0, 1, 2, 3, 4]


def test_held_publisher_is_not_timed_out_by_keep_alive():
    """The broker does not read a held connection, so its silence is not the client's
    [MQTT-3.1.2-24] does not apply while held."""
    broker, clock = make_broker(max_queued_messages=4, slow_client_grace=60)
    reader = connected(broker, "reader")
    subscribe(reader, "t")
    publisher = connected(broker, "pub", keep_alive=10)
    reader.protocol.pauseProducing()
    publish_numbered(publisher, 10)
    wait(clock, 30)
    assert not publisher.closed
    wait(clock, 30.25)  # grace over: released, read again
    assert reads(publisher)
    clock.advance(16)  # now silent for 1.5 x keep alive
    assert publisher.closed


def test_burst_is_handled_a_bounded_number_of_packets_per_turn():
    """One connection's burst does not run whole while others wait: at most
    PACKETS_PER_TURN packets, the rest on the next reactor turns."""
    broker, clock = make_broker()
    publisher = connected(broker, "pub")
    count = PACKETS_PER_TURN * 2 + 50
    publisher.send_bytes(
        b"".join(encode(Publish("t", b"x", qos=1, packet_id=i + 1), 4) for i in range(count))
    )
    assert acked(publisher.received()) == PACKETS_PER_TURN
    assert not reads(publisher)
    other = connected(broker, "other")  # others are served meanwhile
    other.send(Publish("t", b"y", qos=1, packet_id=1))
    assert acked(other.received()) == 1
    clock.advance(0)  # the next turns (task.Clock runs them in one advance)
    assert acked(publisher.received()) == PACKETS_PER_TURN + 50
    assert reads(publisher)


def test_disconnect_lingers_so_the_client_can_read_it():
    """After DISCONNECT 0x93 the broker discards the client's input for a while instead of
    closing with it unread (which makes the kernel send a reset)."""
    broker, clock = make_broker(max_inflight_messages=2)
    client = connected(broker, "eager", level=5)
    for i in range(3):
        client.send(Publish("t", b"x", qos=2, packet_id=i + 1))
    *pubrecs, disconnect = client.received()
    assert disconnect.reason_code == ReasonCode.RECEIVE_MAXIMUM_EXCEEDED  # [MQTT-3.3.4-7]
    client.send(Publish("t", b"more", qos=2, packet_id=9))  # discarded, not answered
    assert client.received() == []
    assert not client.closed
    clock.advance(LINGER_SECONDS)
    assert client.closed


def test_linger_is_bounded_in_bytes():
    broker, clock = make_broker(max_inflight_messages=2)
    client = connected(broker, "eager", level=5)
    for i in range(3):
        client.send(Publish("t", b"x", qos=2, packet_id=i + 1))
    client.received()
    client.send_bytes(bytes(LINGER_BYTES + 1))
    assert client.closed


def test_refusing_connack_lingers_and_fits_the_maximum_packet_size():
    """A refused CONNECT with Maximum Packet Size 30: the CONNACK leaves out its Reason String
    rather than exceed it [MQTT-3.2.2-19], [MQTT-3.1.2-24]; then the connection lingers."""
    broker, clock = make_broker()
    client = FakeClient(broker, level=5)
    properties = {Property.MAXIMUM_PACKET_SIZE: 30, Property.AUTHENTICATION_METHOD: "X" * 40}
    client.send(Connect("refused", 5, properties=properties))
    raw = client.transport.value()
    assert raw[0] == 0x20 and len(raw) <= 30
    (connack,) = client.received()
    assert connack.return_code == ReasonCode.BAD_AUTHENTICATION_METHOD
    assert Property.REASON_STRING not in connack.properties
    roomy = FakeClient(broker, level=5)
    roomy.send(Connect("roomy", 5, properties={Property.AUTHENTICATION_METHOD: "X" * 40}))
    (connack,) = roomy.received()
    assert "XXXX" in connack.properties[Property.REASON_STRING]  # sent when it fits
    assert client.closes_after_linger(clock)


def test_disconnect_fits_the_maximum_packet_size():
    """A server DISCONNECT leaves out its Reason String when it would exceed the client's
    Maximum Packet Size [MQTT-3.14.2-3]; with room it keeps it."""
    broker, clock = make_broker(max_inflight_messages=1)
    small = connected(broker, "small", level=5, properties={Property.MAXIMUM_PACKET_SIZE: 30})
    big = connected(broker, "big", level=5)
    for client in (small, big):
        for i in range(2):
            client.send(Publish("t", b"x", qos=2, packet_id=i + 1))
    *_, small_disconnect = small.received()
    *_, big_disconnect = big.received()
    assert len(encode(small_disconnect, 5)) <= 30
    assert small_disconnect.reason_code == big_disconnect.reason_code == 0x93
    assert Property.REASON_STRING in big_disconnect.properties
    assert len(encode(big_disconnect, 5)) > 30
    assert Property.REASON_STRING not in small_disconnect.properties


def test_sys_store_figures_count_queued_messages_and_ticks_go_on():
    """$SYS store/messages/count|bytes follow the queues of offline persistent sessions (the
    tick that raised on them once stopped $SYS for good)."""
    broker, clock = make_broker()
    sys_topics = SysTopics(broker, interval=10)
    away = connected(broker, "away", clean_start=False)
    subscribe(away, "t", qos=1)
    away.lose()
    watcher = connected(broker, "watcher")
    subscribe(watcher, "$SYS/broker/#")
    sys_topics.start()
    publisher = connected(broker, "pub")
    for i in range(3):
        publisher.send(Publish("t", b"12345", qos=1, packet_id=i + 1))
    clock.advance(10)
    figures = {p.topic: p.payload for p in watcher.received()}
    retained = int(figures["$SYS/broker/retained messages/count"])  # $SYS's own
    assert int(figures["$SYS/broker/store/messages/count"]) == retained + 3
    assert figures["$SYS/broker/store/messages/bytes"] == b"15"
    back = FakeClient(broker)
    back.send(Connect("away", clean_start=False))
    for packet in back.received()[1:]:
        back.send(PubAck(packet.packet_id))
    clock.advance(10)
    figures = {p.topic: p.payload for p in watcher.received()}
    retained = int(figures.get("$SYS/broker/retained messages/count", retained))
    assert int(figures["$SYS/broker/store/messages/count"]) == retained
    assert figures["$SYS/broker/store/messages/bytes"] == b"0"


def test_failing_sys_tick_is_logged_and_rescheduled(monkeypatch):
    broker, clock = make_broker()
    sys_topics = SysTopics(broker, interval=10)
    watcher = connected(broker, "watcher")
    subscribe(watcher, "$SYS/broker/uptime")
    sys_topics.start()
    watcher.received()
    original = SysTopics.values

    def broken(self):
        raise ValueError("boom")

    monkeypatch.setattr(SysTopics, "values", broken)
    clock.advance(10)
    assert watcher.received() == []
    monkeypatch.setattr(SysTopics, "values", original)
    clock.advance(10)
    assert [p.payload for p in watcher.received()] == [b"20 seconds"]


def test_slow_subscriber_stays_slow_until_its_queue_is_empty():
    """A slow subscriber that drains a little does not get a new grace time: publishers are
    held for slow_client_grace at most, not again at every dip."""
    broker, clock = make_broker(max_queued_messages=10, max_inflight_messages=2)
    slow = connected(broker, "slow")
    subscribe(slow, "t", qos=1)
    publisher = connected(broker, "pub")
    publish_numbered(publisher, 30)
    wait(clock, 5.25)  # grace over: slow, publisher released
    clock.advance(0)
    assert reads(publisher)
    first = slow.received()
    for packet in first:  # it acknowledges a few: its queue dips below the low-water mark
        slow.send(PubAck(packet.packet_id))
    for packet in slow.received():
        slow.send(PubAck(packet.packet_id))
    publish_numbered(publisher, 30, start=30)
    assert reads(publisher)  # not held again
    assert broker.stats.clients_slow == 1


def test_prompt_subscriber_is_never_dropped_for_however_long_it_holds_publishers():
    """When the broker (here: the in-flight window) is the bottleneck and the subscriber
    acknowledges at once, the publisher is held as long as it takes, far beyond the grace
    time, and nothing it had acknowledged is dropped."""
    broker, clock = make_broker(max_queued_messages=10, max_inflight_messages=2)
    reader = connected(broker, "reader")
    subscribe(reader, "t", qos=1)
    publisher = connected(broker, "pub")
    count = 2000
    publisher.send_bytes(
        b"".join(encode(Publish("t", b"%d" % i, qos=1, packet_id=i + 1), 4) for i in range(count))
    )
    got: list[int] = []
    acks = acked(publisher.received())
    for _ in range(count):  # one round trip per 10 ms: 2 messages, 10 s in 1,000 steps
        packets = [p for p in reader.received() if isinstance(p, Publish)]
        if not packets:
            break
        got += payloads(packets)
        for packet in packets:
            reader.send(PubAck(packet.packet_id))
        clock.pump([0.01])
        acks += acked(publisher.received())
    assert clock.seconds() > 9  # held for longer than the 5 s grace time, many times over
    assert got == list(range(count))
    assert acks == count
    assert broker.stats.publish_dropped == 0 and broker.stats.clients_slow == 0


def test_no_queue_limit_keeps_every_message_for_an_offline_session():
    """--max-queued-messages 0 is no limit: an offline persistent session keeps more than
    the 1,000 messages at which connected subscribers hold their publishers back."""
    broker, clock = make_broker(max_queued_messages=0)
    sub = connected(broker, "sub", clean_start=False)
    sub.send(Subscribe(1, [SubscriptionRequest("t", 1)]))
    sub.received()
    sub.lose()
    pub = connected(broker, "pub")
    for n in range(1500):
        pub.send(Publish("t", str(n).encode(), qos=1, packet_id=n % 65535 + 1))
    assert len(pub.received()) == 1500
    sub = FakeClient(broker)
    sub.send(Connect("sub", 4, "MQTT", clean_start=False))
    got: list[bytes] = []
    for _ in range(200):
        packets = [p for p in sub.received() if isinstance(p, Publish)]
        if not packets:
            break
        got += [p.payload for p in packets]
        for p in packets:
            sub.send(PubAck(p.packet_id))
    assert got == [str(n).encode() for n in range(1500)]
