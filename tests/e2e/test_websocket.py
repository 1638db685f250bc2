"""MQTT over WebSocket (``/mqtt`` on the ``--http`` listeners), plain and over TLS (WSS).

MQTT 3.1.1 section 6 / 5.0 section 6: binary frames only [MQTT-6.0.0-1], packets need not align
with frames [MQTT-6.0.0-2], subprotocol ``mqtt`` [MQTT-6.0.0-3] (``mqttv3.1`` for old clients,
a handshake offering neither refused, as Mosquitto 2.x does). Byte-level tests drive a raw
socket that does the HTTP upgrade itself (``transports.RawWebSocket``) in a thread.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.threads import deferToThread

from mqtt_twisted.packets import Connect, Subscribe, SubscriptionRequest, Will, encode

from .mqttclient import connect_bytes, packet, publish_packet, subscribe_bytes
from .transports import (  # noqa: F401  (pytest fixtures)
    TCP_ENDPOINT,
    certificates,
    listen,
    serve,  # noqa: F401
    ssl_endpoint,
    tclients,
    websockets,
)

CONNACK_OK = b"\x20\x02\x00\x00"
DISCONNECT = b"\xe0\x00"
CLOSE_UNSUPPORTED_DATA = 1003


@pytest.fixture
def ws_broker(serve):
    """TCP MQTT listener + plain HTTP listener (WebSocket at /mqtt)."""
    return serve("--mqtt", TCP_ENDPOINT, "--http", TCP_ENDPOINT)


async def watcher(tclients, port: int, topic_filter: str = "wills/#"):
    """A TCP subscriber (to see wills and messages coming from WebSocket clients)."""
    client = tclients(port, client_id="watcher")
    await client.connect()
    await client.subscribe(topic_filter, qos=1)
    return client


async def open_mqtt(
    websockets,
    port: int,
    client_id: str,
    will: Will | None = None,
    context=None,
    protocols=("mqtt",),
):
    """A raw WebSocket, upgraded, that sent CONNECT and got CONNACK 0."""
    ws = await websockets(port, context)
    assert await deferToThread(ws.handshake, protocols) == 101
    await deferToThread(ws.send_binary, connect_bytes(client_id, will=will))
    assert await deferToThread(ws.read_mqtt, 4) == CONNACK_OK
    return ws


# -- paho over WebSocket and WSS ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_paho_pub_sub_over_websocket(ws_broker, tclients):
    port = ws_broker.http[0]
    sub = tclients(port, client_id="ws-sub", transport="websockets")
    await sub.connect()
    assert await sub.subscribe("ws/+", qos=1) == [1]
    pub = tclients(port, client_id="ws-pub", transport="websockets")
    await pub.connect()
    await pub.publish("ws/hello", b"over websocket", qos=1)
    message = await sub.message()
    assert (message.topic, message.payload, message.qos) == ("ws/hello", b"over websocket", 1)
    await pub.publish("ws/qos0", b"x" * 70_000)  # larger than one 64 KiB frame length
    assert (await sub.message()).payload == b"x" * 70_000


@pytest_twisted.ensureDeferred
async def test_paho_pub_sub_over_wss(serve, tclients, certificates):
    served = serve("--mqtt", TCP_ENDPOINT, "--http", ssl_endpoint(certificates))
    port = served.http[0]
    tls = {"ca_certs": certificates.ca}
    sub = tclients(port, client_id="wss-sub", transport="websockets", tls=tls)
    await sub.connect()
    await sub.subscribe("wss/#", qos=2)
    pub = tclients(port, client_id="wss-pub", transport="websockets", tls=tls)
    await pub.connect()
    await pub.publish("wss/x", b"secure", qos=2)
    message = await sub.message()
    assert (message.topic, message.payload, message.qos) == ("wss/x", b"secure", 2)


@pytest_twisted.ensureDeferred
async def test_wss_client_certificate_identity(serve, tclients, certificates):
    served = serve(
        "--mqtt",
        TCP_ENDPOINT,
        "--http",
        ssl_endpoint(certificates),
        "--cafile",
        str(certificates.ca),
        "--use-identity-as-username",
    )
    tls = {
        "ca_certs": certificates.ca,
        "certfile": certificates.client_cert,
        "keyfile": certificates.client_key,
    }
    client = tclients(served.http[0], client_id="wss-device", transport="websockets", tls=tls)
    client.client.username_pw_set("claimed")
    await client.connect()
    assert served.broker.sessions["wss-device"].connection.username == "device-42"


# -- the handshake: subprotocols and origins ---------------------------------------------------


@pytest.mark.parametrize(
    "offered, chosen",
    [
        (["mqtt"], "mqtt"),
        (["mqttv3.1"], "mqttv3.1"),
        (["chat", "mqtt"], "mqtt"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_subprotocol_answered(ws_broker, websockets, offered, chosen):
    ws = await websockets(ws_broker.http[0])
    assert await deferToThread(ws.handshake, offered) == 101
    assert ws.headers["sec-websocket-protocol"] == chosen
    await deferToThread(ws.send_binary, connect_bytes("sub-" + chosen))
    assert await deferToThread(ws.read_mqtt, 4) == CONNACK_OK


@pytest.mark.parametrize("offered", [["chat"], []])
@pytest_twisted.ensureDeferred
async def test_handshake_without_mqtt_subprotocol_refused(ws_broker, websockets, offered):
    ws = await websockets(ws_broker.http[0])
    status = await deferToThread(ws.handshake, offered)
    assert status == 400
    assert "sec-websocket-protocol" not in ws.headers


@pytest_twisted.ensureDeferred
async def test_autobahn_client_gets_mqttv31_subprotocol(ws_broker):
    """The same with autobahn's Twisted client, in the reactor (no thread)."""
    opened: defer.Deferred = defer.Deferred()
    answered = []

    class Client(WebSocketClientProtocol):
        def onConnect(self, response):
            answered.append(response.protocol)

        def onOpen(self):
            self.sendMessage(connect_bytes("autobahn"), isBinary=True)

        def onMessage(self, payload, isBinary):
            if not opened.called:
                opened.callback((payload, isBinary))
            self.sendMessage(DISCONNECT, isBinary=True)

    port = ws_broker.http[0]
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/mqtt", protocols=["mqttv3.1"])
    factory.protocol = Client
    protocol = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    try:
        payload, binary = await opened.addTimeout(5, reactor)
        assert answered == ["mqttv3.1"]
        assert (payload, binary) == (CONNACK_OK, True)
    finally:
        protocol.transport.loseConnection()


@pytest.fixture
def origin_broker(serve):
    return serve(
        "--mqtt", TCP_ENDPOINT, "--http", TCP_ENDPOINT, "--ws-origin", "https://good.example"
    )


@pytest.mark.parametrize(
    "origin, status",
    [
        ("https://good.example", 101),
        ("https://evil.example", 403),
        (None, 101),  # not a browser: Origin is a browser's header (Mosquitto does not check it)
    ],
)
@pytest_twisted.ensureDeferred
async def test_allowed_origins(origin_broker, websockets, origin, status):
    ws = await websockets(origin_broker.http[0])
    assert await deferToThread(ws.handshake, ["mqtt"], origin) == status
    if status == 101:
        await deferToThread(ws.send_binary, connect_bytes("origin-test"))
        assert await deferToThread(ws.read_mqtt, 4) == CONNACK_OK


# -- frames and packets [MQTT-6.0.0-1], [MQTT-6.0.0-2] ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_text_frame_closes_connection_and_publishes_will(ws_broker, websockets, tclients):
    watch = await watcher(tclients, ws_broker.mqtt[0])
    ws = await open_mqtt(
        websockets, ws_broker.http[0], "texter", will=Will("wills/texter", b"gone", qos=1)
    )
    await deferToThread(ws.send_text, "not MQTT")
    assert await deferToThread(ws.closed) == CLOSE_UNSUPPORTED_DATA
    will = await watch.message()
    assert (will.topic, will.payload) == ("wills/texter", b"gone")
    assert "texter" not in ws_broker.broker.sessions


@pytest_twisted.ensureDeferred
async def test_one_packet_split_over_several_messages(ws_broker, websockets, tclients):
    watch = await watcher(tclients, ws_broker.mqtt[0], "split/#")
    ws = await websockets(ws_broker.http[0])
    assert await deferToThread(ws.handshake) == 101
    connect = connect_bytes("splitter")
    for piece in (connect[:1], connect[1:2], connect[2:7], connect[7:]):  # header split too
        await deferToThread(ws.send_binary, piece)
    assert await deferToThread(ws.read_mqtt, 4) == CONNACK_OK
    publish = publish_packet("split/topic", b"p" * 300)  # 2-byte remaining length
    await deferToThread(ws.send_binary, publish[:2])
    await deferToThread(ws.send_binary, publish[2:150])
    await deferToThread(ws.send_binary, publish[150:])
    message = await watch.message()
    assert (message.topic, message.payload) == ("split/topic", b"p" * 300)


@pytest_twisted.ensureDeferred
async def test_one_packet_in_a_fragmented_message(ws_broker, websockets):
    """Continuation frames: one WebSocket message in three frames carries the CONNECT."""
    ws = await websockets(ws_broker.http[0])
    assert await deferToThread(ws.handshake) == 101
    connect = connect_bytes("fragmented")
    await deferToThread(ws.send_frame, connect[:3], 0x2, False)
    await deferToThread(ws.send_frame, connect[3:9], 0x0, False)
    await deferToThread(ws.send_frame, connect[9:], 0x0, True)
    assert await deferToThread(ws.read_mqtt, 4) == CONNACK_OK


@pytest_twisted.ensureDeferred
async def test_several_packets_in_one_message(ws_broker, websockets):
    ws = await websockets(ws_broker.http[0])
    assert await deferToThread(ws.handshake) == 101
    batch = (
        connect_bytes("batcher")
        + subscribe_bytes("batch/#", 0, packet_id=7)
        + publish_packet("batch/one", b"1")
        + publish_packet("batch/two", b"22")
        + packet(0xC0)
    )  # PINGREQ
    await deferToThread(ws.send_binary, batch)
    suback = b"\x90\x03\x00\x07\x00"
    one = publish_packet("batch/one", b"1")
    two = publish_packet("batch/two", b"22")
    expected = CONNACK_OK + suback + one + two + b"\xd0\x00"
    assert await deferToThread(ws.read_mqtt, len(expected)) == expected


# -- wills ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close frame", "socket closed"])
@pytest_twisted.ensureDeferred
async def test_close_without_disconnect_publishes_will(ws_broker, websockets, tclients, how):
    watch = await watcher(tclients, ws_broker.mqtt[0])
    ws = await open_mqtt(
        websockets, ws_broker.http[0], "leaver", will=Will("wills/leaver", b"lost", qos=1)
    )
    if how == "close frame":
        await deferToThread(ws.close_frame, 1000)
        assert await deferToThread(ws.closed) == 1000  # the broker answers the close
    else:
        ws.close()
    will = await watch.message()
    assert (will.topic, will.payload, will.qos) == ("wills/leaver", b"lost", 1)


@pytest_twisted.ensureDeferred
async def test_disconnect_then_close_publishes_no_will(ws_broker, websockets, tclients):
    watch = await watcher(tclients, ws_broker.mqtt[0])
    ws = await open_mqtt(
        websockets,
        ws_broker.http[0],
        "polite",
        will=Will("wills/polite", b"should not appear", qos=1),
    )
    await deferToThread(ws.send_binary, DISCONNECT)
    assert await deferToThread(ws.closed) == 1000  # the broker closes the WebSocket cleanly
    ws.close()
    assert watch.messages.empty()
    assert await watch.messages_for(0.5) == []
    assert "polite" not in ws_broker.broker.sessions


# -- limits --------------------------------------------------------------------------------------


@pytest.fixture
def small_packets(serve):
    return serve("--mqtt", TCP_ENDPOINT, "--http", TCP_ENDPOINT, "--max-packet-size", "200")


@pytest.mark.parametrize("split", [False, True])
@pytest_twisted.ensureDeferred
async def test_max_packet_size_applies_over_websocket(small_packets, websockets, tclients, split):
    watch = await watcher(tclients, small_packets.mqtt[0], "#")
    ws = await open_mqtt(
        websockets,
        small_packets.http[0],
        "big-sender",
        will=Will("wills/big-sender", b"closed", qos=1),
    )
    fits = publish_packet("size/ok", b"a" * 150)
    assert len(fits) <= 200
    await deferToThread(ws.send_binary, fits)
    assert (await watch.message()).topic == "size/ok"
    too_big = publish_packet("size/big", b"b" * 300)
    if split:  # each message under the limit: the MQTT parser must catch it
        for start in range(0, len(too_big), 100):
            await deferToThread(ws.send_binary, too_big[start : start + 100])
    else:
        await deferToThread(ws.send_binary, too_big)
    assert await deferToThread(ws.closed) is not None
    assert (await watch.message()).topic == "wills/big-sender"
    assert await watch.messages_for(0.3) == []  # the big message was never routed


@pytest_twisted.ensureDeferred
async def test_websocket_without_connect_is_closed_after_connect_timeout(serve, websockets):
    """The MQTT protocol starts fully on a WebSocket (its timers and flow control: it used to
    fail registering as producer because twisted.web's HTTPChannel was still registered)."""
    served = serve("--mqtt", TCP_ENDPOINT, "--http", TCP_ENDPOINT, "--connect-timeout", "0.5")
    ws = await websockets(served.http[0])
    assert await deferToThread(ws.handshake) == 101
    assert await deferToThread(ws.closed, 3.0) == 1000


@pytest_twisted.ensureDeferred
async def test_slow_websocket_reader_is_bounded(certificates, listen, websockets, clients):
    """Flow control reaches WebSocket clients too: a browser that stops reading holds the
    publisher for slow_client_grace, then gets a bounded queue (max_queued_messages, +1 for
    the message that found it full) and drops, while TCP clients keep going."""
    from .test_flow import Counter

    served = await listen(certificates, max_queued_messages=100, slow_client_grace=0.5)
    slow = await websockets(served.ports["ws"])
    assert await deferToThread(slow.handshake) == 101
    slow.send_binary(encode(Connect("ws-slow", 4, keep_alive=0), 4))
    assert (await deferToThread(slow.read_mqtt, 4))[:1] == b"\x20"
    slow.send_binary(encode(Subscribe(1, [SubscriptionRequest("flood/ws", 0)]), 4))
    assert await deferToThread(slow.read_mqtt, 5) == b"\x90\x03\x00\x01\x00"
    # from here on, the WebSocket client reads nothing

    fast = clients(served.ports["tcp"], client_id="fast")
    counter = Counter()
    fast.client.on_message = counter.on_message
    await fast.connect()
    await fast.subscribe("flood/ws", 0)
    pub = clients(served.ports["tcp"], client_id="pub")
    await pub.connect()
    session = served.broker.sessions["ws-slow"]
    pad = b"x" * (4096 - 8)
    total, batch = 8_000, 200  # 32 MiB: more than the kernel's socket buffers hold
    max_queue = max_buffered = 0
    for start in range(0, total, batch):
        for i in range(start, start + batch):
            pub.client.publish("flood/ws", b"%08d" % i + pad, 0)
        assert await counter.wait_for(start + batch) == start + batch
        max_queue = max(max_queue, len(session.queue))
        tcp = session.connection.transport._websocket.transport  # under the WebSocket
        buffered = len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen
        max_buffered = max(max_buffered, buffered)
    assert counter.in_order
    assert max_queue <= 101
    assert served.broker.stats.publish_dropped > 0
    assert served.broker.stats.clients_slow == 1
    assert max_buffered < 2 * 1024 * 1024, max_buffered
