"""MQTT 5.0, 3.1.1 and 3.1 clients on one broker: messages cross protocol versions with their
topic, payload, QoS and retain flag, and without the 5.0-only fields for older clients.

MQTT 5.0 leaves translation to older clients to the implementation; like Mosquitto 2.x the
broker drops the properties (3.1.1 has no place for them) and adds none for 5.0 subscribers
beyond what the 5.0 rules require (a Subscription Identifier [MQTT-3.3.4-3])."""

import paho.mqtt.client as mqtt
import pytest
import pytest_twisted
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_twisted.packets import Property, Publish, Subscribe, SubscriptionRequest, Will

from .mqttclient import (
    connect_packet,
    parse_publish,
    publish_packet,
    raw_connect,
    raw_subscribe,
    raw_v5_connect,
    read_packet,
    read_v5,
    read_whole,
    v5_bytes,
)


@pytest.fixture
def broker(broker_anywhere):
    """Every test here runs against one process and against a cluster of two nodes."""
    return broker_anywhere


def rich_properties() -> Properties:
    """Every forwardable 5.0 PUBLISH property."""
    props = Properties(PacketTypes.PUBLISH)
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 120
    props.ContentType = "text/plain"
    props.ResponseTopic = "mixed/reply"
    props.CorrelationData = b"\x01\x02"
    props.UserProperty = [("k", "v"), ("k", "w")]
    return props


async def paho(clients, port, client_id, protocol):
    made = clients(port, client_id=client_id, protocol=protocol)
    await made.connect()
    return made


async def raw_old_subscriber(raw, port, client_id, topic_filter, level=4, qos=1):
    sock = raw(port)
    if level == 3:
        sock.send(connect_packet(client_id, level=3))
        got = await read_packet(sock)
        assert got == (0x20, b"\x00\x00")
    else:
        await raw_connect(sock, client_id)
    assert await raw_subscribe(sock, [(topic_filter, qos)]) == [qos]
    return sock


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("level", [4, 3], ids=["v311", "v31"])
async def test_v5_message_reaches_old_raw_subscriber_without_properties(
    broker, raw, clients, level
):
    # the PUBLISH a 3.1.1 / 3.1 subscriber gets is a plain 3.x PUBLISH (3.1.1 section 3.3:
    # topic, packet id, payload; no properties section), same topic, payload and QoS
    sub = await raw_old_subscriber(raw, broker.port, "old", "mixed/t", level)
    pub = await paho(clients, broker.port, "pub5", mqtt.MQTTv5)
    await pub.publish("mixed/t", "héllo".encode(), qos=1, properties=rich_properties())
    data = await read_whole(sub)
    publish = parse_publish(data[0], data[2:])
    assert data == publish_packet("mixed/t", "héllo".encode(), qos=1, packet_id=publish.packet_id)
    await pub.publish("mixed/t", b"zero", qos=0, properties=rich_properties())
    assert await read_whole(sub) == publish_packet("mixed/t", b"zero", qos=0)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv31], ids=["v311", "v31"])
async def test_v5_message_reaches_old_paho_subscriber_intact(broker, clients, protocol):
    # topic, payload, QoS (min of published and granted) and retain reach older clients
    sub = await paho(clients, broker.port, "old", protocol)
    await sub.subscribe("mixed/#", 2)
    pub = await paho(clients, broker.port, "pub5", mqtt.MQTTv5)
    for qos in (0, 1, 2):
        await pub.publish("mixed/a", f"q{qos}".encode(), qos=qos, properties=rich_properties())
        message = await sub.message()
        assert (message.topic, message.payload, message.qos, message.retain) == (
            "mixed/a",
            f"q{qos}".encode(),
            qos,
            False,
        )


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("subscription_id", [None, 7])
async def test_v311_message_reaches_v5_subscriber_without_added_properties(
    broker, raw, clients, subscription_id
):
    # a 3.1.1 message has no properties; a 5.0 subscriber gets none added except the
    # Subscription Identifier of its subscription [MQTT-3.3.4-3]
    sub = raw(broker.port)
    await raw_v5_connect(sub, "sub5")
    properties = {Property.SUBSCRIPTION_IDENTIFIER: [subscription_id]} if subscription_id else {}
    sub.send(v5_bytes(Subscribe(1, [SubscriptionRequest("old/+", 2)], properties)))
    assert (await read_v5(sub)).reason_codes == [2]
    pub = await paho(clients, broker.port, "pub4", mqtt.MQTTv311)
    await pub.publish("old/t", b"from 3.1.1", qos=1)
    publish = await read_v5(sub)
    assert isinstance(publish, Publish)
    assert (publish.topic, publish.payload, publish.qos, publish.retain) == (
        "old/t",
        b"from 3.1.1",
        1,
        False,
    )
    expected = {Property.SUBSCRIPTION_IDENTIFIER: [subscription_id]} if subscription_id else {}
    assert publish.properties == expected


@pytest_twisted.ensureDeferred
async def test_v31_message_reaches_v5_paho_subscriber(broker, clients):
    sub = await paho(clients, broker.port, "sub5", mqtt.MQTTv5)
    await sub.subscribe("old31/t", 2)
    pub = await paho(clients, broker.port, "pub31", mqtt.MQTTv31)
    await pub.publish("old31/t", b"from 3.1", qos=2)
    message = await sub.message()
    assert (message.topic, message.payload, message.qos) == ("old31/t", b"from 3.1", 2)
    assert getattr(message.properties, "UserProperty", None) is None
    assert getattr(message.properties, "SubscriptionIdentifier", None) is None


@pytest_twisted.ensureDeferred
async def test_retained_v5_message_reaches_v311_subscriber(broker, raw, clients):
    # a retained message stored from a 5.0 PUBLISH is sent to a new 3.1.1 subscription with
    # RETAIN 1 (3.1.1 [MQTT-3.3.1-8]) and without properties
    pub = await paho(clients, broker.port, "pub5", mqtt.MQTTv5)
    await pub.publish("ret5/t", b"kept", qos=1, retain=True, properties=rich_properties())
    sub = await raw_old_subscriber(raw, broker.port, "old", "ret5/#")
    data = await read_whole(sub)
    publish = parse_publish(data[0], data[2:])
    assert data == publish_packet(
        "ret5/t", b"kept", qos=1, packet_id=publish.packet_id, retain=True
    )


@pytest_twisted.ensureDeferred
async def test_retained_v311_message_reaches_v5_subscriber(broker, raw, clients):
    # and the other way: RETAIN 1, no properties added (beyond none here)
    pub = await paho(clients, broker.port, "pub4", mqtt.MQTTv311)
    await pub.publish("ret4/t", b"kept", qos=2, retain=True)
    sub = raw(broker.port)
    await raw_v5_connect(sub, "sub5")
    sub.send(v5_bytes(Subscribe(1, [SubscriptionRequest("ret4/t", 1)])))
    assert (await read_v5(sub)).reason_codes == [1]
    publish = await read_v5(sub)
    assert (publish.topic, publish.payload, publish.qos, publish.retain, publish.properties) == (
        "ret4/t",
        b"kept",
        1,
        True,
        {},
    )
    paho_sub = await paho(clients, broker.port, "paho5", mqtt.MQTTv5)
    await paho_sub.subscribe("ret4/t", 2)
    message = await paho_sub.message()
    assert (message.payload, message.qos, message.retain) == (b"kept", 2, True)


@pytest_twisted.ensureDeferred
async def test_will_of_v5_client_reaches_v311_subscriber(broker, raw):
    # [MQTT-3.1.2-8] the will is published when the connection closes without DISCONNECT;
    # a 3.1.1 subscriber gets it as a plain 3.1.1 PUBLISH (will properties dropped)
    sub = await raw_old_subscriber(raw, broker.port, "old", "wills/#")
    dying = raw(broker.port)
    will = Will(
        "wills/dev5",
        b"gone",
        1,
        False,
        {
            Property.CONTENT_TYPE: "text/plain",
            Property.USER_PROPERTY: [("why", "socket closed")],
            Property.MESSAGE_EXPIRY_INTERVAL: 60,
        },
    )
    await raw_v5_connect(dying, "dev5", will=will)
    dying.close()
    data = await read_whole(sub)
    publish = parse_publish(data[0], data[2:])
    assert data == publish_packet("wills/dev5", b"gone", qos=1, packet_id=publish.packet_id)


@pytest_twisted.ensureDeferred
async def test_will_of_v5_paho_client_reaches_v311_and_v31_subscribers(broker, clients):
    subs = [
        await paho(clients, broker.port, "s311", mqtt.MQTTv311),
        await paho(clients, broker.port, "s31", mqtt.MQTTv31),
    ]
    for sub in subs:
        await sub.subscribe("pwills/#", 2)
    props = Properties(PacketTypes.WILLMESSAGE)
    props.UserProperty = [("a", "b")]
    dying = clients(broker.port, client_id="dying", protocol=mqtt.MQTTv5)
    dying.client.will_set("pwills/dying", b"bye", qos=2, retain=False, properties=props)
    await dying.connect()
    dying.drop()
    for sub in subs:
        message = await sub.message()
        assert (message.topic, message.payload, message.qos, message.retain) == (
            "pwills/dying",
            b"bye",
            2,
            False,
        )
