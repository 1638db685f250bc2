"""MQTT 5.0 flow control and the DISCONNECT reason codes the broker sends, end to end.

OASIS MQTT 5.0: 3.3.4 (Receive Maximum, flow control 4.9), 3.1.2.11.4 (Maximum Packet Size),
3.14.2.1 (DISCONNECT reason codes), 4.13 (handling errors).
"""

import paho.mqtt.client as mqtt
import pytest
import pytest_twisted

from mqtt_twisted.packets import (
    Auth,
    PacketType,
    Property,
    PubAck,
    Publish,
    ReasonCode,
    Subscribe,
    SubscriptionRequest,
)

from .mqttclient import (
    get,
    no_reconnect,
    paho_props,
    publish_reason,
    raw_v5_connect,
    read_v5,
    reason_int,
    v5_bytes,
    v5_connect_bytes,
    wait_until,
)

V5 = mqtt.MQTTv5


async def v5_client(clients, port: int, client_id: str, **connect):
    client = clients(port, client_id=client_id, protocol=V5)
    await client.connect(**connect)
    return client


async def raw_subscriber(
    raw, port: int, client_id: str, topic_filter: str, qos: int = 1, **connect
):
    """A raw v5 client subscribed to ``topic_filter``."""
    sock = raw(port)
    await raw_v5_connect(sock, client_id, **connect)
    sock.send(v5_bytes(Subscribe(1, [SubscriptionRequest(topic_filter, qos)])))
    suback = await read_v5(sock)
    assert suback.type == PacketType.SUBACK and suback.reason_codes == [qos]
    return sock


async def server_disconnect(sock, timeout: float = 5.0):
    """The DISCONNECT the broker sends, after which it closes the connection."""
    packet = await read_v5(sock, timeout)
    while packet is not None and packet.type != PacketType.DISCONNECT:
        packet = await read_v5(sock, timeout)  # skip acknowledgements sent before it
    assert packet is not None, "no DISCONNECT from the broker"
    assert await sock.closed()
    return packet


async def paho_disconnect_reason(client) -> int:
    """The reason code paho reports in on_disconnect (the broker's DISCONNECT)."""
    return reason_int(await get(client.disconnects))


# -- Receive Maximum ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_receive_maximum_limits_unacknowledged_publishes(broker, clients, raw):
    """Client Receive Maximum 2: never more than 2 unacknowledged QoS 1 PUBLISH to it
    [MQTT-3.3.4-9]; each PUBACK lets exactly one more through, in order."""
    sock = await raw_subscriber(
        raw, broker.port, "narrow", "rm/#", properties={Property.RECEIVE_MAXIMUM: 2}
    )
    pub = await v5_client(clients, broker.port, "pub")
    for n in range(5):
        await pub.publish("rm/x", f"m{n}".encode(), qos=1)

    first = [await read_v5(sock) for _ in range(2)]
    assert [p.payload for p in first] == [b"m0", b"m1"]
    assert await read_v5(sock, 0.4) is None
    seen = [p.payload for p in first]
    pending = [p.packet_id for p in first]
    while len(seen) < 5:
        sock.send(v5_bytes(PubAck(pending.pop(0))))
        nxt = await read_v5(sock)
        assert nxt.type == PacketType.PUBLISH
        seen.append(nxt.payload)
        pending.append(nxt.packet_id)
        assert await read_v5(sock, 0.2) is None  # still only 2 in flight
    assert seen == [b"m0", b"m1", b"m2", b"m3", b"m4"]


@pytest_twisted.ensureDeferred
async def test_receive_maximum_qos0_not_limited(broker, clients, raw):
    """QoS 0 messages are not counted by Receive Maximum (4.9): all 5 arrive."""
    sock = await raw_subscriber(
        raw, broker.port, "narrow0", "rm0/#", qos=0, properties={Property.RECEIVE_MAXIMUM: 1}
    )
    pub = await v5_client(clients, broker.port, "pub")
    for n in range(5):
        await pub.publish("rm0/x", f"m{n}".encode(), qos=0)
    got = [await read_v5(sock) for _ in range(5)]
    assert [p.payload for p in got] == [f"m{n}".encode() for n in range(5)]


@pytest_twisted.ensureDeferred
async def test_broker_receive_maximum_exceeded(start_broker, raw):
    """The broker's Receive Maximum is 2 (max_inflight_messages): a third unacknowledged
    QoS 2 PUBLISH (no PUBREL sent) gets DISCONNECT 0x93 [MQTT-3.3.4-7], [MQTT-3.3.4-8]."""
    running = start_broker(max_inflight_messages=2)
    sock = raw(running.port)
    connack = await raw_v5_connect(sock, "flooder")
    assert connack.properties[Property.RECEIVE_MAXIMUM] == 2
    for packet_id in (1, 2, 3):
        sock.send(v5_bytes(Publish("q2/x", b"x", qos=2, packet_id=packet_id)))
    pubrecs = [await read_v5(sock) for _ in range(2)]
    assert [(p.type, p.packet_id) for p in pubrecs] == [
        (PacketType.PUBREC, 1),
        (PacketType.PUBREC, 2),
    ]
    disconnect = await server_disconnect(sock)
    assert disconnect.reason_code == ReasonCode.RECEIVE_MAXIMUM_EXCEEDED


# -- Maximum Packet Size -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_client_maximum_packet_size(broker, clients):
    """Client Maximum Packet Size 100: a PUBLISH larger than that is not sent to it but
    dropped (and counted) [MQTT-3.1.2-25]; a small one arrives; the connection stays."""
    small_reader = await v5_client(
        clients, broker.port, "small", properties=paho_props("CONNECT", MaximumPacketSize=100)
    )
    await small_reader.subscribe("mps/#", qos=1)
    pub = await v5_client(clients, broker.port, "pub")
    dropped = broker.broker.stats.publish_dropped
    await pub.publish("mps/big", b"x" * 500, qos=1)
    await wait_until(lambda: broker.broker.stats.publish_dropped == dropped + 1)
    await pub.publish("mps/small", b"tiny", qos=1)
    message = await small_reader.message()
    assert (message.topic, message.payload) == ("mps/small", b"tiny")
    assert small_reader.messages.empty()


@pytest_twisted.ensureDeferred
async def test_client_maximum_packet_size_qos0(broker, clients, raw):
    """The same for QoS 0: the big message is dropped, the next small one arrives."""
    sock = await raw_subscriber(
        raw, broker.port, "small0", "mps0/#", qos=0, properties={Property.MAXIMUM_PACKET_SIZE: 100}
    )
    pub = await v5_client(clients, broker.port, "pub")
    await pub.publish("mps0/big", b"x" * 500, qos=0)
    await pub.publish("mps0/small", b"tiny", qos=0)
    message = await read_v5(sock)
    assert (message.topic, message.payload) == ("mps0/small", b"tiny")


@pytest_twisted.ensureDeferred
async def test_packet_too_large(start_broker, raw):
    """A packet larger than the broker's Maximum Packet Size (200): DISCONNECT 0x95
    [MQTT-3.2.2-15] and the connection is closed."""
    running = start_broker(max_packet_size=200)
    sock = raw(running.port)
    connack = await raw_v5_connect(sock, "big")
    assert connack.properties[Property.MAXIMUM_PACKET_SIZE] == 200
    sock.send(v5_bytes(Publish("big/x", b"x" * 300, qos=0)))
    disconnect = await server_disconnect(sock)
    assert disconnect.reason_code == ReasonCode.PACKET_TOO_LARGE


# -- DISCONNECT reason codes sent by the broker ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_session_taken_over(broker, clients):
    """A second connection with the same client id: the first gets DISCONNECT 0x8E Session
    taken over [MQTT-3.1.4-3], seen by paho's on_disconnect."""
    first = await v5_client(clients, broker.port, "twin")
    no_reconnect(first)
    second = await v5_client(clients, broker.port, "twin")
    assert await paho_disconnect_reason(first) == ReasonCode.SESSION_TAKEN_OVER
    assert broker.broker.sessions["twin"].connection is not None
    assert second.disconnects.empty()


@pytest_twisted.ensureDeferred
async def test_keep_alive_timeout(broker, raw):
    """Silent for 1.5 x keep alive (1 s): DISCONNECT 0x8D Keep Alive timeout [MQTT-3.1.2-22]."""
    sock = raw(broker.port)
    await raw_v5_connect(sock, "silent", keep_alive=1)
    disconnect = await server_disconnect(sock, timeout=3.0)
    assert disconnect.reason_code == ReasonCode.KEEP_ALIVE_TIMEOUT


@pytest.mark.parametrize(
    "data",
    [
        b"\x30\x05\x00\x10ab\x00",  # topic length beyond the packet
        b"\x80\x06\x00\x01\x00\x00\x01\x00",  # SUBSCRIBE with reserved flags 0000 [MQTT-3.8.1-1]
        b"\x30\x07\x00\x01a\x03\x7f\x00\x00",  # PUBLISH with an unknown property id (2.2.2.2)
    ],
    ids=["topic-length", "subscribe-flags", "unknown-property"],
)
@pytest_twisted.ensureDeferred
async def test_malformed_packet(broker, raw, data):
    """A malformed packet: DISCONNECT 0x81 Malformed Packet, then close (4.13.1)."""
    sock = raw(broker.port)
    await raw_v5_connect(sock, "garbled")
    sock.send(data)
    disconnect = await server_disconnect(sock)
    assert disconnect.reason_code == ReasonCode.MALFORMED_PACKET


@pytest_twisted.ensureDeferred
async def test_property_not_allowed_in_packet_type(broker, raw):
    """A PUBLISH carrying a CONNECT-only property (Session Expiry Interval): the packet is
    malformed (MQTT 5.0 section 2.2.2.2: a property not valid in its packet type), so
    DISCONNECT 0x81 Malformed Packet [MQTT-4.13.1-1]."""
    sock = raw(broker.port)
    await raw_v5_connect(sock, "misplaced")
    sock.send(b"\x30\x07\x00\x01a\x03\x11\x00\x00")
    disconnect = await server_disconnect(sock)
    assert disconnect.reason_code == ReasonCode.MALFORMED_PACKET


@pytest_twisted.ensureDeferred
async def test_auth_without_method_is_a_protocol_error(broker, raw):
    """AUTH when CONNECT had no Authentication Method: DISCONNECT 0x82 Protocol Error
    [MQTT-4.12.0-1] (4.12)."""
    sock = raw(broker.port)
    await raw_v5_connect(sock, "authless")
    sock.send(
        v5_bytes(Auth(ReasonCode.CONTINUE_AUTHENTICATION, {Property.AUTHENTICATION_METHOD: "x"}))
    )
    disconnect = await server_disconnect(sock)
    assert disconnect.reason_code == ReasonCode.PROTOCOL_ERROR


@pytest_twisted.ensureDeferred
async def test_second_connect_is_a_protocol_error(broker, raw):
    """A second CONNECT on a connection: DISCONNECT 0x82 [MQTT-3.1.0-2]."""
    sock = raw(broker.port)
    await raw_v5_connect(sock, "twice")
    sock.send(v5_connect_bytes("twice"))
    disconnect = await server_disconnect(sock)
    assert disconnect.reason_code == ReasonCode.PROTOCOL_ERROR


@pytest_twisted.ensureDeferred
async def test_retain_not_supported(start_broker, clients):
    """retain_available=False: a retained PUBLISH gets DISCONNECT 0x9A Retain not supported
    [MQTT-3.2.2-14], seen by paho."""
    running = start_broker(retain_available=False)
    client = await v5_client(clients, running.port, "retainer")
    no_reconnect(client)
    client.client.publish("r/x", b"keep", qos=0, retain=True)
    assert await paho_disconnect_reason(client) == ReasonCode.RETAIN_NOT_SUPPORTED
    assert list(running.broker.retained.match("r/x")) == []


@pytest_twisted.ensureDeferred
async def test_qos_not_supported(start_broker, clients):
    """max_qos 1: a QoS 2 PUBLISH gets DISCONNECT 0x9B QoS not supported [MQTT-3.2.2-11]."""
    running = start_broker(max_qos=1)
    client = await v5_client(clients, running.port, "greedy")
    no_reconnect(client)
    client.client.publish("q/x", b"x", qos=2)
    assert await paho_disconnect_reason(client) == ReasonCode.QOS_NOT_SUPPORTED


@pytest_twisted.ensureDeferred
async def test_payload_format_invalid_qos0_disconnects(broker, clients):
    """QoS 0 with Payload Format Indicator 1 and a payload that is not UTF-8: no PUBACK to
    carry a reason, so DISCONNECT 0x99 Payload format invalid (3.3.2.3.2, 4.13)."""
    client = await v5_client(clients, broker.port, "badutf")
    no_reconnect(client)
    client.client.publish(
        "pf/x", b"\xff\xfe", qos=0, properties=paho_props("PUBLISH", PayloadFormatIndicator=1)
    )
    assert await paho_disconnect_reason(client) == ReasonCode.PAYLOAD_FORMAT_INVALID


@pytest_twisted.ensureDeferred
async def test_payload_format_invalid_qos1_gets_puback_0x99(broker, clients):
    """The same at QoS 1: PUBACK 0x99, the connection stays, the message is not routed."""
    watch = await v5_client(clients, broker.port, "watch")
    await watch.subscribe("pf/#", qos=1)
    client = await v5_client(clients, broker.port, "badutf1")
    rc = await publish_reason(
        client,
        "pf/x",
        b"\xff\xfe",
        qos=1,
        properties=paho_props("PUBLISH", PayloadFormatIndicator=1),
    )
    assert rc == ReasonCode.PAYLOAD_FORMAT_INVALID
    assert client.disconnects.empty()
    assert (
        await publish_reason(
            client, "pf/x", "ok", qos=1, properties=paho_props("PUBLISH", PayloadFormatIndicator=1)
        )
        == 0
    )
    message = await watch.message()
    assert message.payload == b"ok"


@pytest_twisted.ensureDeferred
async def test_topic_alias_invalid_disconnect(broker, clients):
    """A Topic Alias above the broker's Topic Alias Maximum (10): DISCONNECT 0x94
    [MQTT-3.3.2-9], seen by paho."""
    client = await v5_client(clients, broker.port, "aliaser")
    no_reconnect(client)
    client.client.publish("ta/x", b"x", qos=0, properties=paho_props("PUBLISH", TopicAlias=11))
    assert await paho_disconnect_reason(client) == ReasonCode.TOPIC_ALIAS_INVALID
