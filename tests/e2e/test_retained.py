"""Retained messages: set, replace, delete, and what new and existing subscribers get."""

import pytest
import pytest_twisted

from .mqttclient import (
    PUBACK,
    get,
    nothing_in,
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


async def connected(clients, port, client_id):
    client = clients(port, client_id=client_id)
    await client.connect()
    return client


@pytest_twisted.ensureDeferred
async def test_retained_message_sent_to_new_subscriber(broker, clients):
    # [MQTT-3.3.1-5] stored, [MQTT-3.3.1-6] sent on a new matching subscription,
    # [MQTT-3.3.1-8] with the RETAIN flag set
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("status/door", b"open", qos=1, retain=True)
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("status/door", 1)
    message = await sub.message()
    assert (message.topic, message.payload, message.qos, message.retain) == (
        "status/door",
        b"open",
        1,
        True,
    )
    assert await nothing_in(sub.messages, 0.3)


@pytest_twisted.ensureDeferred
async def test_retained_message_survives_publisher_disconnect(broker, clients):
    # [MQTT-3.3.1-5] the broker keeps it, not the publisher's session
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("keep/t", b"kept", qos=1, retain=True)
    pub.disconnect()
    await get(pub.disconnects)
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("keep/t", 0)
    message = await sub.message()
    assert (message.payload, message.retain) == (b"kept", True)


@pytest_twisted.ensureDeferred
async def test_newer_retained_message_replaces_older(broker, clients):
    # [MQTT-3.3.1-5] / [MQTT-3.3.1-7]: only the last retained message of a topic is kept
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("temp", b"20", qos=1, retain=True)
    await pub.publish("temp", b"21", qos=1, retain=True)
    await pub.publish("temp", b"22", qos=0, retain=True)
    await pub.publish("temp", b"not retained", qos=1)  # [MQTT-3.3.1-12] does not replace it
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("temp", 1)
    messages = await sub.messages_for(0.5)
    assert [(m.payload, m.qos, m.retain) for m in messages] == [(b"22", 0, True)]


@pytest_twisted.ensureDeferred
async def test_empty_retained_publish_deletes(broker, clients):
    # [MQTT-3.3.1-10] a retained empty payload is delivered normally and removes the retained
    # message, [MQTT-3.3.1-11] and is not stored itself
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("gone/t", b"here", qos=1, retain=True)
    existing = await connected(clients, broker.port, "existing")
    await existing.subscribe("gone/t", 1)
    assert (await existing.message()).payload == b"here"
    await pub.publish("gone/t", b"", qos=1, retain=True)
    message = await existing.message()
    assert (message.payload, message.retain) == (b"", False)
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("gone/#", 1)
    assert await nothing_in(sub.messages, 0.5)


@pytest_twisted.ensureDeferred
async def test_wildcard_subscription_gets_all_matching_retained(broker, clients):
    # [MQTT-3.3.1-6] the last retained message on *each* matching topic
    pub = await connected(clients, broker.port, "pub")
    retained = {
        "home/kitchen/temp": b"21",
        "home/hall/temp": b"19",
        "home/hall/light": b"on",
        "home": b"root",
        "garden/temp": b"12",
    }
    for topic, payload in retained.items():
        await pub.publish(topic, payload, qos=1, retain=True)
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("home/#", 1)
    messages = await sub.messages_for(0.5)
    assert sorted((m.topic, m.payload, m.retain) for m in messages) == sorted(
        (t, p, True) for t, p in retained.items() if t.startswith("home")
    )
    sub2 = await connected(clients, broker.port, "sub2")
    await sub2.subscribe("+/+/temp", 0)
    messages = await sub2.messages_for(0.5)
    assert sorted(m.topic for m in messages) == ["home/hall/temp", "home/kitchen/temp"]


@pytest_twisted.ensureDeferred
async def test_repeated_subscribe_resends_retained(broker, clients):
    # [MQTT-3.8.4-3] an identical SUBSCRIBE replaces the subscription and re-sends retained
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("again/t", b"r", qos=1, retain=True)
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("again/t", 1)
    assert (await sub.message()).retain is True
    await sub.subscribe("again/t", 1)
    message = await sub.message()
    assert (message.payload, message.retain) == (b"r", True)
    assert await nothing_in(sub.messages, 0.3)


@pytest_twisted.ensureDeferred
async def test_forwarded_to_existing_subscribers_with_retain_0(broker, clients):
    # [MQTT-3.3.1-9] a message matching an established subscription goes out with RETAIN 0,
    # however the publisher set it
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("live/t", 1)
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("live/t", b"now", qos=1, retain=True)
    message = await sub.message()
    assert (message.payload, message.retain) == (b"now", False)


@pytest_twisted.ensureDeferred
async def test_retain_flags_on_the_wire(broker, raw, clients):
    # the same two rules checked on the bytes: RETAIN 1 for the subscription's retained
    # message [MQTT-3.3.1-8], RETAIN 0 for live traffic [MQTT-3.3.1-9]
    pub = await connected(clients, broker.port, "pub")
    await pub.publish("wire/t", b"stored", qos=1, retain=True)  # stored once PUBACK came
    sub = raw(broker.port)
    await raw_connect(sub, "rawsub")
    await raw_subscribe(sub, [("wire/t", 0)])  # granted 0: delivered at QoS 0
    first = parse_publish(*await read_packet(sub))
    assert (first.payload, first.retain, first.qos) == (b"stored", True, 0)
    await pub.publish("wire/t", b"live", qos=1, retain=True)
    second = parse_publish(*await read_packet(sub))
    assert (second.payload, second.retain, second.qos) == (b"live", False, 0)


@pytest_twisted.ensureDeferred
async def test_retained_delivered_at_min_of_retained_and_granted_qos(broker, clients):
    # [MQTT-3.3.1-5] the QoS is stored with the message; [MQTT-3.8.4-6] sent at
    # min(stored QoS, granted QoS)
    pub = await connected(clients, broker.port, "pub")
    for qos in (0, 1, 2):
        await pub.publish(f"rq/{qos}", f"stored at {qos}".encode(), qos=qos, retain=True)
    for sub_qos in (0, 1, 2):
        sub = await connected(clients, broker.port, f"sub{sub_qos}")
        await sub.subscribe("rq/+", sub_qos)
        messages = await sub.messages_for(0.4)
        assert sorted((m.topic, m.qos, m.retain) for m in messages) == [
            (f"rq/{qos}", min(qos, sub_qos), True) for qos in (0, 1, 2)
        ]


@pytest_twisted.ensureDeferred
async def test_retain_not_available_disconnects_retained_publisher(start_broker, clients, raw):
    # retain_available false: like Mosquitto, a retained PUBLISH closes the connection and
    # nothing is stored or forwarded (a raw publisher: paho would reconnect and resend it)
    broker = start_broker(retain_available=False)
    sub = await connected(clients, broker.port, "sub")
    await sub.subscribe("nr/#", 1)
    pub = raw(broker.port)
    await raw_connect(pub, "rawpub")
    pub.send(publish_packet("nr/plain", b"fine", qos=1, packet_id=1))
    assert await read_packet(pub) == (PUBACK, b"\x00\x01")
    assert (await sub.message()).payload == b"fine"
    pub.send(publish_packet("nr/kept", b"no", qos=1, packet_id=2, retain=True))
    assert await read_packet(pub) is None  # closed, no PUBACK
    assert await pub.closed()
    assert await nothing_in(sub.messages, 0.3)
    late = await connected(clients, broker.port, "late")
    await late.subscribe("nr/#", 1)
    assert await nothing_in(late.messages, 0.3)
