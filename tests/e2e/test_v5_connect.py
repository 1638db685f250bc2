"""MQTT 5.0 CONNECT and CONNACK properties, end to end with paho's MQTT 5 client and raw sockets.

OASIS MQTT 5.0: 3.1.2.11 (CONNECT properties), 3.2.2.3 (CONNACK properties).
"""

import paho.mqtt.client as mqtt
import pytest
import pytest_twisted

from mqtt_twisted.packets import Connect, Disconnect, PacketType, Property, ReasonCode

from .mqttclient import (
    RawClient,
    paho_props,
    raw_v5_connect,
    read_v5,
    reason_int,
    v5_bytes,
    v5_connect_bytes,
)

V5 = mqtt.MQTTv5


async def v5_client(clients, port: int, client_id: str = "v5", **connect):
    """A paho MQTT 5 client, connected; returns (client, flags, reason code, properties)."""
    client = clients(port, client_id=client_id, protocol=V5)
    flags, rc, props = await client.connect(**connect)
    return client, flags, rc, props


async def refused_connack(sock: RawClient, client_id: str, **kwargs):
    """Send a v5 CONNECT and return the CONNACK (whatever its reason code)."""
    sock.send(v5_connect_bytes(client_id, **kwargs))
    connack = await read_v5(sock)
    assert connack is not None and connack.type == PacketType.CONNACK, connack
    return connack


# -- CONNECT properties ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_request_response_information_gets_response_information(start_broker, clients):
    """Request Response Information 1: CONNACK carries Response Information, here
    PREFIX/CLIENT-ID (3.1.2.11.7, 3.2.2.3.15)."""
    running = start_broker(response_information="resp")
    _c, _flags, _rc, props = await v5_client(
        clients,
        running.port,
        "asker",
        properties=paho_props("CONNECT", RequestResponseInformation=1),
    )
    assert props.ResponseInformation == "resp/asker"


@pytest_twisted.ensureDeferred
async def test_no_response_information_unless_requested(start_broker, clients):
    """Request Response Information absent (0): no Response Information [MQTT-3.1.2-28]."""
    running = start_broker(response_information="resp")
    _c, _flags, _rc, props = await v5_client(clients, running.port, "quiet")
    assert not hasattr(props, "ResponseInformation")


@pytest_twisted.ensureDeferred
async def test_no_response_information_when_broker_has_none(broker, clients):
    """The broker offers none (no response_information option): none sent even when asked."""
    _c, _flags, _rc, props = await v5_client(
        clients,
        broker.port,
        "asker",
        properties=paho_props("CONNECT", RequestResponseInformation=1),
    )
    assert not hasattr(props, "ResponseInformation")


@pytest_twisted.ensureDeferred
async def test_user_properties_on_connect_are_accepted(broker, clients):
    """User Properties on CONNECT are allowed (3.1.2.11.8): the connection is accepted."""
    props = paho_props("CONNECT")
    props.UserProperty = ("site", "lab")
    props.UserProperty = ("site", "lab")  # the same name twice is allowed
    _c, flags, rc, _props = await v5_client(clients, broker.port, "user-props", properties=props)
    assert reason_int(rc) == 0
    assert flags.session_present is False


@pytest_twisted.ensureDeferred
async def test_authentication_method_is_refused(broker, clients):
    """The broker supports no enhanced authentication: a CONNECT with an Authentication
    Method gets CONNACK 0x8C Bad authentication method (3.1.2.11.9, 4.12)."""
    client = clients(broker.port, client_id="kerberos", protocol=V5)
    _flags, rc, _props = await client.connect(
        expect_success=False, properties=paho_props("CONNECT", AuthenticationMethod="GS2-KRB5")
    )
    assert reason_int(rc) == ReasonCode.BAD_AUTHENTICATION_METHOD
    assert "kerberos" not in broker.broker.sessions


@pytest_twisted.ensureDeferred
async def test_refused_connack_has_reason_string_when_problem_information_allowed(broker, raw):
    """A refusing CONNACK explains itself with a Reason String (3.2.2.3.9) when the client
    allows problem information (the default)."""
    sock = raw(broker.port)
    connack = await refused_connack(
        sock, "auth", properties={Property.AUTHENTICATION_METHOD: "SCRAM-SHA-1"}
    )
    assert connack.return_code == ReasonCode.BAD_AUTHENTICATION_METHOD
    assert connack.session_present is False  # [MQTT-3.2.2-6]
    assert "SCRAM-SHA-1" in connack.properties[Property.REASON_STRING]
    assert await sock.closed()  # [MQTT-3.2.2-7]


@pytest_twisted.ensureDeferred
async def test_refused_connack_has_no_reason_string_without_problem_information(broker, raw):
    """Request Problem Information 0: no Reason String, on a refusing CONNACK either
    (3.1.2.11.7, [MQTT-3.1.2-29]: the spec allows one on CONNACK; the broker sends none)."""
    sock = raw(broker.port)
    connack = await refused_connack(
        sock,
        "auth",
        properties={
            Property.AUTHENTICATION_METHOD: "SCRAM-SHA-1",
            Property.REQUEST_PROBLEM_INFORMATION: 0,
        },
    )
    assert connack.return_code == ReasonCode.BAD_AUTHENTICATION_METHOD
    assert Property.REASON_STRING not in connack.properties


@pytest_twisted.ensureDeferred
async def test_no_reason_string_on_disconnect_without_problem_information(broker, raw):
    """Request Problem Information 0: the DISCONNECT the broker sends has no Reason String
    [MQTT-3.1.2-29] (here for a second CONNECT, a protocol error [MQTT-3.1.0-2])."""
    sock = raw(broker.port)
    await raw_v5_connect(sock, "shy", properties={Property.REQUEST_PROBLEM_INFORMATION: 0})
    sock.send(v5_connect_bytes("shy"))
    disconnect = await read_v5(sock)
    assert disconnect == Disconnect(ReasonCode.PROTOCOL_ERROR, {})
    assert await sock.closed()


@pytest_twisted.ensureDeferred
async def test_reason_string_on_disconnect_by_default(broker, raw):
    """Problem information allowed (default 1): the broker's DISCONNECT says why (3.14.2.2.3)."""
    sock = raw(broker.port)
    await raw_v5_connect(sock, "curious")
    sock.send(v5_connect_bytes("curious"))
    disconnect = await read_v5(sock)
    assert disconnect.reason_code == ReasonCode.PROTOCOL_ERROR
    assert "CONNECT" in disconnect.properties[Property.REASON_STRING]


# -- CONNACK properties ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_assigned_client_identifier(broker, clients):
    """An empty client id gets one assigned, told in Assigned Client Identifier
    [MQTT-3.1.3-7], [MQTT-3.2.2-16]; the broker knows the session by it."""
    _c, _flags, _rc, props = await v5_client(clients, broker.port, "")
    assigned = props.AssignedClientIdentifier
    assert assigned
    assert assigned in broker.broker.sessions


@pytest_twisted.ensureDeferred
async def test_no_assigned_client_identifier_for_a_given_id(broker, clients):
    """A client that chose its id gets no Assigned Client Identifier."""
    _c, _flags, _rc, props = await v5_client(clients, broker.port, "named")
    assert not hasattr(props, "AssignedClientIdentifier")


@pytest_twisted.ensureDeferred
async def test_empty_client_id_refused_when_not_allowed(start_broker, raw):
    """allow_zero_length_clientid=False: CONNACK 0x85 Client Identifier not valid [MQTT-3.1.3-8]."""
    running = start_broker(allow_zero_length_clientid=False)
    sock = raw(running.port)
    connack = await refused_connack(sock, "")
    assert connack.return_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID


@pytest_twisted.ensureDeferred
async def test_server_keep_alive_above_max_keepalive(start_broker, clients):
    """A keep alive above max_keepalive: accepted, and CONNACK's Server Keep Alive says
    which one applies [MQTT-3.2.2-21]; paho then uses it [MQTT-3.1.2-21]."""
    running = start_broker(max_keepalive=30)
    client, _flags, _rc, props = await v5_client(clients, running.port, "slow", keepalive=100)
    assert props.ServerKeepAlive == 30
    assert running.broker.sessions["slow"].connection.keep_alive == 30
    assert client.client._keepalive == 30


@pytest_twisted.ensureDeferred
async def test_no_server_keep_alive_within_limits(start_broker, clients):
    """A keep alive within max_keepalive: no Server Keep Alive, the client's value holds."""
    running = start_broker(max_keepalive=30)
    _c, _flags, _rc, props = await v5_client(clients, running.port, "ok", keepalive=20)
    assert not hasattr(props, "ServerKeepAlive")
    assert running.broker.sessions["ok"].connection.keep_alive == 20


@pytest_twisted.ensureDeferred
async def test_server_keep_alive_for_keep_alive_zero(start_broker, raw):
    """Keep alive 0 (off) while max_keepalive is set: Server Keep Alive max_keepalive, as
    Mosquitto 2.x does (the spec leaves this to the server, 3.2.2.3.14)."""
    running = start_broker(max_keepalive=30)
    sock = raw(running.port)
    connack = await raw_v5_connect(sock, "forever", keep_alive=0)
    assert connack.properties[Property.SERVER_KEEP_ALIVE] == 30


@pytest_twisted.ensureDeferred
async def test_connack_properties_with_defaults(broker, raw):
    """Default limits in CONNACK: Receive Maximum = max_inflight_messages (20), Maximum
    Packet Size, Topic Alias Maximum = max_topic_alias (10); Maximum QoS, Retain Available,
    Wildcard / Subscription Identifier / Shared Subscription Available absent, i.e.
    QoS 2, retain, and all three features available (3.2.2.3.3 to 3.2.2.3.13)."""
    sock = raw(broker.port)
    connack = await raw_v5_connect(sock, "defaults")
    props = connack.properties
    assert props[Property.RECEIVE_MAXIMUM] == 20
    assert props[Property.MAXIMUM_PACKET_SIZE] == 2_000_000
    assert props[Property.TOPIC_ALIAS_MAXIMUM] == 10
    for absent in (
        Property.MAXIMUM_QOS,
        Property.RETAIN_AVAILABLE,
        Property.WILDCARD_SUBSCRIPTION_AVAILABLE,
        Property.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        Property.SHARED_SUBSCRIPTION_AVAILABLE,
        Property.ASSIGNED_CLIENT_IDENTIFIER,
        Property.SERVER_KEEP_ALIVE,
        Property.RESPONSE_INFORMATION,
        Property.REASON_STRING,
    ):
        assert absent not in props, absent


@pytest_twisted.ensureDeferred
async def test_connack_properties_follow_the_configuration(start_broker, clients):
    """Receive Maximum, Maximum QoS, Retain Available, Maximum Packet Size and Topic Alias
    Maximum follow the broker's options (3.2.2.3.3 to 3.2.2.3.8), seen by paho."""
    running = start_broker(
        max_inflight_messages=7,
        max_qos=1,
        retain_available=False,
        max_packet_size=4096,
        max_topic_alias=3,
    )
    _c, _flags, _rc, props = await v5_client(clients, running.port, "configured")
    assert props.ReceiveMaximum == 7
    assert props.MaximumQoS == 1  # [MQTT-3.2.2-9]
    assert props.RetainAvailable == 0
    assert props.MaximumPacketSize == 4096
    assert props.TopicAliasMaximum == 3


@pytest_twisted.ensureDeferred
async def test_maximum_qos_0(start_broker, raw):
    """max_qos 0: Maximum QoS 0 in CONNACK."""
    running = start_broker(max_qos=0)
    connack = await raw_v5_connect(raw(running.port), "q0")
    assert connack.properties[Property.MAXIMUM_QOS] == 0


@pytest_twisted.ensureDeferred
async def test_no_receive_maximum_without_inflight_limit(start_broker, raw):
    """max_inflight_messages 0 (no limit): no Receive Maximum, i.e. 65535 (3.2.2.3.3)."""
    running = start_broker(max_inflight_messages=0)
    connack = await raw_v5_connect(raw(running.port), "unlimited")
    assert Property.RECEIVE_MAXIMUM not in connack.properties


@pytest_twisted.ensureDeferred
async def test_topic_alias_maximum_zero(start_broker, raw):
    """max_topic_alias 0: Topic Alias Maximum 0, the client may not use aliases
    [MQTT-3.2.2-17]."""
    running = start_broker(max_topic_alias=0)
    connack = await raw_v5_connect(raw(running.port), "noalias")
    assert connack.properties.get(Property.TOPIC_ALIAS_MAXIMUM, 0) == 0


@pytest_twisted.ensureDeferred
async def test_will_qos_above_maximum_qos_refused(start_broker, raw):
    """A will QoS above Maximum QoS: CONNACK 0x9B QoS not supported [MQTT-3.2.2-12]."""
    from mqtt_twisted.packets import Will

    running = start_broker(max_qos=1)
    sock = raw(running.port)
    connack = await refused_connack(sock, "willq2", will=Will("w", b"x", qos=2))
    assert connack.return_code == ReasonCode.QOS_NOT_SUPPORTED


@pytest_twisted.ensureDeferred
async def test_retained_will_refused_without_retain(start_broker, raw):
    """A retained will when Retain Available is 0: CONNACK 0x9A [MQTT-3.2.2-13]."""
    from mqtt_twisted.packets import Will

    running = start_broker(retain_available=False)
    sock = raw(running.port)
    connack = await refused_connack(sock, "willr", will=Will("w", b"x", retain=True))
    assert connack.return_code == ReasonCode.RETAIN_NOT_SUPPORTED


@pytest_twisted.ensureDeferred
async def test_unsupported_protocol_version_connack(broker, raw):
    """Protocol level 6: the broker cannot know its CONNACK format, so it answers in the
    3.1.1 form, return code 1, and closes, as Mosquitto 2.x does ([MQTT-3.1.2-2] allows
    this; the 0x84 form is for a level 5 CONNECT the broker refuses)."""
    from .mqttclient import read_whole

    sock = raw(broker.port)
    data = bytearray(v5_bytes(Connect("future", 5)))
    data[8] = 6  # 0x10, remaining length, 00 04 'MQTT', then the protocol level byte
    sock.send(bytes(data))
    assert await read_whole(sock) == b"\x20\x02\x00\x01"
    assert await sock.closed()


@pytest.mark.parametrize(
    "properties",
    [
        {Property.RECEIVE_MAXIMUM: 0},
        {Property.MAXIMUM_PACKET_SIZE: 0},
        {Property.REQUEST_PROBLEM_INFORMATION: 2},
        {Property.REQUEST_RESPONSE_INFORMATION: 2},
    ],
    ids=[
        "receive-maximum-0",
        "maximum-packet-size-0",
        "problem-information-2",
        "response-information-2",
    ],
)
@pytest_twisted.ensureDeferred
async def test_invalid_connect_property_value_closes(broker, raw, properties):
    """A CONNECT property with a value the spec calls a Protocol Error (3.1.2.11.3,
    3.1.2.11.4, 3.1.2.11.6, 3.1.2.11.7): no session; the connection is closed, with at most a
    refusing CONNACK (4.13.1 lets the server send CONNACK 0x82 or just close)."""
    sock = raw(broker.port)
    sock.send(v5_connect_bytes("invalid", properties=properties))
    packet = await read_v5(sock, 2.0)
    assert packet is None or (packet.type == PacketType.CONNACK and packet.return_code >= 0x80)
    assert await sock.closed()
    assert "invalid" not in broker.broker.sessions
