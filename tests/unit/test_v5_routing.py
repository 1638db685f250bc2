"""MQTT 5.0 routing in the broker core, driven without sockets (StringTransport + task.Clock):
encodings shared across fan-out, shared-group pick order, message expiry on the clock."""

from __future__ import annotations

from mqtt_twisted.broker import message as message_module
from mqtt_twisted.packets import (
    Connect,
    Property,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscribe,
    SubscriptionRequest,
)

from .harness import FakeClient, connected, make_broker

EXPIRY = Property.MESSAGE_EXPIRY_INTERVAL
SUB_ID = Property.SUBSCRIPTION_IDENTIFIER
SESSION_EXPIRY = Property.SESSION_EXPIRY_INTERVAL


def subscribe(client, topic_filter, qos=0, packet_id=1, subscription_id=None, **options):
    properties = {SUB_ID: [subscription_id]} if subscription_id else {}
    client.send(
        Subscribe(packet_id, [SubscriptionRequest(topic_filter, qos, **options)], properties)
    )
    return client.received()


def count_encodings(monkeypatch) -> list:
    """Record (qos, retain, protocol level, properties) of every PUBLISH encoding."""
    calls = []
    real = message_module.encode_publish_parts

    def counting(topic, payload, qos, retain, dup, properties, level):
        calls.append((qos, retain, level, dict(properties or {})))
        return real(topic, payload, qos, retain, dup, properties, level)

    monkeypatch.setattr(message_module, "encode_publish_parts", counting)
    return calls


def test_v5_fan_out_encodes_once_per_variant(monkeypatch):
    """Many 5.0 subscribers without per-subscriber properties share one encoding per
    (protocol family, QoS) variant; the publisher's properties are in it [MQTT-3.3.2-17]."""
    calls = count_encodings(monkeypatch)
    broker, clock = make_broker()
    readers = [connected(broker, f"r{i}", level=5) for i in range(40)]
    for i, reader in enumerate(readers):
        subscribe(reader, "fan/out", qos=i % 2)
    old = [connected(broker, f"o{i}") for i in range(10)]
    for reader in old:
        subscribe(reader, "fan/out", qos=1)
    publisher = connected(broker, "pub", level=5)
    user = [("a", "1"), ("b", "2")]
    publisher.send(
        Publish(
            "fan/out", b"payload", qos=1, packet_id=1, properties={Property.USER_PROPERTY: user}
        )
    )
    assert publisher.received() == [PubAck(1)]
    assert sorted((q, r, lvl) for q, r, lvl, _p in calls) == [
        (0, False, 5),
        (1, False, 4),
        (1, False, 5),
    ]
    for reader in readers:
        (packet,) = reader.received()
        assert (packet.payload, packet.properties) == (b"payload", {Property.USER_PROPERTY: user})
    for reader in old:
        (packet,) = reader.received()
        assert packet.payload == b"payload"


def test_fan_out_with_subscription_ids_encodes_once_per_identifier(monkeypatch):
    """Subscribers with the same Subscription Identifier share an encoding; each distinct
    identifier is one more variant [MQTT-3.3.4-3]."""
    calls = count_encodings(monkeypatch)
    broker, clock = make_broker()
    readers = [connected(broker, f"r{i}", level=5) for i in range(30)]
    for i, reader in enumerate(readers):
        subscribe(reader, "ids/t", qos=0, subscription_id=(i % 3) or None)
    publisher = connected(broker, "pub", level=5)
    publisher.send(Publish("ids/t", b"x"))
    assert len(calls) == 3  # no id, id 1, id 2
    for i, reader in enumerate(readers):
        (packet,) = reader.received()
        expected = {SUB_ID: [i % 3]} if i % 3 else {}
        assert packet.properties == expected


def test_shared_group_picks_round_robin_skipping_disconnected_members():
    """Section 4.8.2: one member per message; connected members in turn (as Mosquitto 2.x);
    a disconnected persistent member is skipped while others are connected."""
    broker, clock = make_broker()
    members = {}
    for name in ("a", "b", "c"):
        members[name] = connected(
            broker, name, level=5, clean_start=True, properties={SESSION_EXPIRY: 300}
        )
        subscribe(members[name], "$share/g/t", qos=0)
    publisher = connected(broker, "pub", level=5)

    def who_gets(count):
        order = []
        for i in range(count):
            publisher.send(Publish("t", b"%d" % i))
            for name, member in members.items():
                if member.received():
                    order.append(name)
        return order

    assert who_gets(6) == ["a", "b", "c", "a", "b", "c"]
    members["b"].lose()  # persistent session: stays in the group, but offline
    assert who_gets(4) == ["a", "c", "a", "c"]


def test_shared_group_with_nobody_connected_queues_for_next_in_turn():
    """QoS 1 for a group whose members are all offline is kept for one of them (in turn)."""
    broker, clock = make_broker()
    for name in ("a", "b"):
        member = connected(broker, name, level=5, properties={SESSION_EXPIRY: 300})
        subscribe(member, "$share/g/q", qos=1)
        member.lose()
    publisher = connected(broker, "pub", level=5)
    for i in range(4):
        publisher.send(Publish("q", b"%d" % i, qos=1, packet_id=i + 1))
    assert [len(broker.sessions[n].queue) for n in ("a", "b")] == [2, 2]
    back = FakeClient(broker, 5)
    back.send(Connect("a", 5, "MQTT", clean_start=False, properties={SESSION_EXPIRY: 300}))
    connack, *publishes = back.received()
    assert connack.session_present
    assert [p.payload for p in publishes] == [b"0", b"2"]


def test_shared_member_lost_hands_unacknowledged_messages_to_another():
    """A member whose session ends with QoS 1 messages unacknowledged: they go to another
    member (section 4.8.2 allows it; the issue asks for it)."""
    broker, clock = make_broker()
    lost = connected(broker, "lost", level=5)  # Session Expiry 0: ends with the connection
    subscribe(lost, "$share/g/h", qos=1)
    keeper = connected(broker, "keeper", level=5)
    subscribe(keeper, "$share/g/h", qos=1)
    publisher = connected(broker, "pub", level=5)
    for i in range(4):
        publisher.send(Publish("h", b"%d" % i, qos=1, packet_id=i + 1))
    assert [p.payload for p in lost.received()] == [b"0", b"2"]
    assert [p.payload for p in keeper.received()] == [b"1", b"3"]
    lost.lose()
    assert [p.payload for p in keeper.received()] == [b"0", b"2"]
    assert "lost" not in broker.sessions


def test_queued_message_expires_on_the_clock():
    """[MQTT-3.3.2-5] not delivered once expired; [MQTT-3.3.2-6] the one delivered carries
    the remaining interval."""
    broker, clock = make_broker()
    sub = connected(broker, "sub", level=5, properties={SESSION_EXPIRY: 600})
    subscribe(sub, "e/t", qos=1)
    sub.lose()
    publisher = connected(broker, "pub", level=5)
    publisher.send(Publish("e/t", b"short", qos=1, packet_id=1, properties={EXPIRY: 10}))
    publisher.send(Publish("e/t", b"long", qos=1, packet_id=2, properties={EXPIRY: 100}))
    clock.advance(10)
    back = FakeClient(broker, 5)
    back.send(Connect("sub", 5, "MQTT", clean_start=False, properties={SESSION_EXPIRY: 600}))
    connack, *publishes = back.received()
    assert [(p.payload, p.properties.get(EXPIRY)) for p in publishes] == [(b"long", 90)]


def test_message_expires_in_slow_reader_queue():
    """A message queued behind a full transport buffer also expires [MQTT-3.3.2-5]."""
    broker, clock = make_broker()
    reader = connected(broker, "reader", level=5)
    subscribe(reader, "s/t", qos=0)
    publisher = connected(broker, "pub", level=5)
    reader.protocol.pauseProducing()
    publisher.send(Publish("s/t", b"stale", properties={EXPIRY: 5}))
    publisher.send(Publish("s/t", b"fresh", properties={EXPIRY: 50}))
    clock.advance(6)
    reader.protocol.resumeProducing()
    assert [(p.payload, p.properties.get(EXPIRY)) for p in reader.received()] == [(b"fresh", 44)]


def test_expired_retained_message_is_dropped():
    """A retained message past its expiry is not sent to a new subscriber, and is removed."""
    broker, clock = make_broker()
    publisher = connected(broker, "pub", level=5)
    publisher.send(Publish("r/t", b"old", retain=True, properties={EXPIRY: 3}))
    clock.advance(2)
    sub = connected(broker, "sub", level=5)
    suback, retained = subscribe(sub, "r/t")
    assert (retained.payload, retained.retain, retained.properties) == (b"old", True, {EXPIRY: 1})
    clock.advance(1)
    late = connected(broker, "late", level=5)
    (suback,) = subscribe(late, "r/t")
    assert len(broker.retained) == 0


def test_pubrec_failure_frees_the_packet_id():
    """[MQTT-4.3.3-9] after a PUBREC with a reason code >= 0x80 the next PUBLISH with that
    packet id is a new application message (here: PUBREC 0x87 for a PUBLISH into $SYS)."""
    broker, clock = make_broker()
    sub = connected(broker, "sub", level=5)
    subscribe(sub, "ok/t", qos=2)
    client = connected(broker, "pub", level=5)
    client.send(Publish("$SYS/x", b"no", qos=2, packet_id=3))
    assert client.received() == [PubRec(3, 0x87)]
    client.send(Publish("ok/t", b"yes", qos=2, packet_id=3))
    assert client.received() == [PubRec(3, 0)]
    client.send(PubRel(3))
    assert client.received() == [PubComp(3, 0)]
    assert [p.payload for p in sub.received()] == [b"yes"]


def test_no_local_and_overlap_in_core():
    """[MQTT-3.8.3-3] No Local with an overlapping subscription without it: one copy, at the
    other subscription's QoS [MQTT-3.3.4-2]."""
    broker, clock = make_broker()
    me = connected(broker, "me", level=5)
    subscribe(me, "n/t", qos=2, packet_id=1, no_local=True)
    subscribe(me, "n/#", qos=0, packet_id=2)
    me.send(Publish("n/t", b"mine", qos=1, packet_id=1))
    packets = me.received()
    assert [type(p).__name__ for p in packets] == ["Publish", "PubAck"]
    assert (packets[0].payload, packets[0].qos) == (b"mine", 0)


def test_per_subscriber_variants_do_not_grow_a_message_without_bound():
    """A long-lived (retained) message re-sent with ever new subscription ids keeps a bounded
    number of cached encodings, and every copy is still encoded right."""
    from mqtt_twisted.broker.message import MAX_CACHED_VARIANTS, Message
    from mqtt_twisted.packets import Parser, Property

    message = Message("r/t", b"payload", 1, True)
    for sid in range(1, 200):
        head, tail = message.parts(5, 1, True, (sid,))
        parser = Parser(protocol_level=5, client_side=True)
        parser.feed(head + b"\x00\x01" + tail)
        packet = parser.next_packet()
        assert packet.properties[Property.SUBSCRIPTION_IDENTIFIER] == [sid]
    assert len(message._encoded) <= MAX_CACHED_VARIANTS
