"""MQTT 5.0 topic aliases end to end: those a client sets on its PUBLISH packets, and those
the broker sets towards a client that allows them.

OASIS MQTT 5.0: 3.3.2.3.4 (Topic Alias), 3.1.2.11.5 / 3.2.2.3.8 (Topic Alias Maximum).
"""

import paho.mqtt.client as mqtt
import pytest_twisted

from mqtt_twisted.packets import (
    PacketType,
    Property,
    Publish,
    ReasonCode,
    Subscribe,
    SubscriptionRequest,
)

from .mqttclient import (
    get,
    no_reconnect,
    paho_props,
    raw_v5_connect,
    read_v5,
    reason_int,
    v5_bytes,
)

V5 = mqtt.MQTTv5
ALIAS = Property.TOPIC_ALIAS


async def v5_client(clients, port: int, client_id: str, **connect):
    client = clients(port, client_id=client_id, protocol=V5)
    await client.connect(**connect)
    return client


def alias(n: int):
    return paho_props("PUBLISH", TopicAlias=n)


async def raw_subscriber(
    raw,
    port: int,
    client_id: str,
    topic_filter: str,
    alias_maximum: int | None,
    more: dict | None = None,
):
    """A raw v5 QoS 0 subscriber; ``alias_maximum`` goes into its CONNECT (None: absent),
    with the CONNECT properties ``more``."""
    properties = dict(more or {})
    if alias_maximum is not None:
        properties[Property.TOPIC_ALIAS_MAXIMUM] = alias_maximum
    sock = raw(port)
    await raw_v5_connect(sock, client_id, properties=properties)
    sock.send(v5_bytes(Subscribe(1, [SubscriptionRequest(topic_filter, 0)])))
    suback = await read_v5(sock)
    assert suback.type == PacketType.SUBACK and suback.reason_codes == [0]
    return sock


async def raw_publisher(raw, port: int, client_id: str = "rawpub"):
    sock = raw(port)
    await raw_v5_connect(sock, client_id)
    return sock


async def disconnect_reason(sock) -> int:
    packet = await read_v5(sock)
    assert packet is not None and packet.type == PacketType.DISCONNECT, packet
    assert await sock.closed()
    return packet.reason_code


# -- aliases from the client -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_client_alias_resolves_for_subscribers(broker, clients):
    """Alias 1 set with a topic, then used with an empty topic name: the subscriber gets
    the full topic both times [MQTT-3.3.2-12] and not the publisher's Topic Alias (an
    alias belongs to one connection, 3.3.2.3.4)."""
    sub = await v5_client(clients, broker.port, "sub")
    await sub.subscribe("al/#", qos=1)
    pub = await v5_client(clients, broker.port, "pub")
    await pub.publish("al/kitchen", b"1", qos=1, properties=alias(1))
    await pub.publish("", b"2", qos=1, properties=alias(1))
    await pub.publish("", b"3", qos=0, properties=alias(1))
    got = [await sub.message() for _ in range(3)]
    assert [(m.topic, m.payload) for m in got] == [
        ("al/kitchen", b"1"),
        ("al/kitchen", b"2"),
        ("al/kitchen", b"3"),
    ]
    assert not any(hasattr(m.properties, "TopicAlias") for m in got)


@pytest_twisted.ensureDeferred
async def test_client_alias_can_be_remapped(broker, clients):
    """A PUBLISH with a topic name and a known alias sets the alias to the new topic."""
    sub = await v5_client(clients, broker.port, "sub")
    await sub.subscribe("al/#", qos=1)
    pub = await v5_client(clients, broker.port, "pub")
    await pub.publish("al/one", b"a", qos=1, properties=alias(2))
    await pub.publish("al/two", b"b", qos=1, properties=alias(2))
    await pub.publish("", b"c", qos=1, properties=alias(2))
    got = [await sub.message() for _ in range(3)]
    assert [m.topic for m in got] == ["al/one", "al/two", "al/two"]


@pytest_twisted.ensureDeferred
async def test_alias_zero_is_invalid(broker, raw):
    """Topic Alias 0: DISCONNECT 0x94 Topic Alias invalid [MQTT-3.3.2-8]."""
    sock = await raw_publisher(raw, broker.port)
    sock.send(v5_bytes(Publish("al/x", b"x", properties={ALIAS: 0})))
    assert await disconnect_reason(sock) == ReasonCode.TOPIC_ALIAS_INVALID


@pytest_twisted.ensureDeferred
async def test_alias_above_maximum_is_invalid(start_broker, raw):
    """Topic Alias above the broker's Topic Alias Maximum (3): DISCONNECT 0x94 [MQTT-3.3.2-9]."""
    running = start_broker(max_topic_alias=3)
    sock = await raw_publisher(raw, running.port)
    sock.send(v5_bytes(Publish("al/x", b"x", properties={ALIAS: 3})))  # the maximum: fine
    sock.send(v5_bytes(Publish("al/x", b"x", properties={ALIAS: 4})))
    assert await disconnect_reason(sock) == ReasonCode.TOPIC_ALIAS_INVALID


@pytest_twisted.ensureDeferred
async def test_any_alias_invalid_when_maximum_is_0(start_broker, clients):
    """max_topic_alias 0: the client may not send a Topic Alias at all [MQTT-3.2.2-18]; one
    gets DISCONNECT 0x94, seen by paho."""
    running = start_broker(max_topic_alias=0)
    client = await v5_client(clients, running.port, "nope")
    no_reconnect(client)
    client.client.publish("al/x", b"x", properties=alias(1))
    assert reason_int(await get(client.disconnects)) == ReasonCode.TOPIC_ALIAS_INVALID


@pytest_twisted.ensureDeferred
async def test_unknown_alias_with_empty_topic_is_a_protocol_error(broker, clients):
    """An empty topic name with an alias never set: DISCONNECT 0x82 Protocol Error (4.13)."""
    client = await v5_client(clients, broker.port, "forgetful")
    no_reconnect(client)
    client.client.publish("", b"x", properties=alias(5))
    assert reason_int(await get(client.disconnects)) == ReasonCode.PROTOCOL_ERROR


@pytest_twisted.ensureDeferred
async def test_empty_topic_without_alias_is_a_protocol_error(broker, raw):
    """An empty topic name and no Topic Alias: DISCONNECT 0x82 [MQTT-3.3.2-1] (no topic)."""
    sock = await raw_publisher(raw, broker.port)
    sock.send(v5_bytes(Publish("", b"x")))
    assert await disconnect_reason(sock) == ReasonCode.PROTOCOL_ERROR


@pytest_twisted.ensureDeferred
async def test_aliases_are_forgotten_on_reconnect(broker, clients):
    """Alias mappings last one connection [MQTT-3.3.2-10], [MQTT-3.3.2-11]: using an alias
    set on the previous connection is a protocol error (0x82), even with the session kept."""
    props = paho_props("CONNECT", SessionExpiryInterval=60)
    first = await v5_client(clients, broker.port, "again", properties=props)
    await first.publish("al/x", b"x", qos=1, properties=alias(1))
    first.disconnect()
    await get(first.disconnects)
    first.stop()
    second = await v5_client(clients, broker.port, "again", clean_start=False, properties=props)
    no_reconnect(second)
    second.client.publish("", b"y", properties=alias(1))
    assert reason_int(await get(second.disconnects)) == ReasonCode.PROTOCOL_ERROR


# -- aliases from the broker -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_broker_sets_aliases_for_a_client_that_allows_them(broker, clients, raw):
    """Client Topic Alias Maximum 5: the first PUBLISH of a topic carries the topic name and
    a Topic Alias, later ones an empty topic name and the same alias; another topic gets
    another alias, within 1..5 [MQTT-3.3.2-7]."""
    sock = await raw_subscriber(raw, broker.port, "aliased", "ba/#", alias_maximum=5)
    pub = await v5_client(clients, broker.port, "pub")
    for topic, payload in [
        ("ba/a", b"1"),
        ("ba/a", b"2"),
        ("ba/b", b"3"),
        ("ba/a", b"4"),
        ("ba/b", b"5"),
    ]:
        await pub.publish(topic, payload, qos=0)
    got = [await read_v5(sock) for _ in range(5)]
    a, b = got[0].properties[ALIAS], got[2].properties[ALIAS]
    assert a != b and {a, b} <= set(range(1, 6))
    assert [(p.topic, p.properties.get(ALIAS), p.payload) for p in got] == [
        ("ba/a", a, b"1"),
        ("", a, b"2"),
        ("ba/b", b, b"3"),
        ("", a, b"4"),
        ("", b, b"5"),
    ]


@pytest_twisted.ensureDeferred
async def test_broker_aliases_stay_within_the_client_maximum(broker, clients, raw):
    """Client Topic Alias Maximum 1: only one topic gets an alias; other topics keep coming
    with their full names and no alias [MQTT-3.3.2-7]."""
    sock = await raw_subscriber(raw, broker.port, "one-alias", "bm/#", alias_maximum=1)
    pub = await v5_client(clients, broker.port, "pub")
    for topic in ["bm/a", "bm/b", "bm/b", "bm/a"]:
        await pub.publish(topic, b"x", qos=0)
    got = [await read_v5(sock) for _ in range(4)]
    assert [(p.topic, p.properties.get(ALIAS)) for p in got] == [
        ("bm/a", 1),
        ("bm/b", None),
        ("bm/b", None),
        ("", 1),
    ]


@pytest_twisted.ensureDeferred
async def test_no_broker_aliases_for_client_maximum_0(broker, clients, raw):
    """No Topic Alias Maximum in CONNECT (0): full topic names, never a Topic Alias
    [MQTT-3.1.2-27]."""
    sock = await raw_subscriber(raw, broker.port, "plain", "bn/#", alias_maximum=None)
    pub = await v5_client(clients, broker.port, "pub")
    for _ in range(3):
        await pub.publish("bn/a", b"x", qos=0)
    got = [await read_v5(sock) for _ in range(3)]
    assert [(p.topic, ALIAS in p.properties) for p in got] == [("bn/a", False)] * 3


@pytest_twisted.ensureDeferred
async def test_no_broker_aliases_when_disabled(start_broker, clients, raw):
    """max_topic_alias_broker 0: the broker never sends a Topic Alias, even to a client
    that allows 5."""
    running = start_broker(max_topic_alias_broker=0)
    sock = await raw_subscriber(raw, running.port, "allows", "bd/#", alias_maximum=5)
    pub = await v5_client(clients, running.port, "pub")
    for _ in range(3):
        await pub.publish("bd/a", b"x", qos=0)
    got = [await read_v5(sock) for _ in range(3)]
    assert [(p.topic, ALIAS in p.properties) for p in got] == [("bd/a", False)] * 3


@pytest_twisted.ensureDeferred
async def test_alias_not_kept_for_a_dropped_oversized_message(broker, clients, raw):
    """A message too large for the client's Maximum Packet Size is not sent [MQTT-3.1.2-25],
    so the alias it would have set is not known to the client: the next message on that
    topic comes with the topic name."""
    sock = await raw_subscriber(
        raw, broker.port, "tight", "bo/#", alias_maximum=5, more={Property.MAXIMUM_PACKET_SIZE: 100}
    )
    pub = await v5_client(clients, broker.port, "pub")
    await pub.publish("bo/a", b"x" * 200, qos=0)
    await pub.publish("bo/a", b"small", qos=0)
    await pub.publish("bo/a", b"again", qos=0)
    first, second = await read_v5(sock), await read_v5(sock)
    assert (first.topic, first.payload) == ("bo/a", b"small")
    assert (second.topic, second.payload) == ("", b"again")
    assert first.properties[ALIAS] == second.properties[ALIAS]


@pytest_twisted.ensureDeferred
async def test_paho_receives_aliased_messages(broker, clients):
    """A paho MQTT 5 client with Topic Alias Maximum 5 gets the aliased PUBLISH packets.
    paho-mqtt 2.2 does not resolve inbound aliases itself (it hands the empty topic name to
    on_message with the Topic Alias property), so the mapping is applied here as a client
    must [MQTT-3.3.2-12]; every message then has its right topic."""
    sub = await v5_client(
        clients, broker.port, "paho-aliases", properties=paho_props("CONNECT", TopicAliasMaximum=5)
    )
    await sub.subscribe("pa/#", qos=1)
    pub = await v5_client(clients, broker.port, "pub")
    sent = [("pa/a", b"1"), ("pa/b", b"2"), ("pa/a", b"3"), ("pa/b", b"4"), ("pa/a", b"5")]
    for topic, payload in sent:
        await pub.publish(topic, payload, qos=1)
    mapping: dict[int, str] = {}
    resolved = []
    aliased = 0
    for _ in sent:
        message = await sub.message()
        topic = message.topic
        number = getattr(message.properties, "TopicAlias", None)
        if number is not None:
            aliased += 1
            if topic:
                mapping[number] = topic
            else:
                topic = mapping[number]
        resolved.append((topic, message.payload))
    assert resolved == sent
    assert aliased == len(sent)
