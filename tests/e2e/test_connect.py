"""Connecting: CONNECT / CONNACK, refused connections, client id takeover, keep alive.

Normative statements are those of OASIS MQTT 3.1.1 unless said otherwise; MQTT 3.1
(protocol name "MQIsdp", level 3) is covered where it differs.
"""

import time

import paho.mqtt.client as mqtt
import pytest
import pytest_twisted

from .mqttclient import connect_bytes, get, no_reconnect, read_whole, sleep

CONNACK_ACCEPTED = b"\x20\x02\x00\x00"  # CONNACK, session present 0, return code 0
CONNACK_BAD_PROTOCOL = b"\x20\x02\x00\x01"  # 0x01 unacceptable protocol version
CONNACK_ID_REJECTED = b"\x20\x02\x00\x02"  # 0x02 identifier rejected


async def round_trip(clients, port: int, topic: str = "check/round-trip", **kwargs) -> None:
    """A fresh paho client subscribes to ``topic`` and gets its own QoS 1 message back."""
    client = clients(port, **kwargs)
    await client.connect()
    assert await client.subscribe(topic, qos=1) == [1]
    await client.publish(topic, b"ping", qos=1)
    message = await client.message()
    assert (message.topic, message.payload) == (topic, b"ping")


# -- accepted -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_new_session_is_accepted_without_session_present(broker, clients):
    """CONNACK return code 0 and session present 0 for a new session [MQTT-3.2.2-3]."""
    client = clients(broker.port, client_id="newcomer", clean_session=False)
    flags, rc, _props = await client.connect()
    assert rc == 0
    assert flags.session_present is False


@pytest_twisted.ensureDeferred
async def test_connack_bytes_for_accepted_connection(broker, raw):
    """The accepted CONNACK is exactly 20 02 00 00 [MQTT-3.2.2-1], [MQTT-3.2.2-3]."""
    sock = raw(broker.port)
    sock.send(connect_bytes("raw-accepted"))
    assert await read_whole(sock) == CONNACK_ACCEPTED


@pytest_twisted.ensureDeferred
async def test_mqtt31_client_connects_and_round_trips(broker, clients):
    """A protocol level 3 ("MQIsdp") client is accepted and can publish and subscribe."""
    client = clients(broker.port, client_id="old-client", protocol=mqtt.MQTTv31)
    _flags, rc, _props = await client.connect()
    assert rc == 0
    assert await client.subscribe("legacy/topic", qos=2) == [2]
    await client.publish("legacy/topic", b"from 3.1", qos=2)
    message = await client.message()
    assert (message.topic, message.payload, message.qos) == ("legacy/topic", b"from 3.1", 2)


@pytest_twisted.ensureDeferred
async def test_mqtt31_client_id_of_23_characters_is_accepted(broker, raw):
    """MQTT 3.1 allows client ids of 1 to 23 characters (3.1 spec, CONNECT payload)."""
    sock = raw(broker.port)
    sock.send(connect_bytes("x" * 23, protocol_level=3))
    assert await read_whole(sock) == CONNACK_ACCEPTED


@pytest_twisted.ensureDeferred
async def test_empty_client_id_with_clean_session_gets_an_assigned_id(broker, clients):
    """An empty client id with clean session 1 is given a unique id and works [MQTT-3.1.3-6]."""
    client = clients(broker.port, client_id="")
    _flags, rc, _props = await client.connect()
    assert rc == 0
    assigned = [cid for cid in broker.broker.sessions if cid.startswith("auto-")]
    assert len(assigned) == 1
    assert await client.subscribe("anonymous/+", qos=1) == [1]
    await client.publish("anonymous/hello", b"hi", qos=1)
    message = await client.message()
    assert (message.topic, message.payload) == ("anonymous/hello", b"hi")


@pytest_twisted.ensureDeferred
async def test_two_empty_client_ids_get_different_ids(broker, clients):
    """Assigned client ids are unique to the server [MQTT-3.1.3-6]: two such clients coexist."""
    first = clients(broker.port, client_id="")
    second = clients(broker.port, client_id="")
    await first.connect()
    await second.connect()
    assert await first.subscribe("anon/first", qos=1) == [1]
    await second.publish("anon/first", b"to first", qos=1)
    assert (await first.message()).payload == b"to first"
    assert first.disconnects.empty() and second.disconnects.empty()


@pytest_twisted.ensureDeferred
async def test_username_and_password_are_accepted(broker, clients):
    """A CONNECT with user name and password flags is parsed [MQTT-3.1.2-18..21]; no auth here."""
    client = clients(broker.port, client_id="with-credentials")
    client.client.username_pw_set("alice", "s3cret")
    _flags, rc, _props = await client.connect()
    assert rc == 0
    assert await client.subscribe("creds/ok", qos=1) == [1]
    await client.publish("creds/ok", b"yes", qos=1)
    assert (await client.message()).payload == b"yes"


@pytest_twisted.ensureDeferred
async def test_username_and_password_raw_mqtt31(broker, raw):
    """The same with a protocol level 3 CONNECT built byte for byte."""
    sock = raw(broker.port)
    sock.send(connect_bytes("creds31", protocol_level=3, username="bob", password=b"\x00\xffpw"))
    assert await read_whole(sock) == CONNACK_ACCEPTED


# -- refused ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "connect",
    [
        # CONNECT, remaining length 14: "MQTT", level 6, clean session, keep alive 60, id "v6"
        pytest.param(b"\x10\x0e\x00\x04MQTT\x06\x02\x00\x3c\x00\x02v6", id="MQTT-level-6"),
        # protocol name "MQTT" with the 3.1 level 3
        pytest.param(b"\x10\x0e\x00\x04MQTT\x03\x02\x00\x3c\x00\x02v3", id="MQTT-level-3"),
        # protocol name "MQIsdp" (3.1) with the 3.1.1 level 4; remaining length 16
        pytest.param(b"\x10\x10\x00\x06MQIsdp\x04\x02\x00\x3c\x00\x02v4", id="MQIsdp-level-4"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_unacceptable_protocol_version(broker, raw, connect):
    """Unsupported protocol level: CONNACK 0x01, then the connection is closed [MQTT-3.1.2-2]."""
    sock = raw(broker.port)
    sock.send(connect)
    assert await read_whole(sock) == CONNACK_BAD_PROTOCOL
    assert await sock.closed()


@pytest.mark.parametrize(
    "config, connect",
    [
        # empty client id with clean session 0 [MQTT-3.1.3-8]
        pytest.param({}, connect_bytes("", clean_session=False), id="empty-id-clean-0"),
        # MQTT 3.1: client ids are 1 to 23 characters
        pytest.param({}, connect_bytes("y" * 24, protocol_level=3), id="mqtt31-24-chars"),
        pytest.param({}, connect_bytes("", protocol_level=3), id="mqtt31-empty-id"),
        # allow_zero_length_clientid off: an empty id is refused even with clean session 1
        # [MQTT-3.1.3-9]
        pytest.param(
            {"allow_zero_length_clientid": False}, connect_bytes(""), id="empty-id-not-allowed"
        ),
        # keep alive above max_keepalive: refused with 0x02, as Mosquitto 2.x does
        pytest.param(
            {"max_keepalive": 10}, connect_bytes("sleepy", keep_alive=11), id="keepalive-above-max"
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_identifier_rejected(start_broker, raw, config, connect):
    """Refused CONNACK 0x02 with session present 0, then the connection is closed [MQTT-3.1.3-9],
    [MQTT-3.2.2-4], [MQTT-3.2.2-5]."""
    running = start_broker(**config)
    sock = raw(running.port)
    sock.send(connect)
    assert await read_whole(sock) == CONNACK_ID_REJECTED
    assert await sock.closed()
    assert running.broker.sessions == {}


@pytest.mark.parametrize(
    "config, connect",
    [
        # will topic "w/#" (flags 0x06: will, clean session) is not a valid topic name
        # [MQTT-3.3.2-2]; Mosquitto closes without CONNACK
        pytest.param(
            {},
            b"\x10\x15\x00\x04MQTT\x04\x06\x00\x3c\x00\x01c\x00\x03w/#\x00\x01x",
            id="will-topic-wildcard",
        ),
        # will QoS 2 (flags 0x16) with max_qos 1: 3.x has no return code for it; Mosquitto 2.x
        # closes without CONNACK
        pytest.param(
            {"max_qos": 1},
            b"\x10\x13\x00\x04MQTT\x04\x16\x00\x3c\x00\x01c\x00\x01w\x00\x01x",
            id="will-QoS-above-max_qos",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_unacceptable_will_closes_without_connack(start_broker, raw, config, connect):
    """No 3.x return code fits: close without CONNACK [MQTT-3.2.2-6]; no session is made."""
    running = start_broker(**config)
    sock = raw(running.port)
    sock.send(connect)
    assert await sock.read(4, timeout=2.0) == b""
    assert await sock.closed(timeout=0.5)
    assert running.broker.sessions == {}


@pytest_twisted.ensureDeferred
async def test_keepalive_at_max_keepalive_is_accepted(start_broker, raw):
    """A keep alive equal to max_keepalive is fine (only larger ones are refused)."""
    running = start_broker(max_keepalive=10)
    sock = raw(running.port)
    sock.send(connect_bytes("awake", keep_alive=10))
    assert await read_whole(sock) == CONNACK_ACCEPTED


@pytest_twisted.ensureDeferred
async def test_paho_sees_identifier_rejected_for_long_mqtt31_id(broker, clients):
    """What a paho user sees for a 24-character 3.1 client id: a refused connection."""
    client = clients(broker.port, client_id="z" * 24, protocol=mqtt.MQTTv31)
    no_reconnect(client)
    _flags, rc, _props = await client.connect(expect_success=False)
    assert rc.is_failure
    assert rc == "Client identifier not valid"  # paho's name for the 3.x return code 2


@pytest_twisted.ensureDeferred
async def test_paho_sees_refusal_for_keepalive_above_max(start_broker, clients):
    running = start_broker(max_keepalive=5)
    client = clients(running.port, client_id="too-patient")
    no_reconnect(client)
    _flags, rc, _props = await client.connect(keepalive=30, expect_success=False)
    assert rc == "Client identifier not valid"


@pytest_twisted.ensureDeferred
async def test_second_connect_closes_the_connection(broker, raw):
    """A second CONNECT on one network connection is a protocol violation [MQTT-3.1.0-2]."""
    sock = raw(broker.port)
    sock.send(connect_bytes("twice"))
    assert await read_whole(sock) == CONNACK_ACCEPTED
    sock.send(connect_bytes("twice"))
    assert await sock.closed()


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(b"\xc0\x00", id="PINGREQ"),
        # PUBLISH QoS 0, topic "a", payload "x"
        pytest.param(b"\x30\x04\x00\x01ax", id="PUBLISH"),
        # SUBSCRIBE packet id 1, filter "a", QoS 0
        pytest.param(b"\x82\x06\x00\x01\x00\x01a\x00", id="SUBSCRIBE"),
        pytest.param(b"\xe0\x00", id="DISCONNECT"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_first_packet_must_be_connect(broker, raw, clients, first):
    """Anything but CONNECT first closes the connection, unanswered [MQTT-3.1.0-1]."""
    sock = raw(broker.port)
    sock.send(first)
    assert await sock.closed()
    await round_trip(clients, broker.port)


@pytest_twisted.ensureDeferred
async def test_connection_without_connect_times_out(start_broker, raw):
    """A connection that sends nothing is closed after connect_timeout (Mosquitto does the same)."""
    running = start_broker(connect_timeout=0.5)
    sock = raw(running.port)
    started = time.monotonic()
    assert await sock.closed(timeout=3.0)
    assert time.monotonic() - started >= 0.4


@pytest_twisted.ensureDeferred
async def test_partial_connect_times_out(start_broker, raw):
    """Half a CONNECT and then silence is no CONNECT either: closed after connect_timeout."""
    running = start_broker(connect_timeout=0.5)
    sock = raw(running.port)
    sock.send(connect_bytes("slow-loris")[:5])
    assert await sock.closed(timeout=3.0)


@pytest_twisted.ensureDeferred
async def test_connect_in_time_cancels_the_connect_timeout(start_broker, raw):
    running = start_broker(connect_timeout=0.5)
    sock = raw(running.port)
    sock.send(connect_bytes("prompt"))
    assert await read_whole(sock) == CONNACK_ACCEPTED
    assert not await sock.closed(timeout=1.0)


# -- client id takeover ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_same_client_id_takes_over_the_connection(broker, clients):
    """A second connection with a client id in use closes the first one [MQTT-3.1.4-2]."""
    first = clients(broker.port, client_id="device-7")
    no_reconnect(first)
    await first.connect()
    second = clients(broker.port, client_id="device-7")
    flags, rc, _props = await second.connect()
    assert rc == 0
    await first_disconnected(first)
    assert await second.subscribe("device/7/cmd", qos=1) == [1]
    await second.publish("device/7/cmd", b"reboot", qos=1)
    message = await second.message()
    assert (message.topic, message.payload) == ("device/7/cmd", b"reboot")
    assert second.disconnects.empty()


@pytest_twisted.ensureDeferred
async def test_takeover_works_across_protocol_levels(broker, clients):
    """A 3.1.1 client takes over the client id of a 3.1 client [MQTT-3.1.4-2]."""
    first = clients(broker.port, client_id="mixed", protocol=mqtt.MQTTv31)
    no_reconnect(first)
    await first.connect()
    second = clients(broker.port, client_id="mixed")
    await second.connect()
    await first_disconnected(first)
    assert len(broker.broker.sessions) == 1


async def first_disconnected(client) -> None:
    """Wait for paho's on_disconnect of a client the broker closed."""
    rc = await get(client.disconnects)
    assert rc.is_failure  # closed by the broker, not by the client's own DISCONNECT


# -- keep alive -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_silent_client_is_disconnected_after_one_and_a_half_keepalives(broker, raw):
    """Nothing received for 1.5 x keep alive: the server closes the connection [MQTT-3.1.2-24]."""
    sock = raw(broker.port)
    sock.send(connect_bytes("quiet", keep_alive=1))
    assert await read_whole(sock) == CONNACK_ACCEPTED
    started = time.monotonic()
    assert await sock.closed(timeout=3.0)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 2.5


@pytest_twisted.ensureDeferred
async def test_pingreq_gets_pingresp(broker, raw):
    """PINGREQ (c0 00) is answered with PINGRESP (d0 00) [MQTT-3.12.4-1]."""
    sock = raw(broker.port)
    sock.send(connect_bytes("pinger", keep_alive=1))
    assert await read_whole(sock) == CONNACK_ACCEPTED
    for _ in range(3):
        await sleep(0.6)
        sock.send(b"\xc0\x00")  # PINGREQ
        assert await read_whole(sock, timeout=2.0) == b"\xd0\x00"  # PINGRESP
    # 1.8 s after CONNACK, past 1.5 x keep alive, the pings kept the connection open.
    assert not await sock.closed(timeout=0.3)


@pytest_twisted.ensureDeferred
async def test_keepalive_zero_is_never_timed_out(broker, raw):
    """Keep alive 0 turns the mechanism off (spec 3.1.2.10, non-normative)."""
    sock = raw(broker.port)
    sock.send(connect_bytes("forever", keep_alive=0))
    assert await read_whole(sock) == CONNACK_ACCEPTED
    assert not await sock.closed(timeout=2.0)


@pytest_twisted.ensureDeferred
async def test_paho_client_pinging_stays_connected(broker, clients):
    """A paho client with keepalive=1 sends PINGREQs and is not disconnected [MQTT-3.1.2-23]."""
    client = clients(broker.port, client_id="heartbeat")
    no_reconnect(client)
    await client.connect(keepalive=1)
    await sleep(3.0)
    assert client.disconnects.empty()
    assert await client.subscribe("still/here", qos=1) == [1]
    await client.publish("still/here", b"alive", qos=1)
    assert (await client.message()).payload == b"alive"
