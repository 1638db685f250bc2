"""PUBLISH at QoS 0, 1 and 2 in both directions, with the handshakes a client sees."""

import paho.mqtt.client as mqtt
import pytest
import pytest_twisted

from .mqttclient import (
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    ack_packet,
    get,
    mqtt_string,
    nothing_in,
    packet,
    parse_publish,
    publish_packet,
    raw_connect,
    raw_subscribe,
    read_packet,
)


@pytest.fixture
def broker(broker_anywhere):
    """Every test here runs against one process and against a cluster of two nodes."""
    return broker_anywhere


async def connected(clients, port, client_id, **kwargs):
    client = clients(port, client_id=client_id, **kwargs)
    await client.connect()
    return client


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_publish_handshake_completes(broker, clients, qos):
    # [MQTT-3.3.4-1] the broker answers each PUBLISH as its QoS requires: nothing for 0,
    # PUBACK for 1 [MQTT-4.3.2-2], PUBREC then (after PUBREL) PUBCOMP for 2 [MQTT-4.3.3-2];
    # paho fires on_publish only once the last acknowledgement arrived.
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("hs/t", 2)
    pub = await connected(clients, broker.port, "pub")
    info = pub.client.publish("hs/t", f"qos{qos}".encode(), qos)
    assert await get(pub.published) == info.mid
    message = await sub.message()
    assert (message.topic, message.payload, message.qos) == ("hs/t", f"qos{qos}".encode(), qos)


@pytest_twisted.ensureDeferred
async def test_delivered_qos_is_minimum_of_published_and_granted(broker, clients):
    # [MQTT-3.8.4-6] delivered QoS = min(published QoS, granted QoS), all 9 combinations
    subs = {}
    for sub_qos in (0, 1, 2):
        subs[sub_qos] = await connected(clients, broker.port, f"sub{sub_qos}")
        assert await subs[sub_qos].subscribe("min/t", sub_qos) == [sub_qos]
    pub = await connected(clients, broker.port, "pub")
    for pub_qos in (0, 1, 2):
        await pub.publish("min/t", f"p{pub_qos}".encode(), qos=pub_qos)
        for sub_qos, sub in subs.items():
            message = await sub.message()
            assert message.payload == f"p{pub_qos}".encode()
            assert message.qos == min(pub_qos, sub_qos), (pub_qos, sub_qos)


@pytest_twisted.ensureDeferred
async def test_mqtt31_round_trip(broker, clients):
    # protocol level 3 ("MQIsdp") subscriber and publisher, QoS 0, 1 and 2
    sub = await connected(clients, broker.port, "sub31", protocol=mqtt.MQTTv31)
    assert await sub.subscribe("v31/+", 2) == [2]
    pub = await connected(clients, broker.port, "pub31", protocol=mqtt.MQTTv31)
    for qos in (0, 1, 2):
        await pub.publish(f"v31/{qos}", b"old protocol", qos=qos)
        message = await sub.message()
        assert (message.topic, message.payload, message.qos) == (f"v31/{qos}", b"old protocol", qos)


@pytest_twisted.ensureDeferred
async def test_mqtt31_and_311_clients_talk_to_each_other(broker, clients):
    sub31 = await connected(clients, broker.port, "sub31", protocol=mqtt.MQTTv31)
    await sub31.subscribe("mix/t", 1)
    sub311 = await connected(clients, broker.port, "sub311")
    await sub311.subscribe("mix/t", 1)
    pub = await connected(clients, broker.port, "pub31", protocol=mqtt.MQTTv31)
    await pub.publish("mix/t", b"both", qos=1)
    for sub in (sub31, sub311):
        message = await sub.message()
        assert (message.payload, message.qos) == (b"both", 1)


@pytest_twisted.ensureDeferred
async def test_qos2_resent_publish_is_delivered_once(broker, raw, clients):
    # [MQTT-4.3.3-2] until PUBREL the receiver answers a resent PUBLISH (same packet id) with
    # PUBREC and MUST NOT deliver it again to onward recipients
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("once/t", 2)
    pub = raw(broker.port)
    await raw_connect(pub, "rawpub")
    pub.send(publish_packet("once/t", b"exactly once", qos=2, packet_id=7))
    assert await read_packet(pub) == (PUBREC, b"\x00\x07")
    pub.send(publish_packet("once/t", b"exactly once", qos=2, packet_id=7, dup=True))
    assert await read_packet(pub) == (PUBREC, b"\x00\x07")
    pub.send(ack_packet(PUBREL, 7))
    assert await read_packet(pub) == (PUBCOMP, b"\x00\x07")
    messages = await sub.messages_for(0.7)
    assert [(m.payload, m.qos) for m in messages] == [(b"exactly once", 2)]
    # after PUBREL the packet id is free again: a new PUBLISH with id 7 is a new message
    pub.send(publish_packet("once/t", b"second", qos=2, packet_id=7))
    assert await read_packet(pub) == (PUBREC, b"\x00\x07")
    pub.send(ack_packet(PUBREL, 7))
    assert await read_packet(pub) == (PUBCOMP, b"\x00\x07")
    assert (await sub.message()).payload == b"second"


@pytest_twisted.ensureDeferred
async def test_qos2_pubrel_for_unknown_id_gets_pubcomp(broker, raw):
    # [MQTT-4.3.3-2] PUBREL is answered with PUBCOMP (also if the id was already released)
    client = raw(broker.port)
    await raw_connect(client, "rawpub")
    client.send(ack_packet(PUBREL, 99))
    assert await read_packet(client) == (PUBCOMP, b"\x00\x63")


@pytest_twisted.ensureDeferred
async def test_qos2_delivery_to_raw_subscriber(broker, raw, clients):
    # [MQTT-4.3.3-1] the broker as sender: PUBLISH QoS 2 (DUP 0, non-zero id [MQTT-2.3.1-1]),
    # PUBREL after PUBREC, done after PUBCOMP
    sub = raw(broker.port)
    await raw_connect(sub, "rawsub")
    assert await raw_subscribe(sub, [("q2/t", 2)]) == [2]
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("q2/t", b"two", qos=2)
    first, body = await read_packet(sub)
    publish = parse_publish(first, body)
    assert (publish.topic, publish.payload, publish.qos, publish.dup, publish.retain) == (
        "q2/t",
        b"two",
        2,
        False,
        False,
    )
    assert publish.packet_id
    pid = publish.packet_id.to_bytes(2, "big")
    sub.send(ack_packet(PUBREC, publish.packet_id))
    assert await read_packet(sub) == (PUBREL, pid)
    sub.send(ack_packet(PUBCOMP, publish.packet_id))
    # nothing else comes: no resend of the PUBLISH or PUBREL
    assert await read_packet(sub, timeout=0.5) is None
    # and the session is clean: the next message flows normally
    await pub.publish("q2/t", b"again", qos=2)
    publish = parse_publish(*await read_packet(sub))
    assert (publish.payload, publish.qos) == (b"again", 2)


@pytest_twisted.ensureDeferred
async def test_qos1_delivery_to_raw_subscriber(broker, raw, clients):
    # [MQTT-4.3.2-1] the broker sends QoS 1 with a non-zero packet id and DUP 0
    sub = raw(broker.port)
    await raw_connect(sub, "rawsub")
    await raw_subscribe(sub, [("q1/t", 1)])
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("q1/t", b"one", qos=1)
    publish = parse_publish(*await read_packet(sub))
    assert (publish.topic, publish.payload, publish.qos, publish.dup) == ("q1/t", b"one", 1, False)
    assert publish.packet_id
    sub.send(ack_packet(PUBACK, publish.packet_id))
    assert await read_packet(sub, timeout=0.5) is None


@pytest_twisted.ensureDeferred
async def test_overlapping_subscriptions_give_one_copy_at_highest_qos(broker, clients):
    # [MQTT-3.3.5-1] respecting the maximum QoS of all matching subscriptions; one copy
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe([("a/+", 0), ("a/#", 2)])
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("a/b", b"overlap", qos=2)
    messages = await sub.messages_for(0.7)
    assert [(m.topic, m.payload, m.qos) for m in messages] == [("a/b", b"overlap", 2)]
    await pub.publish("a/b", b"q1", qos=1)
    messages = await sub.messages_for(0.5)
    assert [(m.payload, m.qos) for m in messages] == [(b"q1", 1)]


@pytest_twisted.ensureDeferred
async def test_qos1_order_preserved_per_topic(broker, clients):
    # [MQTT-4.6.0-5] topics are ordered, [MQTT-4.6.0-6] same order as received from a client
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("order/t", 1)
    pub = await connected(clients, broker.port, "pub")
    infos = [pub.client.publish("order/t", str(i).encode(), 1) for i in range(100)]
    received = []
    for _ in range(100):
        message = await sub.message()
        assert message.qos == 1
        received.append(int(message.payload))
    assert received == list(range(100))
    acked = {await get(pub.published) for _ in infos}  # every PUBACK arrived
    assert acked == {info.mid for info in infos}
    assert await nothing_in(sub.messages, 0.3)  # and no duplicates


@pytest_twisted.ensureDeferred
async def test_publisher_receives_its_own_message(broker, clients):
    # MQTT 3.1.1 has no "no local": a client subscribed to its own topic gets its message back
    client = await connected(clients, broker.port, "echo")
    await client.subscribe("echo/t", 1)
    await client.publish("echo/t", b"me", qos=1)
    assert (await client.message()).payload == b"me"


@pytest_twisted.ensureDeferred
async def test_payloads_are_passed_unchanged(broker, clients):
    # the payload is opaque binary data (3.1.1 section 3.3.3): empty, binary, 256 KiB
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("bin/t", 1)
    pub = await connected(clients, broker.port, "pub")
    payloads = [b"", bytes(range(256)), b"\x00" * 3 + b"\xff", bytes(256 * 1024)]
    for payload in payloads:
        await pub.publish("bin/t", payload, qos=1)
    received = [(await sub.message()).payload for _ in payloads]
    assert received == payloads


@pytest_twisted.ensureDeferred
async def test_mqtt31_client_resending_with_dup_completes_its_qos2_message(broker, raw):
    """An MQTT 3.1 client that re-sends PUBREL, SUBSCRIBE and UNSUBSCRIBE sets DUP (3.1
    spec, section 2.1 "DUP"): they are answered, not refused as malformed (the fixed-flags
    rules [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1] are 3.1.1's), and its QoS 2
    message is delivered exactly once."""
    sub = raw(broker.port)
    await raw_connect(sub, "sub31", level=3)
    sub.send(packet(0x8A, (1).to_bytes(2, "big") + mqtt_string("dup/t") + b"\x02"))
    suback = await read_packet(sub)
    assert suback == (0x90, b"\x00\x01\x02")
    pub = raw(broker.port)
    await raw_connect(pub, "pub31", level=3)
    pub.send(publish_packet("dup/t", b"once", qos=2, packet_id=5))
    assert await read_packet(pub) == (PUBREC, b"\x00\x05")
    pub.send(ack_packet(PUBREL | 0x08, 5))  # re-sent PUBREL: DUP set
    assert await read_packet(pub) == (PUBCOMP, b"\x00\x05")
    delivered = parse_publish(*await read_packet(sub))
    assert delivered.payload == b"once" and delivered.qos == 2
    sub.send(packet(0xAA, (2).to_bytes(2, "big") + mqtt_string("dup/t")))  # UNSUBSCRIBE, DUP
    assert await read_packet(sub) == (0xB0, b"\x00\x02")
