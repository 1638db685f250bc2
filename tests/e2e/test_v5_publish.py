"""MQTT 5.0 PUBLISH end to end: forwarded properties, expiry, subscription identifiers, and the
reason codes of PUBACK / PUBREC / PUBCOMP, SUBACK and UNSUBACK, with paho (MQTTv5) and raw
MQTT 5.0 sockets over loopback. References are to OASIS MQTT 5.0."""

import paho.mqtt.client as mqtt
import pytest
import pytest_twisted
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from mqtt_twisted.packets import (
    Property,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscribe,
    SubscriptionRequest,
)

from .mqttclient import (
    nothing_in,
    publish_reason,
    raw_v5_connect,
    read_v5,
    sleep,
    v5_bytes,
)


@pytest.fixture
def broker(broker_anywhere):
    """Every test here runs against one process and against a cluster of two nodes."""
    return broker_anywhere


V5 = mqtt.MQTTv5


def publish_properties(**fields) -> Properties:
    """paho PUBLISH properties, e.g. publish_properties(ContentType="text/plain")."""
    props = Properties(PacketTypes.PUBLISH)
    for name, value in fields.items():
        setattr(props, name, value)
    return props


def subscribe_properties(subscription_id: int) -> Properties:
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = subscription_id
    return props


def session_properties(expiry: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry
    return props


async def v5_client(clients, port, client_id, **connect):
    client = clients(port, client_id=client_id, protocol=V5)
    await client.connect(**connect)
    return client


def many(*filters) -> list:
    """paho's MQTT 5 form of a multi-filter SUBSCRIBE: [(filter, SubscribeOptions)]."""
    return [(topic_filter, SubscribeOptions(qos=qos)) for topic_filter, qos in filters]


def codes(reason_codes) -> list[int]:
    return [rc.value for rc in reason_codes]


# -- properties forwarded to subscribers --------------------------------------------------


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("indicator", [0, 1])
async def test_payload_format_indicator_forwarded_unchanged(broker, clients, indicator):
    # [MQTT-3.3.2-4] the Server MUST send the Payload Format Indicator unaltered
    sub = await v5_client(clients, broker.port, "sub")
    await sub.subscribe("pfi/t", 1)
    pub = await v5_client(clients, broker.port, "pub")
    await pub.publish(
        "pfi/t",
        "grüße".encode(),
        qos=1,
        properties=publish_properties(PayloadFormatIndicator=indicator),
    )
    message = await sub.message()
    assert message.payload == "grüße".encode()
    assert message.properties.PayloadFormatIndicator == indicator


@pytest_twisted.ensureDeferred
async def test_payload_format_invalid_utf8_is_refused_with_puback_0x99(broker, clients):
    # [MQTT-3.3.2-4]/section 3.3.2.3.2: a receiver MAY check a payload that says it is UTF-8;
    # if it is not, PUBACK with 0x99 (Payload format invalid) and the message is not delivered
    sub = await v5_client(clients, broker.port, "sub")
    await sub.subscribe("pfi/bad", 1)
    pub = await v5_client(clients, broker.port, "pub")
    reason = await publish_reason(
        pub,
        "pfi/bad",
        b"\xff\xfe not utf-8",
        qos=1,
        properties=publish_properties(PayloadFormatIndicator=1),
    )
    assert reason == 0x99
    assert await nothing_in(sub.messages, 0.5)
    # the connection is still fine: a valid one goes through
    assert (
        await publish_reason(
            pub, "pfi/bad", b"ok", qos=1, properties=publish_properties(PayloadFormatIndicator=1)
        )
        == 0
    )
    assert (await sub.message()).payload == b"ok"


@pytest_twisted.ensureDeferred
async def test_request_response_properties_and_user_properties_forwarded(broker, clients):
    # Content Type [MQTT-3.3.2-20], Response Topic [MQTT-3.3.2-15], Correlation Data
    # (section 3.3.2.3.6) are forwarded unaltered; User Properties unaltered and in order
    # [MQTT-3.3.2-17], [MQTT-3.3.2-18]
    sub = await v5_client(clients, broker.port, "sub")
    await sub.subscribe("rr/t", 2)
    pub = await v5_client(clients, broker.port, "pub")
    user = [("z", "1"), ("a", "2"), ("z", "3"), ("ключ", "значение")]
    for qos in (0, 1, 2):
        await pub.publish(
            "rr/t",
            b"req",
            qos=qos,
            properties=publish_properties(
                ContentType="application/json; charset=utf-8",
                ResponseTopic="rr/reply/42",
                CorrelationData=b"\x00\x01corr\xff",
                UserProperty=user,
            ),
        )
        message = await sub.message()
        props = message.properties
        assert (message.payload, message.qos) == (b"req", qos)
        assert props.ContentType == "application/json; charset=utf-8"
        assert props.ResponseTopic == "rr/reply/42"
        assert props.CorrelationData == b"\x00\x01corr\xff"
        assert props.UserProperty == user
        assert getattr(props, "SubscriptionIdentifier", None) is None


@pytest_twisted.ensureDeferred
async def test_expired_message_is_not_delivered_to_returning_subscriber(broker, clients):
    # [MQTT-3.3.2-5] once the Message Expiry Interval has passed and the message has not yet
    # been delivered to a subscriber, the Server MUST delete its copy for that subscriber;
    # [MQTT-3.3.2-6] the one delivered later carries the remaining lifetime (lower than sent)
    sub = await v5_client(
        clients, broker.port, "offline", clean_start=True, properties=session_properties(300)
    )
    await sub.subscribe("exp/t", 1)
    sub.disconnect()
    await sleep(0.3)
    pub = await v5_client(clients, broker.port, "pub")
    await pub.publish(
        "exp/t", b"short", qos=1, properties=publish_properties(MessageExpiryInterval=1)
    )
    await pub.publish(
        "exp/t", b"long", qos=1, properties=publish_properties(MessageExpiryInterval=60)
    )
    await pub.publish("exp/t", b"forever", qos=1)
    await sleep(1.6)
    back = clients(broker.port, client_id="offline", protocol=V5)
    flags, _rc, _props = await back.connect(clean_start=False, properties=session_properties(300))
    assert flags.session_present
    messages = await back.messages_for(0.7)
    assert [m.payload for m in messages] == [b"long", b"forever"]
    remaining = messages[0].properties.MessageExpiryInterval
    assert 55 <= remaining < 60
    assert getattr(messages[1].properties, "MessageExpiryInterval", None) is None


@pytest_twisted.ensureDeferred
async def test_live_message_carries_expiry_interval(broker, clients):
    # [MQTT-3.3.2-6] a message sent at once carries (at most) the interval it was sent with
    sub = await v5_client(clients, broker.port, "sub")
    await sub.subscribe("exp/live", 0)
    pub = await v5_client(clients, broker.port, "pub")
    await pub.publish("exp/live", b"x", properties=publish_properties(MessageExpiryInterval=30))
    message = await sub.message()
    assert 29 <= message.properties.MessageExpiryInterval <= 30


@pytest_twisted.ensureDeferred
async def test_expired_retained_message_is_not_sent_to_new_subscriber(broker, clients):
    # [MQTT-3.3.2-5] a retained message past its expiry is no longer delivered; one still
    # alive is delivered with its remaining lifetime [MQTT-3.3.2-6]
    pub = await v5_client(clients, broker.port, "pub")
    await pub.publish(
        "ret/short",
        b"gone",
        qos=1,
        retain=True,
        properties=publish_properties(MessageExpiryInterval=1),
    )
    await pub.publish(
        "ret/long",
        b"kept",
        qos=1,
        retain=True,
        properties=publish_properties(MessageExpiryInterval=100),
    )
    await sleep(1.6)
    sub = await v5_client(clients, broker.port, "sub")
    await sub.subscribe("ret/+", 1)
    messages = await sub.messages_for(0.6)
    assert [(m.topic, m.payload, m.retain) for m in messages] == [("ret/long", b"kept", True)]
    assert 95 <= messages[0].properties.MessageExpiryInterval < 100


@pytest_twisted.ensureDeferred
async def test_overlapping_subscriptions_one_copy_with_both_identifiers(broker, clients):
    # [MQTT-3.3.4-3], [MQTT-3.3.4-4]: one copy carrying the identifiers of every matching
    # subscription that has one (order not significant); [MQTT-3.3.4-5]
    sub = await v5_client(clients, broker.port, "sub")
    assert codes(await sub.subscribe("sid/#", 1, properties=subscribe_properties(1))) == [1]
    assert codes(await sub.subscribe("sid/+", 1, properties=subscribe_properties(2))) == [1]
    pub = await v5_client(clients, broker.port, "pub")
    await pub.publish("sid/x", b"both", qos=1)
    messages = await sub.messages_for(0.6)
    assert [m.payload for m in messages] == [b"both"]
    assert sorted(messages[0].properties.SubscriptionIdentifier) == [1, 2]
    # only "sid/#" matches "sid/x/y": only its identifier
    await pub.publish("sid/x/y", b"one", qos=1)
    message = await sub.message()
    assert message.properties.SubscriptionIdentifier == [1]


@pytest_twisted.ensureDeferred
async def test_subscription_without_identifier_gets_none(broker, clients):
    # [MQTT-3.3.4-3] identifiers are sent only for subscriptions that have one
    plain = await v5_client(clients, broker.port, "plain")
    await plain.subscribe("sid2/t", 1)
    mixed = await v5_client(clients, broker.port, "mixed")
    await mixed.subscribe("sid2/t", 1, properties=subscribe_properties(7))
    await mixed.subscribe("sid2/#", 0)
    pub = await v5_client(clients, broker.port, "pub")
    await pub.publish("sid2/t", b"m", qos=1)
    message = await plain.message()
    assert getattr(message.properties, "SubscriptionIdentifier", None) is None
    messages = await mixed.messages_for(0.5)
    assert [(m.payload, m.qos) for m in messages] == [(b"m", 1)]
    assert messages[0].properties.SubscriptionIdentifier == [7]


@pytest_twisted.ensureDeferred
async def test_resubscribe_replaces_subscription_identifier(broker, clients):
    # [MQTT-3.8.4-3] a SUBSCRIBE with an existing filter replaces the subscription, including
    # its identifier (section 3.8.2.1.2)
    sub = await v5_client(clients, broker.port, "sub")
    await sub.subscribe("sid3/t", 1, properties=subscribe_properties(5))
    await sub.subscribe("sid3/t", 1, properties=subscribe_properties(9))
    pub = await v5_client(clients, broker.port, "pub")
    await pub.publish("sid3/t", b"m", qos=1)
    messages = await sub.messages_for(0.5)
    assert [m.properties.SubscriptionIdentifier for m in messages] == [[9]]


# -- reason codes on acknowledgements ----------------------------------------------------


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("qos", [1, 2])
async def test_puback_success_or_no_matching_subscribers(broker, clients, qos):
    # section 3.4.2.1 / 3.5.2.1: 0x00 Success, 0x10 No matching subscribers (Mosquitto 2.x
    # sends 0x10 too); paho reports the PUBACK (QoS 1) or PUBCOMP (QoS 2) reason code
    pub = await v5_client(clients, broker.port, "pub")
    expected = 0x10 if qos == 1 else 0x00  # QoS 2: the 0x10 is on PUBREC, PUBCOMP is 0x00
    assert await publish_reason(pub, "rc/nobody", b"x", qos=qos) == expected
    sub = await v5_client(clients, broker.port, "sub")
    await sub.subscribe("rc/somebody", 2)
    assert await publish_reason(pub, "rc/somebody", b"y", qos=qos) == 0x00
    assert (await sub.message()).payload == b"y"


@pytest_twisted.ensureDeferred
async def test_qos2_reason_codes_on_raw_client(broker, raw, clients):
    # PUBREC 0x10 with no subscriber, 0x00 with one (section 3.5.2.1); PUBREL answered by
    # PUBCOMP 0x00 [MQTT-4.3.3-11]; PUBREL for an unknown packet id: PUBCOMP 0x92
    # (Packet Identifier not found, section 3.7.2.1)
    client = raw(broker.port)
    await raw_v5_connect(client, "raw5")
    client.send(v5_bytes(Publish("q2rc/t", b"a", qos=2, packet_id=1)))
    assert await read_v5(client) == PubRec(1, 0x10)
    client.send(v5_bytes(PubRel(1)))
    assert await read_v5(client) == PubComp(1, 0x00)
    sub = await v5_client(clients, broker.port, "sub")
    await sub.subscribe("q2rc/t", 2)
    client.send(v5_bytes(Publish("q2rc/t", b"b", qos=2, packet_id=2)))
    assert await read_v5(client) == PubRec(2, 0x00)
    client.send(v5_bytes(PubRel(2)))
    assert await read_v5(client) == PubComp(2, 0x00)
    assert (await sub.message()).payload == b"b"
    client.send(v5_bytes(PubRel(77)))
    assert await read_v5(client) == PubComp(77, 0x92)


@pytest_twisted.ensureDeferred
async def test_publish_into_sys_is_not_authorized(broker, raw, clients):
    # clients cannot publish into $SYS: PUBACK / PUBREC 0x87 (Not authorized) and nobody gets
    # it; after a PUBREC >= 0x80 the packet id is free: the next PUBLISH with it is a new
    # application message [MQTT-4.3.3-9]
    watcher = await v5_client(clients, broker.port, "watcher")
    await watcher.subscribe("$SYS/test/#", 1)
    await watcher.subscribe("after/t", 1)
    pub = await v5_client(clients, broker.port, "pub")
    assert await publish_reason(pub, "$SYS/test/x", b"fake", qos=1) == 0x87
    client = raw(broker.port)
    await raw_v5_connect(client, "raw5")
    client.send(v5_bytes(Publish("$SYS/test/y", b"fake", qos=2, packet_id=5)))
    assert await read_v5(client) == PubRec(5, 0x87)
    client.send(v5_bytes(Publish("after/t", b"real", qos=2, packet_id=5)))
    assert await read_v5(client) == PubRec(5, 0x00)
    client.send(v5_bytes(PubRel(5)))
    assert await read_v5(client) == PubComp(5, 0x00)
    messages = await watcher.messages_for(0.6)
    assert [(m.topic, m.payload) for m in messages] == [("after/t", b"real")]


@pytest_twisted.ensureDeferred
async def test_suback_reason_codes(start_broker, raw):
    # section 3.9.3: one code per filter in request order [MQTT-3.9.3-1]: the granted QoS
    # capped by the broker's maximum (section 3.8.4: the Server MAY grant a lower QoS),
    # 0x8F Topic Filter invalid for "a/#/b" [MQTT-4.7.1-1] (paho refuses to send it: raw)
    broker = start_broker(max_qos=1)
    client = raw(broker.port)
    await raw_v5_connect(client, "raw5")
    client.send(
        v5_bytes(
            Subscribe(
                9,
                [
                    SubscriptionRequest(f, q)
                    for f, q in (("s/0", 0), ("s/1", 1), ("s/2", 2), ("a/#/b", 1), ("s/+", 2))
                ],
            )
        )
    )
    suback = await read_v5(client)
    assert (suback.packet_id, suback.reason_codes) == (9, [0, 1, 1, 0x8F, 1])


@pytest_twisted.ensureDeferred
async def test_suback_grants_qos_2(broker, clients):
    sub = await v5_client(clients, broker.port, "sub")
    got = await sub.subscribe(many(("g/0", 0), ("g/1", 1), ("g/2", 2)))
    assert codes(got) == [0, 1, 2]


@pytest_twisted.ensureDeferred
async def test_unsuback_reason_codes(broker, clients):
    # [MQTT-3.11.3-1]/section 3.11.3: 0x00 Success, 0x11 No subscription existed
    sub = await v5_client(clients, broker.port, "sub")
    await sub.subscribe("u/a", 1)
    assert codes(await sub.unsubscribe(["u/a", "u/never"])) == [0x00, 0x11]
    assert codes(await sub.unsubscribe("u/a")) == [0x11]
    pub = await v5_client(clients, broker.port, "pub")
    assert await publish_reason(pub, "u/a", b"x", qos=1) == 0x10  # really gone


@pytest_twisted.ensureDeferred
async def test_raw_suback_and_puback_bytes(broker, raw):
    # the reason codes as bytes on the wire: SUBACK with an empty property length, PUBACK
    # with its reason code (section 3.4.2: omitted when 0x00 and there are no properties)
    client = raw(broker.port)
    await raw_v5_connect(client, "raw5")
    client.send(
        v5_bytes(Subscribe(3, [SubscriptionRequest("w/+", 2), SubscriptionRequest("w/#/x", 0)]))
    )
    suback = await read_v5(client)
    assert (suback.packet_id, suback.reason_codes) == (3, [2, 0x8F])
    client.send(v5_bytes(Publish("nobody/here", b"x", qos=1, packet_id=4)))
    assert await read_v5(client) == PubAck(4, 0x10)
    client.send(v5_bytes(Publish("w/1", b"x", qos=1, packet_id=5)))
    got = [await read_v5(client), await read_v5(client)]
    puback = next(p for p in got if isinstance(p, PubAck))
    publish = next(p for p in got if isinstance(p, Publish))
    assert puback == PubAck(5, 0x00)
    assert (publish.topic, publish.payload, publish.qos) == ("w/1", b"x", 1)
    assert Property.SUBSCRIPTION_IDENTIFIER not in publish.properties


@pytest_twisted.ensureDeferred
async def test_qos2_payload_format_invalid_pubrec_0x99_frees_packet_id(broker, raw, clients):
    # section 3.3.2.3.2: PUBREC 0x99 (Payload format invalid), the message is not delivered;
    # as the PUBREC is >= 0x80 the packet id may be reused for a new message [MQTT-4.3.3-9]
    sub = await v5_client(clients, broker.port, "sub")
    await sub.subscribe("pfi2/t", 2)
    client = raw(broker.port)
    await raw_v5_connect(client, "raw5")
    utf8 = {Property.PAYLOAD_FORMAT_INDICATOR: 1}
    client.send(v5_bytes(Publish("pfi2/t", b"\xc3\x28", qos=2, packet_id=8, properties=utf8)))
    assert await read_v5(client) == PubRec(8, 0x99)
    client.send(v5_bytes(Publish("pfi2/t", "é".encode(), qos=2, packet_id=8, properties=utf8)))
    assert await read_v5(client) == PubRec(8, 0x00)
    client.send(v5_bytes(PubRel(8)))
    assert await read_v5(client) == PubComp(8, 0x00)
    messages = await sub.messages_for(0.5)
    assert [(m.payload, m.properties.PayloadFormatIndicator) for m in messages] == [
        ("é".encode(), 1)
    ]
