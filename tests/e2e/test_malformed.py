"""Malformed and illegal packets: the offender's connection is closed [MQTT-4.8.0-1], its will is
published [MQTT-3.1.2-8], and every other client carries on.

Packets are written by hand, byte for byte, with the broken part commented. OASIS MQTT 3.1.1.
"""

import pytest
import pytest_twisted

from mqtt_twisted.packets import Will

from .mqttclient import connect_bytes, get, no_reconnect, nothing_in, read_whole

CONNACK_ACCEPTED = b"\x20\x02\x00\x00"

MALFORMED = [
    # -- fixed header -------------------------------------------------------------------
    # SUBSCRIBE with flags 0000 instead of 0010 [MQTT-3.8.1-1]
    pytest.param(b"\x80\x06\x00\x01\x00\x01a\x00", id="SUBSCRIBE-flags-0"),
    # UNSUBSCRIBE with flags 0000 instead of 0010 [MQTT-3.10.1-1]
    pytest.param(b"\xa0\x05\x00\x01\x00\x01a", id="UNSUBSCRIBE-flags-0"),
    # PUBREL with flags 0000 instead of 0010 [MQTT-3.6.1-1]
    pytest.param(b"\x60\x02\x00\x01", id="PUBREL-flags-0"),
    # PINGREQ with flags 0001 [MQTT-2.2.2-2]
    pytest.param(b"\xc1\x00", id="PINGREQ-flags-1"),
    # DISCONNECT with flags 0001 [MQTT-3.14.1-1]: not a clean DISCONNECT, so the will goes out
    pytest.param(b"\xe1\x00", id="DISCONNECT-flags-1"),
    # remaining length with 5 bytes (ff ff ff ff 7f); at most 4 are allowed (spec 2.2.3)
    pytest.param(b"\x30\xff\xff\xff\xff\x7f", id="remaining-length-5-bytes"),
    # packet type 0 and 15 are reserved (spec 2.2.1)
    pytest.param(b"\x00\x00", id="reserved-type-0"),
    pytest.param(b"\xf0\x00", id="reserved-type-15"),
    # CONNACK is server-to-client only
    pytest.param(b"\x20\x02\x00\x00", id="CONNACK-from-client"),
    # PINGREQ with a body: its remaining length must be 0 (spec 3.12.1)
    pytest.param(b"\xc0\x01\x00", id="PINGREQ-with-body"),
    # -- PUBLISH --------------------------------------------------------------------------
    # topic "\xc3\x28": invalid UTF-8 [MQTT-1.5.3-1]
    pytest.param(b"\x30\x05\x00\x02\xc3\x28x", id="topic-invalid-utf8"),
    # topic "\xed\xa0\x80": an encoded UTF-16 surrogate (U+D800) [MQTT-1.5.3-1]
    pytest.param(b"\x30\x06\x00\x03\xed\xa0\x80x", id="topic-surrogate"),
    # topic "a\x00": U+0000 [MQTT-1.5.3-2]
    pytest.param(b"\x30\x05\x00\x02a\x00x", id="topic-U+0000"),
    # topic "a/+": wildcard in a topic name [MQTT-3.3.2-2]
    pytest.param(b"\x30\x06\x00\x03a/+x", id="topic-wildcard-plus"),
    # topic "a/#" [MQTT-3.3.2-2]
    pytest.param(b"\x30\x06\x00\x03a/#x", id="topic-wildcard-hash"),
    # empty topic name [MQTT-4.7.3-1]
    pytest.param(b"\x30\x03\x00\x00x", id="topic-empty"),
    # QoS bits 11 [MQTT-3.3.1-4]
    pytest.param(b"\x36\x06\x00\x01a\x00\x01x", id="PUBLISH-QoS-3"),
    # QoS 0 with DUP 1 [MQTT-3.3.1-2]
    pytest.param(b"\x38\x04\x00\x01ax", id="PUBLISH-QoS-0-DUP"),
    # QoS 1 with packet id 0000 [MQTT-2.3.1-1]
    pytest.param(b"\x32\x06\x00\x01a\x00\x00x", id="PUBLISH-packet-id-0"),
    # topic length 0x0010 but only 2 bytes follow
    pytest.param(b"\x30\x04\x00\x10ab", id="PUBLISH-topic-overruns"),
    # -- SUBSCRIBE / UNSUBSCRIBE ----------------------------------------------------------
    # SUBSCRIBE packet id 0000 [MQTT-2.3.1-1]
    pytest.param(b"\x82\x06\x00\x00\x00\x01a\x00", id="SUBSCRIBE-packet-id-0"),
    # SUBSCRIBE without any topic filter [MQTT-3.8.3-3]
    pytest.param(b"\x82\x02\x00\x01", id="SUBSCRIBE-no-filter"),
    # requested QoS 3 [MQTT-3-8.3-4]
    pytest.param(b"\x82\x06\x00\x01\x00\x01a\x03", id="SUBSCRIBE-QoS-3"),
    # reserved bits of the requested QoS byte set [MQTT-3-8.3-4]
    pytest.param(b"\x82\x06\x00\x01\x00\x01a\x81", id="SUBSCRIBE-reserved-bits"),
    # topic filter with invalid UTF-8 [MQTT-1.5.3-1]
    pytest.param(b"\x82\x07\x00\x01\x00\x02\xc3\x28\x00", id="SUBSCRIBE-invalid-utf8"),
    # UNSUBSCRIBE without any topic filter [MQTT-3.10.3-2]
    pytest.param(b"\xa2\x02\x00\x01", id="UNSUBSCRIBE-no-filter"),
]


async def healthy_round_trip(clients, port: int) -> None:
    """Another client is unaffected: it subscribes and gets its own QoS 1 message."""
    client = clients(port, client_id="healthy-after")
    await client.connect()
    assert await client.subscribe("healthy/check", qos=1) == [1]
    await client.publish("healthy/check", b"still fine", qos=1)
    message = await client.message()
    assert (message.topic, message.payload) == ("healthy/check", b"still fine")


async def bystander(clients, port: int):
    """A client connected throughout, watching the wills."""
    client = clients(port, client_id="bystander")
    await client.connect()
    assert await client.subscribe("wills/#", qos=1) == [1]
    return client


@pytest.mark.parametrize("bad", MALFORMED)
@pytest_twisted.ensureDeferred
async def test_malformed_packet_closes_only_the_offender(broker, clients, raw, bad):
    """The broken packet closes the connection [MQTT-4.8.0-1]; the will is published
    [MQTT-3.1.2-8]; a bystander stays connected and a new client works."""
    watch = await bystander(clients, broker.port)
    sock = raw(broker.port)
    sock.send(connect_bytes("offender", will=Will("wills/offender", b"misbehaved", 1)))
    assert await read_whole(sock) == CONNACK_ACCEPTED
    sock.send(bad)
    assert await sock.closed()
    will = await watch.message()
    assert (will.topic, will.payload, will.qos) == ("wills/offender", b"misbehaved", 1)
    assert "offender" not in broker.broker.sessions
    assert watch.disconnects.empty()
    await healthy_round_trip(clients, broker.port)


@pytest_twisted.ensureDeferred
async def test_malformed_packet_after_valid_ones_in_the_same_segment(broker, clients, raw):
    """Valid packets before the broken one in the same read are still handled; then it closes."""
    watch = await bystander(clients, broker.port)
    sock = raw(broker.port)
    sock.send(
        connect_bytes("mixed-bag", will=Will("wills/mixed-bag", b"bye", 1))
        + b"\x30\x0b\x00\x07wills/aok"  # valid PUBLISH QoS 0 to "wills/a", payload "ok"
        + b"\x36\x06\x00\x01a\x00\x01x"  # QoS 3 PUBLISH [MQTT-3.3.1-4]
    )
    assert await read_whole(sock) == CONNACK_ACCEPTED
    assert await sock.closed()
    first = await watch.message()
    second = await watch.message()
    assert [(m.topic, m.payload) for m in (first, second)] == [
        ("wills/a", b"ok"),
        ("wills/mixed-bag", b"bye"),
    ]


@pytest.mark.parametrize(
    "bad_connect",
    [
        # CONNECT flags 0x03: reserved bit 0 set [MQTT-3.1.2-3]
        pytest.param(b"\x10\x0d\x00\x04MQTT\x04\x03\x00\x3c\x00\x01c", id="reserved-flag"),
        # will QoS 3 (flags 0x1e) [MQTT-3.1.2-14]
        pytest.param(
            b"\x10\x13\x00\x04MQTT\x04\x1e\x00\x3c\x00\x01c\x00\x01w\x00\x01x", id="will-QoS-3"
        ),
        # password flag without user name flag (flags 0x42) [MQTT-3.1.2-22]
        pytest.param(b"\x10\x10\x00\x04MQTT\x04\x42\x00\x3c\x00\x01c\x00\x01p", id="password-only"),
        # client id length 0x0009 but only one byte follows
        pytest.param(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x09c", id="truncated-client-id"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_connect_is_closed_without_connack(broker, clients, raw, bad_connect):
    """A malformed CONNECT closes the connection [MQTT-4.8.0-1]; no session, no CONNACK."""
    sock = raw(broker.port)
    sock.send(bad_connect)
    assert await sock.read(4, timeout=2.0) == b""  # nothing sent back ...
    assert await sock.closed(timeout=0.5)  # ... and closed (not merely silent)
    assert broker.broker.sessions == {}
    await healthy_round_trip(clients, broker.port)


@pytest_twisted.ensureDeferred
async def test_packet_larger_than_max_packet_size_closes_the_connection(start_broker, clients, raw):
    """max_packet_size (Mosquitto's option): a 2003-byte PUBLISH to a broker allowing 1000 closes
    the sender's connection, with its will; other clients are unaffected."""
    running = start_broker(max_packet_size=1000)
    watch = await bystander(clients, running.port)
    sock = raw(running.port)
    sock.send(connect_bytes("big-mouth", will=Will("wills/big-mouth", b"too much", 1)))
    assert await read_whole(sock) == CONNACK_ACCEPTED
    # PUBLISH QoS 0, remaining length 2000 = d0 0f, topic "t", 1997 payload bytes
    sock.send(b"\x30\xd0\x0f\x00\x01t" + b"x" * 1997)
    assert await sock.closed()
    will = await watch.message()
    assert (will.topic, will.payload) == ("wills/big-mouth", b"too much")
    await healthy_round_trip(clients, running.port)


@pytest_twisted.ensureDeferred
async def test_packet_of_exactly_max_packet_size_is_accepted(start_broker, clients, raw):
    """The limit is inclusive: a 1000-byte PUBLISH passes a 1000-byte max_packet_size."""
    running = start_broker(max_packet_size=1000)
    watch = await bystander(clients, running.port)
    sock = raw(running.port)
    sock.send(connect_bytes("just-fits"))
    assert await read_whole(sock) == CONNACK_ACCEPTED
    # PUBLISH QoS 0, remaining length 997 = e5 07, topic "wills/t" (9 bytes), 988 payload bytes:
    # 1 + 2 + 997 = 1000 bytes in all
    sock.send(b"\x30\xe5\x07\x00\x07wills/t" + b"y" * 988)
    message = await watch.message()
    assert (message.topic, len(message.payload)) == ("wills/t", 988)
    assert not await sock.closed(timeout=0.3)


@pytest_twisted.ensureDeferred
async def test_paho_publishing_too_large_a_message_is_disconnected(start_broker, clients):
    """What a paho user sees for a too-large PUBLISH: the connection is lost."""
    running = start_broker(max_packet_size=1000)
    big = clients(running.port, client_id="paho-big")
    no_reconnect(big)
    await big.connect()
    big.client.publish("big/topic", b"z" * 2000, qos=0)
    assert (await get(big.disconnects)).is_failure
    await healthy_round_trip(clients, running.port)


@pytest_twisted.ensureDeferred
async def test_garbage_before_connect_is_closed_without_will(broker, clients, raw):
    """Bytes that are not a packet at all, before CONNECT: closed [MQTT-3.1.0-1], no will."""
    watch = await bystander(clients, broker.port)
    sock = raw(broker.port)
    sock.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await sock.closed()
    assert await nothing_in(watch.messages, 0.3)
    await healthy_round_trip(clients, broker.port)
