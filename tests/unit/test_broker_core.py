"""The broker core and the protocol class driven without sockets: StringTransport + task.Clock."""

from __future__ import annotations

from mqtt_twisted.broker import message as message_module
from mqtt_twisted.packets import (
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    Subscribe,
    SubscriptionRequest,
    Will,
)

from .harness import FakeClient, connected, make_broker


def subscribe(client, topic_filter, qos=0, packet_id=1):
    client.send(Subscribe(packet_id, [SubscriptionRequest(topic_filter, qos)]))
    return client.received()


def test_keep_alive_expiry_closes_and_publishes_will():
    """Silent for 1.5 x keep alive: disconnected, will published [MQTT-3.1.2-24], [MQTT-3.1.2-8]."""
    broker, clock = make_broker()
    watcher = connected(broker, "watcher")
    subscribe(watcher, "wills/#")
    client = connected(broker, "sleepy", keep_alive=10, will=Will("wills/sleepy", b"gone", 1))
    clock.advance(14.9)
    assert not client.closed
    client.send(PingReq())  # activity resets the deadline
    assert client.received() == [PingResp()]
    clock.advance(14.9)
    assert not client.closed
    clock.advance(0.2)
    assert client.closed
    (will,) = watcher.received()
    assert (will.topic, will.payload, will.qos) == ("wills/sleepy", b"gone", 0)  # min(1, sub 0)


def test_connect_timeout_closes_silent_connection():
    broker, clock = make_broker(connect_timeout=3)
    client = FakeClient(broker)
    clock.advance(2.9)
    assert not client.closed
    clock.advance(0.2)
    assert client.closed
    assert client.received() == []


def test_takeover_closes_old_connection_and_publishes_its_will():
    """A second CONNECT with the same client id takes the session over [MQTT-3.1.4-2]."""
    broker, clock = make_broker()
    watcher = connected(broker, "watcher")
    subscribe(watcher, "w")
    first = connected(broker, "dev", will=Will("w", b"first gone"))
    second = FakeClient(broker)
    second.send(Connect("dev", clean_start=True))
    assert first.closed
    assert second.received() == [ConnAck(False, 0)]
    assert [p.payload for p in watcher.received()] == [b"first gone"]
    first.lose()  # the old socket's connectionLost comes later: it must not detach the new one
    assert broker.sessions["dev"].connection is second.protocol
    assert [p.payload for p in watcher.received()] == []


def test_clean_disconnect_discards_will():
    """[MQTT-3.14.4-3]"""
    broker, clock = make_broker()
    watcher = connected(broker, "watcher")
    subscribe(watcher, "w")
    client = connected(broker, "c", will=Will("w", b"x"))
    client.send(Disconnect())
    assert client.closed
    client.lose()
    assert watcher.received() == []


def test_persistent_session_expires_after_configured_time():
    broker, clock = make_broker(persistent_client_expiration=3600)
    client = connected(broker, "p", clean_start=False)
    subscribe(client, "t", qos=1)
    client.lose()
    assert "p" in broker.sessions
    clock.advance(3599)
    assert "p" in broker.sessions
    clock.advance(2)
    assert "p" not in broker.sessions
    assert len(broker.subscriptions) == 0
    assert broker.stats.clients_expired == 1


def test_reconnect_cancels_expiry():
    broker, clock = make_broker(persistent_client_expiration=60)
    client = connected(broker, "p", clean_start=False)
    client.lose()
    clock.advance(30)
    again = FakeClient(broker)
    again.send(Connect("p", clean_start=False))
    assert again.received() == [ConnAck(True, 0)]
    clock.advance(120)
    assert "p" in broker.sessions


def test_inflight_window_then_queue_in_order():
    broker, clock = make_broker(max_inflight_messages=2)
    reader = connected(broker, "reader")
    subscribe(reader, "t", qos=1)
    publisher = connected(broker, "pub")
    for i in range(5):
        publisher.send(Publish("t", b"%d" % i, qos=1, packet_id=i + 1))
    first = reader.received()
    assert [p.payload for p in first] == [b"0", b"1"]
    assert len({p.packet_id for p in first}) == 2
    reader.send(PubAck(first[0].packet_id))
    (third,) = reader.received()
    assert third.payload == b"2"
    assert third.packet_id not in (first[1].packet_id,)  # never reuse an id in flight


def test_fan_out_encodes_once_per_variant(monkeypatch):
    """A message for many subscribers is encoded once per (QoS, retain) variant, not per subscriber."""
    calls = []
    real = message_module.encode_publish_parts

    def counting(*args):
        calls.append(args[2:4])
        return real(*args)

    monkeypatch.setattr(message_module, "encode_publish_parts", counting)
    broker, clock = make_broker()
    readers = [connected(broker, f"r{i}") for i in range(50)]
    for i, reader in enumerate(readers):
        subscribe(reader, "fan/out", qos=i % 2)
    publisher = connected(broker, "pub")
    publisher.send(Publish("fan/out", b"payload", qos=1, packet_id=1))
    # the QoS 0 variant is encoded once; the QoS 1 one is the PUBLISH as it came in
    assert sorted(calls) == [(0, False)]
    for reader in readers:
        (packet,) = reader.received()
        assert packet.payload == b"payload"


def test_mqtt31_connect_uses_mqisdp():
    broker, clock = make_broker()
    client = connected(broker, "old-client", level=3)
    subscribe(client, "a")
    client.send(Publish("a", b"hi"))
    assert [p.payload for p in client.received()] == [b"hi"]


def test_shutdown_disconnects_clients_and_refuses_new_ones():
    """Stopping: 5.0 clients get DISCONNECT 0x8B, no will is published, and a CONNECT
    arriving meanwhile gets CONNACK 3 (server unavailable) / 0x88 [MQTT-3.2.2-6]."""
    broker, clock = make_broker()
    watcher = connected(broker, "watcher")
    subscribe(watcher, "w")
    v5 = connected(broker, "v5", level=5, will=Will("w", b"will"))
    broker.shutdown()
    assert [p.reason_code for p in v5.received()] == [0x8B]
    assert watcher.closed  # 3.1.1: nothing to tell, closed at once
    assert v5.closes_after_linger(clock)
    assert watcher.received() == []
    late = FakeClient(broker)
    late.send(Connect("late"))
    assert late.received() == [ConnAck(False, 3)]
    assert late.closes_after_linger(clock)
    late5 = FakeClient(broker, level=5)
    late5.send(Connect("late5", 5))
    (connack,) = late5.received()
    assert connack.return_code == 0x88


def test_a_3x_qos0_publish_is_forwarded_byte_for_byte_and_re_encoded_for_5_0():
    """A 3.1.1 QoS 0 PUBLISH without retain reaches 3.1 / 3.1.1 subscribers at QoS 0 as
    the very bytes it came in (no encoding per message); a 5.0 subscriber gets it encoded
    for 5.0 (with its property length), and a retained copy carries RETAIN for later
    subscribers [MQTT-3.3.1-8]."""
    from mqtt_twisted.packets import encode

    broker, _ = make_broker()
    v3 = connected(broker, "v3", level=3)
    v4 = connected(broker, "v4")
    v5 = connected(broker, "v5", level=5)
    for client in (v3, v4, v5):
        client.send(Subscribe(1, [SubscriptionRequest("raw/#", 0)], {}))
        client.received()
    pub = connected(broker, "pub")
    wire = encode(Publish("raw/t", b"\x00payload\xff"), 4)
    pub.send_bytes(wire)
    assert v3.transport.value() == wire
    assert v4.transport.value() == wire
    (got,) = v5.received()
    assert (got.topic, got.payload, got.qos, got.retain) == ("raw/t", b"\x00payload\xff", 0, False)
    assert got.properties == {}
    pub.send(Publish("raw/kept", b"r", retain=True))
    late = connected(broker, "late")
    late.send(Subscribe(1, [SubscriptionRequest("raw/kept", 0)]))
    _, retained = late.received()
    assert retained.retain and retained.payload == b"r"


def test_a_3x_qos1_publish_is_forwarded_as_received_with_the_brokers_packet_id():
    """The same for QoS 1 to a QoS 1 subscriber: the bytes around the packet id are the
    publisher's, the packet id is the broker's own for that subscriber [MQTT-2.3.1-2]; a
    resend after reconnecting carries DUP [MQTT-3.3.1-1] (encoded, not the raw bytes)."""
    from mqtt_twisted.packets import encode

    broker, _ = make_broker()
    sub = connected(broker, "sub", clean_start=False)
    sub.send(Subscribe(1, [SubscriptionRequest("raw/#", 1)]))
    sub.received()
    pub = connected(broker, "pub")
    wire = encode(Publish("raw/q1", b"one", qos=1, packet_id=0x4242), 4)
    pub.send_bytes(wire)
    out = sub.transport.value()
    packet_id = int.from_bytes(out[-5:-3], "big")
    assert out[:-5] == wire[:-5] and out[-3:] == wire[-3:]
    (got,) = sub.received()
    assert (got.topic, got.payload, got.qos, got.dup, got.packet_id) == (
        "raw/q1",
        b"one",
        1,
        False,
        packet_id,
    )
    sub.lose()
    again = FakeClient(broker)
    again.send(Connect("sub", 4, "MQTT", clean_start=False))
    _, resent = again.received()
    assert (resent.payload, resent.dup, resent.packet_id) == (b"one", True, packet_id)
