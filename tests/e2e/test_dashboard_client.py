"""web/mqtt.js, the dashboard's own MQTT-over-WebSocket client, run in real headless Chromium
against the broker run by ``twistd``: connect, subscribe, QoS 0 and 1 both ways, packets split
across and coalesced in WebSocket frames, keep alive, reconnect with back-off, refused CONNACKs.
"""

from __future__ import annotations

import socket

import pytest

from mqtt_twisted.packets import Parser

from .browser import (  # noqa: F401  (pytest fixtures)
    AuthGate,
    broker_process,
    chromium,
    free_port,  # noqa: F401
    open_test_page,
    page,
    paho,
)
from .mqttclient import connect_bytes


@pytest.fixture
def broker(broker_process):
    return broker_process("--sys-interval", "0")


@pytest.fixture
def mqtt_page(page, broker):
    open_test_page(page, broker)
    return page


def test_connect_subscribe_and_publish_qos0_and_qos1_round_trip(mqtt_page):
    result = mqtt_page.evaluate("""async () => {
        const client = makeClient({ clientId: "js-round-trip" });
        client.connect();
        await until(() => client.connected, 5000, "CONNACK");
        const granted = [await client.subscribe("js/rt/+", 1), await client.subscribe("js/zero", 0)];
        await client.publish("js/rt/zero", "hello at 0", { qos: 0 });
        await client.publish("js/rt/one", new Uint8Array([0, 1, 2, 255]), { qos: 1 });
        await client.publish("js/zero", "downgraded", { qos: 1 });
        await until(() => client.log.messages.length === 3, 5000, "3 messages");
        const states = client.log.states.map((s) => s.state);
        client.end();
        return { granted, messages: client.log.messages, states, final: client.state,
                 protocol: client.url };
    }""")
    assert result["granted"] == [1, 0]
    messages = {m["topic"]: m for m in result["messages"]}
    assert messages["js/rt/zero"]["text"] == "hello at 0" and messages["js/rt/zero"]["qos"] == 0
    assert messages["js/rt/one"]["bytes"] == [0, 1, 2, 255] and messages["js/rt/one"]["qos"] == 1
    assert messages["js/zero"]["qos"] == 0  # min(published 1, subscribed 0)
    assert result["states"] == ["connecting", "connected"]
    assert result["final"] == "closed"
    assert result["protocol"].startswith("ws://127.0.0.1:")  # ws: for an http: page, same host


def test_interoperates_with_paho_both_ways_and_acknowledges_qos1(broker_process, page, paho):
    # One in-flight message per client: each QoS 1 message after the first reaches the page only
    # if the page acknowledged the one before (PUBACK from the browser to the broker).
    broker = broker_process("--sys-interval", "0", "--max-inflight-messages", "1")
    open_test_page(page, broker)
    page.evaluate("""async () => {
        window.client = makeClient({ clientId: "js-paho" });
        client.connect();
        await until(() => client.connected);
        await client.subscribe("from/paho/#", 1);
    }""")
    sub = paho(broker.mqtt_port, "paho-sub")
    sub.subscribe("from/js/#", qos=1)
    pub = paho(broker.mqtt_port, "paho-pub")
    for i in range(5):
        pub.publish(f"from/paho/{i}", f"message {i}", qos=1)
    texts = page.evaluate("""async () => {
        await until(() => client.log.messages.length === 5, 5000, "5 messages from paho");
        return client.log.messages.map((m) => [m.topic, m.text, m.qos]);
    }""")
    assert texts == [[f"from/paho/{i}", f"message {i}", 1] for i in range(5)]
    page.evaluate(
        """() => client.publish("from/js/q1", "from the browser", { qos: 1, retain: false })"""
    )
    message = sub.message()
    assert (message.topic, message.payload, message.qos) == ("from/js/q1", b"from the browser", 1)


def test_unsubscribe_stops_delivery(mqtt_page, paho, broker):
    pub = paho(broker.mqtt_port, "paho-unsub-pub")
    mqtt_page.evaluate("""async () => {
        window.client = makeClient({ clientId: "js-unsub" });
        client.connect();
        await until(() => client.connected);
        await client.subscribe("unsub/a", 0);
        await client.subscribe("unsub/b", 0);
        await client.unsubscribe("unsub/a");
    }""")
    pub.publish("unsub/a", "not wanted", qos=1)
    pub.publish("unsub/b", "wanted", qos=1)
    topics = mqtt_page.evaluate("""async () => {
        await until(() => client.log.messages.length >= 1);
        await new Promise((r) => setTimeout(r, 200));
        return client.log.messages.map((m) => m.topic);
    }""")
    assert topics == ["unsub/b"]


def test_receives_qos2_exactly_once(mqtt_page, paho, broker):
    pub = paho(broker.mqtt_port, "paho-q2")
    mqtt_page.evaluate("""async () => {
        window.client = makeClient({ clientId: "js-q2" });
        client.connect();
        await until(() => client.connected);
        await client.subscribe("q2/#", 2);
    }""")
    pub.publish("q2/x", "exactly once", qos=2)
    pub.publish("q2/y", "after it", qos=2)
    messages = mqtt_page.evaluate("""async () => {
        await until(() => client.log.messages.length >= 2);
        await new Promise((r) => setTimeout(r, 200));
        return client.log.messages.map((m) => [m.topic, m.qos]);
    }""")
    assert messages == [["q2/x", 2], ["q2/y", 2]]


def test_raw_packets_split_over_frames_and_coalesced_in_one_frame(mqtt_page):
    """The module's encoder on a bare WebSocket: a CONNECT sent one byte per frame, then
    SUBSCRIBE + PUBLISH (QoS 1) in a single frame; the answers go through PacketParser."""
    packets = mqtt_page.evaluate("""async () => {
        const ws = new WebSocket(mqtt.defaultBrokerURL(), ["mqtt"]);
        ws.binaryType = "arraybuffer";
        const parser = new mqtt.PacketParser();
        const received = [];
        ws.onmessage = (e) => received.push(...parser.push(new Uint8Array(e.data)));
        await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
        const connect = mqtt.encodeConnect({ clientId: "js-raw", keepalive: 30 });
        for (const byte of connect) ws.send(Uint8Array.of(byte));
        await until(() => received.length === 1, 5000, "CONNACK");
        const subscribe = mqtt.encodeSubscribe(7, [["raw/echo", 1]]);
        const publish = mqtt.encodePublish({ topic: "raw/echo", payload: "echo", qos: 1, packetId: 8 });
        const both = new Uint8Array(subscribe.length + publish.length);
        both.set(subscribe, 0);
        both.set(publish, subscribe.length);
        ws.send(both);
        await until(() => received.length === 4, 5000, "SUBACK, PUBACK, PUBLISH");
        ws.close();
        return { protocol: ws.protocol, packets: received.map((p) => ({ ...p,
            payload: p.payload ? new TextDecoder().decode(p.payload) : undefined })) };
    }""")
    assert packets["protocol"] == "mqtt"
    first, *rest = packets["packets"]
    assert (first["type"], first["returnCode"]) == (2, 0)
    by_type = {p["type"]: p for p in rest}
    assert by_type[9]["packetId"] == 7 and by_type[9]["granted"] == [1]  # SUBACK
    assert by_type[4]["packetId"] == 8  # PUBACK
    assert (by_type[3]["topic"], by_type[3]["payload"], by_type[3]["qos"]) == (
        "raw/echo",
        "echo",
        1,
    )


def test_parser_handles_any_split_and_coalescing(mqtt_page):
    """Every packet type the client decodes, concatenated, cut at every possible point."""
    result = mqtt_page.evaluate("""() => {
        const m = mqtt;
        const packets = [
            Uint8Array.of(0x20, 2, 0, 0),                                         // CONNACK
            m.encodePublish({ topic: "a/b", payload: "x".repeat(300), qos: 1, packetId: 1 }),
            m.encodePublish({ topic: "t", payload: new Uint8Array(0), retain: true }),
            m.encodeAck(m.PacketType.PUBACK, 513),
            Uint8Array.of(0x90, 4, 0, 9, 1, 0x80),                                 // SUBACK
            Uint8Array.of(0xb0, 2, 0, 10),                                         // UNSUBACK
            Uint8Array.of(0xd0, 0),                                                // PINGRESP
            m.encodeAck(m.PacketType.PUBREL, 4),
        ];
        const all = new Uint8Array(packets.reduce((n, p) => n + p.length, 0));
        let offset = 0;
        for (const p of packets) { all.set(p, offset); offset += p.length; }
        const whole = new m.PacketParser().push(all);
        const summary = (list) => JSON.stringify(list.map((p) => ({ ...p, payload: p.payload && Array.from(p.payload) })));
        const expected = summary(whole);
        let failures = 0;
        for (let cut = 1; cut < all.length; cut += 1) {
            for (const size of [1, 3, 127, 128, 129]) {
                const parser = new m.PacketParser();
                const got = [...parser.push(all.subarray(0, cut))];
                for (let i = cut; i < all.length; i += size) got.push(...parser.push(all.subarray(i, i + size)));
                if (summary(got) !== expected || parser.buffer.length !== 0) failures += 1;
            }
        }
        return { count: whole.length, failures, types: whole.map((p) => p.type),
                 publish: whole[1].payload.length, granted: whole[4].granted };
    }""")
    assert result["count"] == 8
    assert result["failures"] == 0
    assert result["types"] == [2, 3, 3, 4, 9, 11, 13, 6]
    assert result["publish"] == 300
    assert result["granted"] == [1, 0x80]


def test_client_reassembles_packets_the_server_sends_one_byte_per_frame(page, broker, paho):
    """A WebSocket route in front of the real broker cuts every server message into one-byte
    frames: the client still connects, gets its SUBACK and the messages."""
    frames = []

    def splitter(ws) -> None:
        server = ws.connect_to_server()

        def to_page(message) -> None:
            for byte in message:
                frames.append(byte)
                ws.send(bytes([byte]))

        server.on_message(to_page)

    page.route_web_socket("**/mqtt", splitter)
    open_test_page(page, broker)
    page.evaluate("""async () => {
        window.client = makeClient({ clientId: "js-split" });
        client.connect();
        await until(() => client.connected, 5000, "CONNACK in 4 frames");
        window.granted = await client.subscribe("split/#", 1);
    }""")
    pub = paho(broker.mqtt_port, "paho-split")
    pub.publish("split/long", "y" * 1000, qos=1)
    result = page.evaluate("""async () => {
        await until(() => client.log.messages.length === 1);
        return [granted, client.log.messages[0].text.length, client.log.errors];
    }""")
    assert result == [1, 1000, []]
    assert len(frames) > 1000


def test_reconnects_and_resubscribes_after_the_server_closes_the_socket(mqtt_page, broker, paho):
    """Another connection with the same client id takes the session over: the broker closes
    the browser's socket; the client reconnects on its own and subscribes again."""
    mqtt_page.evaluate("""async () => {
        window.client = makeClient({ clientId: "js-takeover", minReconnectDelay: 200 });
        client.connect();
        await until(() => client.connected);
        await client.subscribe("again/#", 1);
    }""")
    with socket.create_connection(("127.0.0.1", broker.mqtt_port), timeout=5) as raw:
        raw.sendall(connect_bytes("js-takeover"))
        assert raw.recv(4) == b"\x20\x02\x00\x00"
        raw.sendall(b"\xe0\x00")  # DISCONNECT
    result = mqtt_page.evaluate("""async () => {
        await until(() => client.log.connects === 2, 5000, "the second CONNACK");
        return { states: client.log.states.map((s) => s.state), retry: client.log.states
                 .filter((s) => s.retryIn !== undefined).map((s) => s.retryIn),
                 closes: client.log.closes.length };
    }""")
    assert result["states"] == ["connecting", "connected", "reconnecting", "connected"]
    assert result["retry"] == [200]
    assert result["closes"] == 1
    pub = paho(broker.mqtt_port, "paho-again")
    pub.publish("again/here", "still subscribed", qos=1)
    text = mqtt_page.evaluate("""async () => {
        await until(() => client.log.messages.length === 1);
        return client.log.messages[0].text;
    }""")
    assert text == "still subscribed"


def test_unacknowledged_qos1_publish_is_sent_after_reconnecting(page, broker, paho):
    """A QoS 1 PUBLISH whose PUBACK never came is resent, with DUP, on the next connection."""
    sub = paho(broker.mqtt_port, "paho-dup")
    sub.subscribe("dup/#", qos=1)
    state = {"dropped": False}
    publishes = []  # first bytes of the PUBLISH packets the page sent

    def drop_first_puback(ws) -> None:
        server = ws.connect_to_server()

        def to_server(message) -> None:
            if message[0] >> 4 == 3:
                publishes.append(message[0])
            server.send(message)

        ws.on_message(to_server)

        def to_page(message) -> None:
            if message[:1] == b"\x40" and not state["dropped"]:  # the first PUBACK: lose it
                state["dropped"] = True
                ws.close()
                return
            ws.send(message)

        server.on_message(to_page)

    page.route_web_socket("**/mqtt", drop_first_puback)
    open_test_page(page, broker)
    acknowledged = page.evaluate("""async () => {
        window.client = makeClient({ clientId: "js-dup", minReconnectDelay: 100 });
        client.connect();
        await until(() => client.connected);
        await client.publish("dup/x", "at least once", { qos: 1 });
        return client.log.connects;
    }""")
    assert acknowledged == 2  # PUBACK arrived on the second connection
    assert publishes == [0x32, 0x3A]  # QoS 1, then QoS 1 + DUP
    first, second = sub.message(), sub.message()
    assert first.payload == second.payload == b"at least once"
    assert second.dup is False  # the broker sets DUP per delivery, not copied from the publisher


def test_backoff_doubles_up_to_the_maximum_while_the_broker_is_away(mqtt_page):
    port = free_port()  # nothing listens there
    retries = mqtt_page.evaluate(
        """async (port) => {
        const client = makeClient({ minReconnectDelay: 50, maxReconnectDelay: 400 },
                                  `ws://127.0.0.1:${port}/mqtt`);
        client.connect();
        await until(() => client.log.states.filter((s) => s.retryIn !== undefined).length >= 6, 8000);
        client.end();
        return client.log.states.filter((s) => s.retryIn !== undefined).map((s) => s.retryIn);
    }""",
        port,
    )
    assert retries[:6] == [50, 100, 200, 400, 400, 400]


def test_keep_alive_sends_pingreq_and_gets_pingresp(mqtt_page):
    stats = mqtt_page.evaluate("""async () => {
        const client = makeClient({ keepalive: 1 });
        client.connect();
        await until(() => client.connected);
        await until(() => client.stats.pingResponses >= 2, 5000, "two PINGRESPs");
        const result = { ...client.stats, state: client.state };
        client.end();
        return result;
    }""")
    assert stats["pingsSent"] >= 2 and stats["pingResponses"] >= 2
    assert stats["state"] == "connected"


def test_refused_connack_stops_reconnecting_until_credentials_are_given(page, broker):
    gate = AuthGate("alice", b"s3cret", refuse_code=5)
    page.route_web_socket("**/mqtt", gate)
    open_test_page(page, broker)
    result = page.evaluate("""async () => {
        const client = makeClient({ clientId: "js-auth", minReconnectDelay: 50 });
        client.connect();
        await until(() => client.state === "refused");
        await new Promise((r) => setTimeout(r, 300));  // no reconnect attempts meanwhile
        const refusedState = client.state;
        client.connect({ username: "alice", password: "wrong" });
        await until(() => client.log.refused.length === 2);
        client.connect({ username: "alice", password: "s3cret" });
        await until(() => client.connected);
        client.end();
        return { refused: client.log.refused, refusedState,
                 states: client.log.states.map((s) => s.state) };
    }""")
    assert result["refusedState"] == "refused"
    assert result["refused"] == [{"returnCode": 5, "reason": "not authorized"}] * 2
    assert result["states"] == [
        "connecting",
        "refused",
        "connecting",
        "refused",
        "connecting",
        "connected",
        "closed",
    ]
    assert [(c.username, c.password) for c in gate.connects] == [
        (None, None),
        ("alice", b"wrong"),
        ("alice", b"s3cret"),
    ]
    assert all(c.client_id == "js-auth" and c.protocol_level == 4 for c in gate.connects)


def test_connack_server_unavailable_is_retried(page, broker):
    """CONNACK 3 (server unavailable) is temporary: the client retries with back-off."""
    attempts = []

    def unavailable_then_real(ws) -> None:
        attempts.append(1)
        if len(attempts) < 3:
            ws.on_message(lambda data: (ws.send(b"\x20\x02\x00\x03"), ws.close()))
        else:
            ws.connect_to_server()

    page.route_web_socket("**/mqtt", unavailable_then_real)
    open_test_page(page, broker)
    result = page.evaluate("""async () => {
        const client = makeClient({ minReconnectDelay: 50 });
        client.connect();
        await until(() => client.connected, 5000);
        client.end();
        return client.log.refused.map((r) => r.returnCode);
    }""")
    assert result == [3, 3]
    assert len(attempts) == 3


def test_connect_packet_carries_credentials_and_keepalive(mqtt_page):
    decoded = mqtt_page.evaluate("""() => {
        const bytes = mqtt.encodeConnect({ clientId: "c1", keepalive: 42, username: "ü", password: "p" });
        return Array.from(bytes);
    }""")
    parser = Parser()
    parser.feed(bytes(decoded))
    connect = parser.next_packet()
    assert (connect.client_id, connect.keep_alive, connect.username, connect.password) == (
        "c1",
        42,
        "ü",
        b"p",
    )
    assert connect.protocol_name == "MQTT" and connect.protocol_level == 4 and connect.clean_start


def test_broker_url_follows_the_page_scheme_and_host(mqtt_page):
    urls = mqtt_page.evaluate("""() => [
        mqtt.defaultBrokerURL(),
        mqtt.defaultBrokerURL({ protocol: "https:", host: "broker.example:8443" }),
        mqtt.defaultBrokerURL({ protocol: "http:", host: "[::1]:8080" }),
    ]""")
    assert urls[0] == mqtt_page.url.replace("http://", "ws://").rsplit("/", 1)[0] + "/mqtt"
    assert urls[1:] == ["wss://broker.example:8443/mqtt", "ws://[::1]:8080/mqtt"]
