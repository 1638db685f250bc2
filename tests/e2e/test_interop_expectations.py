"""What the Eclipse Paho interoperability suite (``client_test.py`` for 3.1.1,
``client_test5.py`` for 5.0) expects of a broker started as ``twistd -n mqtt
--max-keepalive 60``, checked with our own clients (raw sockets and paho-mqtt).

The suite's clients connect with keep alive 0 unless a test says otherwise, use the client
ids ``myclientid`` / ``myclientid2`` and the topics ``TopicA``, ``TopicA/B``, ``Topic/C``,
``TopicA/C``, ``/TopicA``; the waits here are shorter than the suite's, the behaviour is the
same. Each test names the suite test(s) it mirrors and the spec statement it checks.
"""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
import pytest_twisted

from mqtt_twisted.packets import (
    Disconnect,
    PacketType,
    Property,
    Publish,
    ReasonCode,
    Subscribe,
    SubscriptionRequest,
    Will,
)

from .mqttclient import (
    PUBACK,
    PUBREC,
    ack_packet,
    connect_packet,
    mqtt_string,
    packet,
    paho_props,
    parse_publish,
    publish_packet,
    raw_connect,
    raw_subscribe,
    raw_v5_connect,
    read_packet,
    read_v5,
    reason_int,
    sleep,
    v5_bytes,
    v5_connect_bytes,
)

V5 = mqtt.MQTTv5
#: the owners run the suite against the broker started with --max-keepalive 60
INTEROP = {"max_keepalive": 60}
USER_PROPERTIES = [("a", "2"), ("c", "3")]


async def v5_subscriber(
    raw, port: int, client_id: str, filters, sub_id: int | None = None, **connect
):
    """A raw MQTT 5 client subscribed to ``filters`` = [(filter, qos), ...] (one SUBSCRIBE)."""
    sock = raw(port)
    connack = await raw_v5_connect(sock, client_id, **connect)
    properties = {Property.SUBSCRIPTION_IDENTIFIER: [sub_id]} if sub_id else {}
    sock.send(v5_bytes(Subscribe(1, [SubscriptionRequest(f, q) for f, q in filters], properties)))
    suback = await read_v5(sock)
    assert suback.type == PacketType.SUBACK and suback.reason_codes == [q for _f, q in filters]
    return sock, connack


async def v5_packets(sock, count: int) -> list:
    """The next ``count`` packets of a raw MQTT 5 client (fails if one does not come)."""
    got = []
    for _ in range(count):
        one = await read_v5(sock)
        assert one is not None, f"only {got!r} arrived"
        got.append(one)
    return got


async def server_disconnect_reason(sock) -> int:
    """The reason code of the DISCONNECT the broker sends before closing the connection."""
    while True:
        one = await read_v5(sock)
        assert one is not None, "connection closed without DISCONNECT"
        if one.type == PacketType.DISCONNECT:
            assert await sock.closed()
            return one.reason_code


# -- keep alive (every suite client; test_keepalive, test_server_keep_alive) -----------------


@pytest_twisted.ensureDeferred
async def test_v311_keep_alive_0_is_accepted_with_max_keepalive(start_broker, raw):
    """client_test.py connects every client with keep alive 0: accepted under
    --max-keepalive 60 (3.1.2.10: 0 turns the keep alive mechanism off; only a larger
    value than max_keepalive is refused)."""
    running = start_broker(**INTEROP)
    sock = raw(running.port)
    await raw_connect(sock, "myclientid", keepalive=0)
    assert await raw_subscribe(sock, [("TopicA", 2)]) == [2]


@pytest_twisted.ensureDeferred
async def test_server_keep_alive_is_max_keepalive(start_broker, raw):
    """test_server_keep_alive: keep alive 120 gets Server Keep Alive 60 [MQTT-3.2.2-21];
    the suite's default keep alive 0 gets it too (Mosquitto 2.x does the same)."""
    running = start_broker(**INTEROP)
    for keep_alive in (120, 0):
        sock = raw(running.port)
        connack = await raw_v5_connect(sock, f"ka{keep_alive}", keep_alive=keep_alive)
        assert connack.properties[Property.SERVER_KEEP_ALIVE] == 60
        sock.close()


@pytest_twisted.ensureDeferred
async def test_keep_alive_expiry_publishes_will_with_its_user_properties(start_broker, raw):
    """test_keepalive / test_will_message: a silent client is closed after 1.5 x its keep
    alive [MQTT-3.1.2-24] and its will published [MQTT-3.1.2-8], with its User Properties
    in order [MQTT-3.3.2-18] (Will Delay Interval 0 is the default)."""
    running = start_broker(**INTEROP)
    sub, _ = await v5_subscriber(raw, running.port, "myclientid2", [("Topic/C", 2)])
    will = Will(
        "Topic/C",
        b"will message",
        2,
        False,
        {Property.WILL_DELAY_INTERVAL: 0, Property.USER_PROPERTY: USER_PROPERTIES},
    )
    silent = raw(running.port)
    await raw_v5_connect(silent, "myclientid", keep_alive=1, will=will)
    started = time.monotonic()
    (publish,) = await v5_packets(sub, 1)
    assert 1.4 < time.monotonic() - started < 3.5
    assert (publish.topic, publish.payload, publish.qos) == ("Topic/C", b"will message", 2)
    assert publish.properties[Property.USER_PROPERTY] == USER_PROPERTIES
    assert await server_disconnect_reason(silent) == ReasonCode.KEEP_ALIVE_TIMEOUT


# -- flow control (test_flow_control1, test_flow_control2) -----------------------------------


@pytest_twisted.ensureDeferred
async def test_client_receive_maximum_holds_back_the_third_publish(start_broker, raw):
    """test_flow_control1: Receive Maximum 2, three QoS 1 messages to the client's own
    subscription: two PUBLISH, the third only after a PUBACK [MQTT-3.3.4-9]."""
    running = start_broker(**INTEROP)
    sock, _ = await v5_subscriber(
        raw,
        running.port,
        "myclientid",
        [("TopicA", 2)],
        properties={Property.RECEIVE_MAXIMUM: 2, Property.SESSION_EXPIRY_INTERVAL: 0},
    )
    for packet_id in (1, 2, 3):
        sock.send(v5_bytes(Publish("TopicA", b"message %d" % packet_id, 1, packet_id=packet_id)))
    got = await v5_packets(sock, 5)  # 3 PUBACKs and 2 PUBLISH, in whatever interleaving
    publishes = [p for p in got if p.type == PacketType.PUBLISH]
    assert sorted(p.packet_id for p in got if p.type == PacketType.PUBACK) == [1, 2, 3]
    assert [p.payload for p in publishes] == [b"message 1", b"message 2"]
    assert await read_v5(sock, timeout=0.5) is None
    sock.send(ack_packet(PUBACK, publishes[0].packet_id))
    third = await read_v5(sock)
    assert (third.type, third.qos, third.payload) == (PacketType.PUBLISH, 1, b"message 3")


@pytest_twisted.ensureDeferred
async def test_broker_receive_maximum_exceeded_at_default(start_broker, raw):
    """test_flow_control2: the CONNACK's Receive Maximum (20 by default) plus one QoS 2
    PUBLISH, none released: 20 PUBREC, then DISCONNECT 0x93 (3.2.2.3.3, [MQTT-3.3.4-7])."""
    running = start_broker(**INTEROP)
    sock = raw(running.port)
    connack = await raw_v5_connect(sock, "myclientid")
    maximum = connack.properties[Property.RECEIVE_MAXIMUM]
    assert maximum == 20
    sock.send(
        b"".join(
            v5_bytes(Publish("TopicA", b"message %d" % n, 2, packet_id=n))
            for n in range(1, maximum + 2)
        )
    )
    pubrecs = await v5_packets(sock, maximum)
    assert {p.type for p in pubrecs} == {PacketType.PUBREC}
    assert await server_disconnect_reason(sock) == ReasonCode.RECEIVE_MAXIMUM_EXCEEDED


# -- topic aliases (test_client_topic_alias, test_server_topic_alias) ------------------------


@pytest_twisted.ensureDeferred
async def test_client_topic_alias_0_and_alias_from_an_earlier_connection(start_broker, raw):
    """test_client_topic_alias: alias 0 is DISCONNECT 0x94 [MQTT-3.3.2-8]; alias 1 set and
    then used works; after a reconnection (session kept) alias 1 is unknown: aliases do not
    outlive the connection [MQTT-3.3.2-7], DISCONNECT (0x82)."""
    running = start_broker(**INTEROP)
    zero = raw(running.port)
    await raw_v5_connect(zero, "myclientid")
    zero.send(
        v5_bytes(
            Publish(
                "TopicA", b"topic alias 0", 1, packet_id=1, properties={Property.TOPIC_ALIAS: 0}
            )
        )
    )
    assert await server_disconnect_reason(zero) == ReasonCode.TOPIC_ALIAS_INVALID

    keep = {Property.TOPIC_ALIAS_MAXIMUM: 0, Property.SESSION_EXPIRY_INTERVAL: 99999}
    sock, connack = await v5_subscriber(
        raw, running.port, "myclientid", [("TopicA", 2)], properties=keep
    )
    assert connack.properties[Property.TOPIC_ALIAS_MAXIMUM] > 0
    sock.send(
        v5_bytes(
            Publish(
                "TopicA", b"topic alias 1", 1, packet_id=1, properties={Property.TOPIC_ALIAS: 1}
            )
        )
    )
    sock.send(
        v5_bytes(
            Publish("", b"topic alias 2", 1, packet_id=2, properties={Property.TOPIC_ALIAS: 1})
        )
    )
    got = await v5_packets(sock, 4)
    publishes = [p for p in got if p.type == PacketType.PUBLISH]
    assert [p.topic for p in publishes] == ["TopicA", "TopicA"]
    for publish in publishes:
        sock.send(ack_packet(PUBACK, publish.packet_id))
    sock.send(b"\xe0\x00")  # DISCONNECT
    assert await sock.closed()

    again = raw(running.port)
    sock_connack = await raw_v5_connect(again, "myclientid", clean_start=False)
    assert sock_connack.session_present
    again.send(v5_bytes(Publish("TopicA", b"topic alias 3", 1, packet_id=3)))
    got = await v5_packets(again, 2)
    assert [p.payload for p in got if p.type == PacketType.PUBLISH] == [b"topic alias 3"]
    again.send(
        v5_bytes(
            Publish("", b"topic alias 4", 1, packet_id=4, properties={Property.TOPIC_ALIAS: 1})
        )
    )
    assert await server_disconnect_reason(again) == ReasonCode.PROTOCOL_ERROR


@pytest_twisted.ensureDeferred
async def test_server_topic_alias_only_when_allowed(start_broker, raw):
    """test_server_topic_alias: with Topic Alias Maximum 1 the first PUBLISH has the topic
    and alias 1, the next ones alias 1 and an empty topic [MQTT-3.1.2-26]; without it (absent
    or 0) no alias at all [MQTT-3.1.2-27]."""
    running = start_broker(**INTEROP)
    for maximum, expected in (
        (1, [("TopicA", 1), ("", 1), ("", 1)]),
        (None, [("TopicA", None)] * 3),
        (0, [("TopicA", None)] * 3),
    ):
        properties = {} if maximum is None else {Property.TOPIC_ALIAS_MAXIMUM: maximum}
        sock, _ = await v5_subscriber(
            raw, running.port, "myclientid", [("TopicA", 2)], properties=properties
        )
        for qos in range(3):
            sock.send(v5_bytes(Publish("TopicA", b"topic alias 1", qos, packet_id=qos or None)))
        publishes = []
        while len(publishes) < 3:
            (one,) = await v5_packets(sock, 1)
            if one.type == PacketType.PUBLISH:
                publishes.append(one)
                if one.qos == 1:
                    sock.send(ack_packet(PUBACK, one.packet_id))
                elif one.qos == 2:
                    sock.send(ack_packet(PUBREC, one.packet_id))
            elif one.type == PacketType.PUBREC:
                sock.send(ack_packet(0x62, one.packet_id))  # PUBREL for our own QoS 2
        assert [(p.topic, p.properties.get(Property.TOPIC_ALIAS)) for p in publishes] == expected
        sock.close()


# -- Maximum Packet Size, subscription identifiers (test_maximum_packet_size, ...) ---------


@pytest_twisted.ensureDeferred
async def test_client_maximum_packet_size_64(start_broker, raw):
    """test_maximum_packet_size: the broker's own limit is above 65535 (so the suite skips
    that half); a client with Maximum Packet Size 64 gets a 32-byte payload but not a
    64-byte one [MQTT-3.1.2-25]."""
    running = start_broker(**INTEROP)
    sock, connack = await v5_subscriber(
        raw,
        running.port,
        "myclientid",
        [("TopicA", 2)],
        properties={Property.MAXIMUM_PACKET_SIZE: 64},
    )
    assert connack.properties[Property.MAXIMUM_PACKET_SIZE] >= 65535
    sock.send(v5_bytes(Publish("TopicA", b"." * 32, 0)))
    (small,) = await v5_packets(sock, 1)
    assert (small.type, small.payload) == (PacketType.PUBLISH, b"." * 32)
    sock.send(v5_bytes(Publish("TopicA", b"." * 64, 1, packet_id=1)))
    (puback,) = await v5_packets(sock, 1)
    assert puback.type == PacketType.PUBACK
    assert await read_v5(sock, timeout=0.5) is None


@pytest_twisted.ensureDeferred
async def test_overlapping_subscriptions_one_message_with_every_identifier(start_broker, raw):
    """test_subscribe_identifiers / test_overlapping_subscriptions: TopicA (id 2) and
    TopicA/# (id 3) of one client: one message [MQTT-3.3.5-1] carrying both identifiers
    [MQTT-3.3.4-3], [MQTT-3.3.4-4]; another client's single subscription: its own id."""
    running = start_broker(**INTEROP)
    a, _ = await v5_subscriber(raw, running.port, "myclientid", [("TopicA", 2)], sub_id=456789)
    b, _ = await v5_subscriber(raw, running.port, "myclientid2", [("TopicA", 2)], sub_id=2)
    b.send(
        v5_bytes(
            Subscribe(
                2, [SubscriptionRequest("TopicA/#", 2)], {Property.SUBSCRIPTION_IDENTIFIER: [3]}
            )
        )
    )
    assert (await read_v5(b)).type == PacketType.SUBACK
    b.send(v5_bytes(Publish("TopicA", b"sub identifier test", 1, packet_id=1)))
    (to_a,) = await v5_packets(a, 1)
    assert to_a.properties[Property.SUBSCRIPTION_IDENTIFIER] == [456789]
    got = await v5_packets(b, 2)
    publishes = [p for p in got if p.type == PacketType.PUBLISH]
    assert len(publishes) == 1 and publishes[0].qos == 1
    assert sorted(publishes[0].properties[Property.SUBSCRIPTION_IDENTIFIER]) == [2, 3]
    assert await read_v5(b, timeout=0.5) is None


# -- will delay, session expiry, message expiry ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_will_delay_ends_at_delay_or_session_end(start_broker, raw):
    """test_will_delay (times scaled down): the will waits for its Will Delay Interval, or
    is published when the session ends first: at once with Session Expiry 0, at the
    session's expiry when that is shorter (3.1.3.2.2, [MQTT-3.1.3-9])."""
    running = start_broker(**INTEROP)
    sub, _ = await v5_subscriber(raw, running.port, "myclientid2", [("TopicA", 2)])
    for delay, expiry, low, high in ((2, 4, 1.9, 3.0), (3, 0, 0.0, 1.0), (3, 1, 0.9, 2.0)):
        will = Will(
            "TopicA",
            b"test_will_delay will message",
            0,
            False,
            {Property.WILL_DELAY_INTERVAL: delay},
        )
        client = raw(running.port)
        await raw_v5_connect(
            client, "myclientid", will=will, properties={Property.SESSION_EXPIRY_INTERVAL: expiry}
        )
        client.close()
        started = time.monotonic()
        (publish,) = await v5_packets(sub, 1)
        waited = time.monotonic() - started
        assert publish.payload == b"test_will_delay will message"
        assert low <= waited <= high, (delay, expiry, waited)


@pytest_twisted.ensureDeferred
async def test_session_expiry_from_connect_and_disconnect(start_broker, raw):
    """test_session_expiry (times scaled down): Session Expiry 0 ends the session with the
    connection; 1 keeps it 1 s [MQTT-3.1.2-23]; DISCONNECT may lengthen it (3.14.2.2.2)
    and its 0 ends it at once. Session Present tells [MQTT-3.2.2-2], [MQTT-3.2.2-3]."""
    running = start_broker(**INTEROP)

    async def connect(clean: bool, expiry: int) -> bool:
        sock = raw(running.port)
        connack = await raw_v5_connect(
            sock,
            "myclientid",
            clean_start=clean,
            properties={Property.SESSION_EXPIRY_INTERVAL: expiry},
        )
        sock.send(v5_bytes(Subscribe(1, [SubscriptionRequest("TopicA", 2)])))
        assert (await read_v5(sock)).type == PacketType.SUBACK
        sessions.append(sock)
        return connack.session_present

    async def disconnect(expiry: int | None = None) -> None:
        sock = sessions.pop()
        properties = {} if expiry is None else {Property.SESSION_EXPIRY_INTERVAL: expiry}
        sock.send(v5_bytes(Disconnect(0, properties)))
        assert await sock.closed()

    sessions: list = []
    assert not await connect(True, 0)
    await disconnect()
    assert not await connect(False, 0)
    await disconnect()
    assert not await connect(True, 1)
    await disconnect()
    await sleep(0.4)
    assert await connect(False, 1)  # still there
    await disconnect()
    await sleep(1.3)
    assert not await connect(False, 1)  # expired
    await disconnect(3)  # longer on DISCONNECT
    await sleep(1.5)
    assert await connect(False, 1)
    await disconnect(0)  # ends at once
    assert not await connect(False, 1)
    await disconnect(0)


@pytest_twisted.ensureDeferred
async def test_publication_expiry_for_an_offline_subscriber(start_broker, raw):
    """test_publication_expiry: messages queued for an offline session are dropped once
    their Message Expiry Interval passed [MQTT-3.3.2-5]; the others arrive with the
    remaining interval [MQTT-3.3.2-6]. DISCONNECT may raise Session Expiry (3.14.2.2.2)."""
    running = start_broker(**INTEROP)
    sub, _ = await v5_subscriber(
        raw,
        running.port,
        "myclientid2",
        [("TopicA", 2)],
        properties={Property.SESSION_EXPIRY_INTERVAL: 99999},
    )
    sub.send(v5_bytes(Disconnect(0, {Property.SESSION_EXPIRY_INTERVAL: 999999999})))
    assert await sub.closed()
    pub = raw(running.port)
    await raw_v5_connect(pub, "myclientid")
    for n, (qos, expiry) in enumerate(((1, 1), (2, 1), (1, 6), (2, 6)), start=1):
        pub.send(
            v5_bytes(
                Publish(
                    "TopicA",
                    b"m%d" % n,
                    qos,
                    packet_id=n,
                    properties={Property.MESSAGE_EXPIRY_INTERVAL: expiry},
                )
            )
        )
    assert len(await v5_packets(pub, 4)) == 4  # PUBACK, PUBREC, PUBACK, PUBREC
    await sleep(1.5)
    back = raw(running.port)
    connack = await raw_v5_connect(back, "myclientid2", clean_start=False)
    assert connack.session_present
    got = await v5_packets(back, 2)
    assert [p.payload for p in got] == [b"m3", b"m4"]
    assert all(p.properties[Property.MESSAGE_EXPIRY_INTERVAL] < 6 for p in got)


# -- retained messages and subscribe options (test_retained_message, test_subscribe_options) --


@pytest_twisted.ensureDeferred
async def test_retained_messages_keep_user_properties_and_retain_handling(start_broker, clients):
    """test_retained_message / test_subscribe_options: retained messages at QoS 0, 1, 2
    keep their User Properties [MQTT-3.3.2-17]; Retain Handling 0 sends them on every
    SUBSCRIBE, 1 only for a new subscription, 2 never [MQTT-3.3.1-9], [MQTT-3.3.1-10]."""
    running = start_broker(**INTEROP)
    pub = clients(running.port, client_id="myclientid2", protocol=V5)
    await pub.connect()
    props = paho_props("PUBLISH", UserProperty=USER_PROPERTIES)
    for qos, topic in enumerate(("TopicA/B", "Topic/C", "TopicA/C")):
        await pub.publish(topic, b"qos %d" % qos, qos, retain=True, properties=props)

    client = clients(running.port, client_id="myclientid", protocol=V5)
    await client.connect()
    for handling, counts in ((1, (3, 0)), (2, (0, 0)), (0, (3, 3))):
        for expected in counts:
            await client.subscribe(
                "+/+", options=mqtt.SubscribeOptions(qos=2, retainHandling=handling)
            )
            got = await client.messages_for(0.5)
            assert len(got) == expected, (handling, got)
            if expected:
                assert sorted(m.qos for m in got) == [0, 1, 2]
                assert all(m.retain and m.properties.UserProperty == USER_PROPERTIES for m in got)
        await client.unsubscribe("+/+")


# -- 3.1.1 (client_test.py) ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_v311_zero_length_client_id(start_broker, raw):
    """test_zero_length_clientid: an empty client id with clean session 0 is refused with
    CONNACK 2 [MQTT-3.1.3-8]; with clean session 1 it is accepted [MQTT-3.1.3-6]; in 5.0 the
    broker tells the id it assigned (test_assigned_clientid, [MQTT-3.2.2-16])."""
    running = start_broker(**INTEROP)
    refused = raw(running.port)
    refused.send(connect_packet("", clean=False, keepalive=0))
    assert await read_packet(refused) == (0x20, b"\x00\x02")
    assert await refused.closed()
    await raw_connect(raw(running.port), "", clean=True, keepalive=0)
    v5 = raw(running.port)
    connack = await raw_v5_connect(v5, "", keep_alive=0)
    assert connack.properties[Property.ASSIGNED_CLIENT_IDENTIFIER]


@pytest_twisted.ensureDeferred
async def test_v311_offline_queueing_session_present_and_redelivery(start_broker, raw):
    """test_offline_message_queueing / test_redelivery_on_reconnect: a clean session 0
    client gets Session Present 1 back [MQTT-3.2.2-2] and the QoS 1 and 2 messages
    published while it was away (QoS 0 ones are not kept); those it did not acknowledge
    are sent again, with DUP, on the next reconnection [MQTT-4.4.0-1]."""
    running = start_broker(**INTEROP)
    a = raw(running.port)
    await raw_connect(a, "myclientid", clean=False, keepalive=0)
    assert await raw_subscribe(a, [("+/+", 2)]) == [2]
    a.send(b"\xe0\x00")
    assert await a.closed()

    b = raw(running.port)
    await raw_connect(b, "myclientid2", keepalive=0)
    b.send(publish_packet("TopicA/B", b"qos 0", 0))
    b.send(publish_packet("Topic/C", b"qos 1", 1, packet_id=1))
    b.send(publish_packet("TopicA/C", b"qos 2", 2, packet_id=2))
    assert (await read_packet(b))[0] == PUBACK
    assert (await read_packet(b))[0] == PUBREC

    for dup in (False, True):
        again = raw(running.port)
        again.send(connect_packet("myclientid", clean=False, keepalive=0))
        assert await read_packet(again) == (0x20, b"\x01\x00")  # session present
        got = [parse_publish(*await read_packet(again)) for _ in range(2)]
        assert [(p.topic, p.qos, p.dup) for p in got] == [("Topic/C", 1, dup), ("TopicA/C", 2, dup)]
        assert await read_packet(again, timeout=0.5) is None
        again.close()  # no acknowledgements: both come again next time


@pytest_twisted.ensureDeferred
async def test_dollar_topics_and_overlapping_subscriptions(start_broker, raw):
    """test_dollar_topics: +/+ does not match $TopicA/B [MQTT-4.7.2-1];
    test_overlapping_subscriptions: TopicA/# (QoS 2) and TopicA/+ (QoS 1) give one copy at
    QoS 2 [MQTT-3.3.5-1]."""
    running = start_broker(**INTEROP)
    sock = raw(running.port)
    await raw_connect(sock, "myclientid2", keepalive=0)
    assert await raw_subscribe(sock, [("+/+", 2)]) == [2]
    sock.send(publish_packet("$TopicA/B", b"", 1, packet_id=1))
    assert await read_packet(sock) == (PUBACK, b"\x00\x01")
    assert await read_packet(sock, timeout=0.5) is None

    a = raw(running.port)
    await raw_connect(a, "myclientid", keepalive=0)
    assert await raw_subscribe(a, [("TopicA/#", 2), ("TopicA/+", 1)]) == [2, 1]
    a.send(publish_packet("TopicA/C", b"overlapping topic filters", 2, packet_id=1))
    got = []
    while (one := await read_packet(a, timeout=0.5)) is not None:
        got.append(one)
    publishes = [parse_publish(*p) for p in got if p[0] >> 4 == 3]
    assert [(p.topic, p.qos) for p in publishes] == [("TopicA/C", 2)]


@pytest_twisted.ensureDeferred
async def test_second_connect_and_wrong_protocol_name_fail(start_broker, raw):
    """testBasic / test_basic: a second CONNECT on a connection closes it [MQTT-3.1.0-2]
    (5.0: after DISCONNECT 0x82); protocol name "hj" is not accepted [MQTT-3.1.2-1]:
    the connection gets a refusing CONNACK (0x01 / 0x84) and is closed."""
    running = start_broker(**INTEROP)
    v311 = raw(running.port)
    await raw_connect(v311, "myclientid", keepalive=0)
    v311.send(connect_packet("myclientid", keepalive=0))
    assert await v311.closed()
    v5 = raw(running.port)
    await raw_v5_connect(v5, "myclientid", keep_alive=0)
    v5.send(v5_connect_bytes("myclientid", keep_alive=0))
    assert await server_disconnect_reason(v5) == ReasonCode.PROTOCOL_ERROR

    for level, refusal in ((4, 0x01), (5, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION)):
        wrong = raw(running.port)
        body = mqtt_string("hj") + bytes([level, 0x02, 0, 0])
        body += (b"\x00" if level == 5 else b"") + mqtt_string("myclientid")
        wrong.send(packet(0x10, body))
        got = await read_packet(wrong)
        assert got is not None and got[0] == 0x20 and got[1][1] == refusal
        assert await wrong.closed()


# -- shared subscriptions, request / response (test_shared_subscriptions, ...) ----------------


@pytest_twisted.ensureDeferred
async def test_shared_subscription_next_to_a_plain_one(start_broker, clients):
    """test_shared_subscriptions / test_request_response: two clients subscribed, in one
    SUBSCRIBE each, to $share/sharename/client_test5/x and TopicA: both get a TopicA
    message, one of them the shared one (4.8.2); Response Topic and Correlation Data reach
    the subscriber unaltered [MQTT-3.3.2-15], [MQTT-3.3.2-16]."""
    running = start_broker(**INTEROP)
    a = clients(running.port, client_id="myclientid", protocol=V5)
    b = clients(running.port, client_id="myclientid2", protocol=V5)
    for client in (a, b):
        await client.connect()
        codes = await client.subscribe([("$share/sharename/client_test5/x", 2), ("TopicA", 2)])
        assert [reason_int(code) for code in codes] == [2, 2]
    request = paho_props("PUBLISH", ResponseTopic="TopicA", CorrelationData=b"334")
    await b.publish("TopicA", b"request", 1, properties=request)
    for client in (a, b):
        message = await client.message()
        assert (message.topic, message.payload) == ("TopicA", b"request")
        assert message.properties.ResponseTopic == "TopicA"
        assert message.properties.CorrelationData == b"334"
    await b.publish("client_test5/x", b"message 0", 0)
    got = await a.messages_for(0.5) + await b.messages_for(0.1)
    assert [m.payload for m in got] == [b"message 0"]


@pytest_twisted.ensureDeferred
async def test_no_local_and_retain_as_published(start_broker, clients):
    """test_subscribe_options: No Local keeps a client's own messages from it
    [MQTT-3.8.3-3]; Retain As Published keeps the RETAIN flag of live messages
    [MQTT-3.3.1-12]."""
    running = start_broker(**INTEROP)
    a = clients(running.port, client_id="myclientid", protocol=V5)
    b = clients(running.port, client_id="myclientid2", protocol=V5)
    for client in (a, b):
        await client.connect()
        await client.subscribe("TopicA", options=mqtt.SubscribeOptions(qos=2, noLocal=True))
    await a.publish("TopicA", b"noLocal test", 1)
    assert (await b.message()).payload == b"noLocal test"
    assert await a.messages_for(0.3) == []

    c = clients(running.port, client_id="rap", protocol=V5)
    await c.connect()
    await c.subscribe("TopicA", options=mqtt.SubscribeOptions(qos=2, retainAsPublished=True))
    await c.publish("TopicA", b"retain as published false", 1)
    await c.publish("TopicA", b"retain as published true", 1, retain=True)
    first, second = await c.message(), await c.message()
    assert (first.retain, second.retain) == (False, True)
