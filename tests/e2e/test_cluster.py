"""Several broker processes as one, on a real redis-server: messages, subscriptions,
retained messages and client ids across nodes (``--cluster``), with paho clients.

Plain (synchronous) tests: the nodes and Redis are separate processes, paho runs threads.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import Counter

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqtt_twisted.packets import Connect, Will, encode

from .browser import free_port
from .certs import make_certificates
from .cluster import TIMEOUT, Client, RawMQTT, cluster, until_routed  # noqa: F401 (fixture)
from .mqttclient import connect_packet

VERSIONS = pytest.mark.parametrize(
    "version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["mqtt3.1.1", "mqtt5"]
)


@VERSIONS
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_a_subscriber_on_one_node_gets_messages_published_on_another_in_order(
    cluster, version, qos
):
    a, b = cluster.node(), cluster.node()
    subscriber = Client(a.direct_port, "sub", version)
    subscriber.subscribe("orders/#", qos)
    publisher = Client(b.direct_port, "pub", version)
    until_routed(publisher, subscriber, "orders/probe", 1)
    count = 300
    for n in range(count):
        publisher.publish(f"orders/{n % 3}", str(n).encode(), qos)
    got = subscriber.receive(count)
    assert [m.payload for m in got] == [str(n).encode() for n in range(count)]
    assert {m.qos for m in got} == {qos}
    assert subscriber.nothing_more()  # [MQTT-4.6.0-2]: in order, exactly once per message


def test_wildcard_shared_and_retained_subscriptions_work_across_three_nodes(cluster):
    a, b, c = cluster.node(), cluster.node(), cluster.node()
    plus = Client(a.direct_port, "plus", mqtt.MQTTv5)
    plus.subscribe("site/+/temp", 1)
    hash_ = Client(b.direct_port, "hash", mqtt.MQTTv5)
    hash_.subscribe("site/#", 1)
    workers = [Client(node.direct_port, f"w{i}", mqtt.MQTTv5) for i, node in enumerate((b, c))]
    for worker in workers:
        worker.subscribe("$share/jobs/site/+/temp", 1)
    publisher = Client(c.direct_port, "pub", mqtt.MQTTv5)
    until_routed(publisher, plus, "site/probe/temp")
    for subscriber in (hash_, *workers):  # drain the probes they also matched
        while subscriber.receive(1, 0.3):
            pass
    # a retained message set on node A reaches a wildcard subscriber that arrives on node C
    setter = Client(a.direct_port, "setter", mqtt.MQTTv5)
    setter.publish("site/hall/temp", b"21.5", 1, retain=True)
    count = 60
    for n in range(count):
        publisher.publish(f"site/r{n % 4}/temp", str(n).encode(), 1)
    expected = [b"21.5"] + [str(n).encode() for n in range(count)]
    assert [m.payload for m in plus.receive(count + 1)] == expected
    assert [m.payload for m in hash_.receive(count + 1)] == expected
    # shared group "jobs" has a member on B and one on C: each message goes to one of them
    # (the publisher's node C serves it when it has a member there, MQTT 5.0 section 4.8.2)
    shared = [m.payload for worker in workers for m in worker.receive(count + 1, 2.0)]
    assert sorted(shared) == sorted(expected)
    late = Client(c.direct_port, "late", mqtt.MQTTv311)
    late.subscribe("site/+/temp", 1)
    retained = late.receive(1)
    assert [(m.topic, m.payload, m.retain) for m in retained] == [("site/hall/temp", b"21.5", True)]
    setter.publish("site/hall/temp", b"", 1, retain=True)  # cleared everywhere [MQTT-3.3.1-10]
    until_routed(publisher, late, "site/probe2/temp")
    again = Client(b.direct_port, "again", mqtt.MQTTv311)
    again.subscribe("site/+/temp", 1)
    assert again.nothing_more(1.0)


def test_a_shared_group_only_on_other_nodes_gets_each_message_once(cluster):
    a, b, c = cluster.node(), cluster.node(), cluster.node()
    members = [Client(node.direct_port, f"m{i}", mqtt.MQTTv5) for i, node in enumerate((b, c))]
    for member in members:
        member.subscribe("$share/g/jobs/#", 1)
    watcher = Client(b.direct_port, "watch", mqtt.MQTTv5)
    watcher.subscribe("jobs/#", 1)
    publisher = Client(a.direct_port, "pub", mqtt.MQTTv5)
    until_routed(publisher, watcher, "jobs/probe")
    for member in members:
        while member.receive(1, 0.3):
            pass
    count = 100
    for n in range(count):
        publisher.publish("jobs/x", str(n).encode(), 1)
    per_member = [[m.payload for m in member.receive(count, 2.0)] for member in members]
    got = [payload for payloads in per_member for payload in payloads]
    assert sorted(got) == sorted(str(n).encode() for n in range(count))  # once each
    # the two nodes with members take turns: both members get work
    assert all(len(payloads) >= count // 4 for payloads in per_member), per_member


def test_a_client_id_connected_on_one_node_and_then_another_is_taken_over_once(cluster):
    a, b = cluster.node(), cluster.node()
    first = Client(a.direct_port, "same-id", mqtt.MQTTv5)
    second = Client(b.direct_port, "same-id", mqtt.MQTTv5)
    reason = first.disconnects.get(timeout=5)
    assert reason == 0x8E  # Session taken over [MQTT-3.1.4-3]
    first.client.loop_stop()
    assert second.disconnects.empty()
    watcher = Client(a.direct_port, "watcher", mqtt.MQTTv5)
    watcher.subscribe("to/same-id", 1)
    until_routed(second, watcher, "to/same-id")
    assert second.disconnects.empty()
    assert "client same-id connected from" in b.log()


def test_racing_connects_with_one_client_id_leave_exactly_one_connection(cluster):
    a, b, c = cluster.node(), cluster.node(), cluster.node()
    for round_ in range(5):
        client_id = f"race-{round_}"
        sockets = [RawMQTT(node.direct_port) for node in (a, b, c)]
        for raw in sockets:  # as close together as the test can make them
            raw.send(connect_packet(client_id))
        survivors = [raw for raw in sockets if raw.still_connected(2.0)]
        assert len(survivors) == 1, f"round {round_}: {len(survivors)} connections kept"
        for raw in sockets:
            raw.close()


def test_the_will_of_a_client_of_a_killed_node_is_published_once_by_a_survivor(cluster):
    a, b, c = cluster.node(), cluster.node(), cluster.node()
    watcher = Client(b.direct_port, "watcher", mqtt.MQTTv311)
    watcher.subscribe("wills/#", 1)
    probe = Client(a.direct_port, "probe", mqtt.MQTTv311)
    until_routed(probe, watcher, "wills/probe")
    doomed = [
        Client(a.direct_port, f"doomed{i}", mqtt.MQTTv311, will=(f"wills/{i}", b"gone"))
        for i in range(3)
    ]
    a.kill()
    for client in (probe, *doomed):
        client.client.loop_stop()
    # declared dead after its lease (2 s here), then each will exactly once (B and C both
    # look for dead nodes; only one of them takes the wills)
    got = watcher.receive(3, timeout=15)
    assert sorted((m.topic, m.payload) for m in got) == [(f"wills/{i}", b"gone") for i in range(3)]
    assert watcher.nothing_more(3.0)
    survivors = b.log() + c.log()
    assert survivors.count("cluster node n0 left (its lease expired): publishing 3 wills") == 1


def test_a_will_is_published_once_when_its_client_drops_on_a_live_node(cluster):
    a, b = cluster.node(), cluster.node()
    watcher = Client(b.direct_port, "watcher", mqtt.MQTTv311)
    watcher.subscribe("wills/#", 1)
    probe = Client(a.direct_port, "probe", mqtt.MQTTv311)
    until_routed(probe, watcher, "wills/probe")
    raw = RawMQTT(a.direct_port)
    raw.send(connect_packet_with_will("dropper", "wills/dropper", b"bye"))
    assert raw.still_connected(0.5)
    raw.close()  # no DISCONNECT: the will is due [MQTT-3.1.2-8]
    got = watcher.receive(1)
    assert [(m.topic, m.payload) for m in got] == [("wills/dropper", b"bye")]
    a.kill()  # its wills were all published: nothing is left for the survivors to publish
    assert watcher.nothing_more(6.0)


def test_nodes_that_lose_redis_stop_acknowledging_and_recover_by_themselves(cluster):
    a, b = cluster.node(), cluster.node()
    subscriber = Client(a.direct_port, "sub", mqtt.MQTTv5)
    subscriber.subscribe("r/#", 1)
    publisher = Client(b.direct_port, "pub", mqtt.MQTTv5)
    until_routed(publisher, subscriber, "r/probe")
    cluster.redis.kill()
    # both nodes drop their clients and refuse CONNECT until Redis is back
    assert publisher.disconnects.get(timeout=5) is not None
    assert subscriber.disconnects.get(timeout=5) is not None
    for client in (publisher, subscriber):
        client.client.loop_stop()
    refused = RawMQTT(b.direct_port)
    refused.send(connect_packet("while-down"))
    assert not refused.still_connected(1.0)  # CONNACK 3 (server unavailable), then closed
    assert refused.first_packet() == b"\x20\x02\x00\x03"
    for node in (a, b):
        assert "lost Redis at redis://127.0.0.1" in node.log()
        assert "nothing acknowledged until it is back" in node.log()
    cluster.redis.start()
    for node in (a, b):
        node.wait_for_log("cluster node " + node.name + " joined", count=2, timeout=15)
    subscriber = Client(a.direct_port, "sub2", mqtt.MQTTv5)
    subscriber.subscribe("r/#", 1)
    publisher = Client(b.direct_port, "pub2", mqtt.MQTTv5)
    until_routed(publisher, subscriber, "r/probe")
    for n in range(50):
        publisher.publish("r/x", str(n).encode(), 1)
    assert [m.payload for m in subscriber.receive(50)] == [str(n).encode() for n in range(50)]


def connect_packet_with_will(client_id: str, topic: str, payload: bytes) -> bytes:
    """A 3.1.1 CONNECT with a QoS 0 will."""
    will = Will(topic, payload, 0, False)
    return encode(Connect(client_id, 4, clean_start=True, keep_alive=30, will=will), 4)


@VERSIONS
def test_a_persistent_session_resumes_on_another_node_with_its_queued_messages(cluster, version):
    a, b = cluster.node(), cluster.node()
    subscriber = Client(a.direct_port, "keeper", version, clean=False)
    subscriber.subscribe("p/#", 1)
    publisher = Client(b.direct_port, "pub", version)
    until_routed(publisher, subscriber, "p/probe")
    subscriber.stop()
    count = 200
    for n in range(count):  # acknowledged once Redis holds it for the offline session
        publisher.publish(f"p/{n % 5}", str(n).encode(), 1)
    back = Client(b.direct_port, "keeper", version, clean=False)
    assert back.connack_session_present  # [MQTT-3.2.2-2]
    got = back.receive(count)
    assert [m.payload for m in got] == [str(n).encode() for n in range(count)]
    assert back.nothing_more()
    # and the subscription came along: new messages still arrive, on node B now
    publisher.publish("p/late", b"late", 1)
    assert [m.payload for m in back.receive(1)] == [b"late"]


class Numbered:
    """Publishes "0", "1", ... on ``topic`` from a thread; remembers what was acknowledged."""

    def __init__(self, port: int, client_id: str, topic: str, qos: int) -> None:
        self.topic, self.qos = topic, qos
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.sent: list[mqtt.MQTTMessageInfo] = []
        self._acked: set[int] = set()
        self.client.on_publish = lambda c, u, mid, rc, p: self._acked.add(mid)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        Client.made.append(self)  # type: ignore[arg-type]  # stopped with the cluster
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set() and n < 20_000:
            self.sent.append(self.client.publish(self.topic, str(n), qos=self.qos))
            n += 1
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def acknowledged(self, timeout: float = 20.0) -> set[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self._acked) < len(self.sent):
            time.sleep(0.05)
        return {n for n, info in enumerate(self.sent) if info.mid in self._acked}

    def close(self) -> None:
        self._stop.set()
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("qos", [1, 2])
def test_killing_the_node_of_a_persistent_subscriber_loses_nothing_acknowledged(cluster, qos):
    """SIGKILL the node that holds a persistent subscriber mid-stream: the subscriber comes
    back through HAProxy to another node and gets every message the publisher had a PUBACK
    (PUBCOMP) for: QoS 1 at least once, QoS 2 exactly once, first arrivals in order."""
    nodes = [cluster.node() for _ in range(3)]
    front = cluster.front()
    received: list[int] = []
    probed = threading.Event()

    def on_message(client, userdata, message) -> None:
        if message.payload == b"probe":
            probed.set()
        else:
            received.append(int(message.payload))

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="kept", clean_session=False)
    sub.on_message = on_message
    sub.reconnect_delay_set(0.1, 0.5)
    sub.connect("127.0.0.1", front.port, keepalive=30)
    sub.loop_start()
    try:
        subscribed = threading.Event()
        sub.on_subscribe = lambda *args: subscribed.set()
        sub.subscribe("kill/#", qos)
        assert subscribed.wait(TIMEOUT)
        holder = next(node for node in nodes if node.connected("kept"))
        other = next(node for node in nodes if node is not holder)
        probe = Client(other.direct_port, "probe")
        deadline = time.monotonic() + TIMEOUT
        while not probed.is_set():  # the subscription reaches the other nodes through Redis
            assert time.monotonic() < deadline, "the subscription never reached the others"
            probe.publish("kill/probe", b"probe", 1)
            probed.wait(0.2)
        publisher = Numbered(other.direct_port, "numbers", "kill/n", qos)
        time.sleep(0.7)
        holder.kill()
        time.sleep(2.0)  # the subscriber comes back through HAProxy meanwhile
        publisher.stop()
        acked = publisher.acknowledged()
        publisher.close()
        assert len(acked) > 300, len(acked)  # the test did publish, before and after
        deadline = time.monotonic() + 30
        while not acked <= set(received) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        missing = acked - set(received)
        assert not missing, f"acknowledged but lost: {sorted(missing)[:20]} of {len(acked)}"
        firsts = list(dict.fromkeys(received))
        assert firsts == sorted(firsts), "out of publish order"
        if qos == 2:
            twice = sorted(n for n, c in Counter(received).items() if c > 1)
            assert not twice, f"QoS 2 delivered twice: {twice[:20]}"
        survivors = [node for node in nodes if node is not holder]
        assert any(node.connected("kept") for node in survivors)
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_killing_and_restarting_redis_loses_nothing_acknowledged(cluster):
    """Redis (appendonly yes) killed with SIGKILL and started again: the nodes drop their
    clients, refuse CONNECT meanwhile, come back by themselves; a persistent subscriber
    then gets every message its publisher had a PUBACK for, before and after."""
    a, b = cluster.node(), cluster.node()
    subscriber = Client(a.direct_port, "durable", clean=False)
    subscriber.subscribe("aof/#", 1)
    publisher = Client(b.direct_port, "before")
    until_routed(publisher, subscriber, "aof/probe")
    subscriber.stop()
    for n in range(100):
        publisher.publish("aof/n", str(n).encode(), 1)
    publisher.stop()
    cluster.redis.kill()
    cluster.redis.start()
    for node in (a, b):
        node.wait_for_log(f"cluster node {node.name} joined", count=2, timeout=20)
    publisher = Client(b.direct_port, "after")
    for n in range(100, 200):
        publisher.publish("aof/n", str(n).encode(), 1)
    back = Client(b.direct_port, "durable", clean=False)
    assert back.connack_session_present
    got = [int(m.payload) for m in back.receive(200, timeout=15)]
    assert got == list(range(200))
    assert back.nothing_more()


def test_sys_topics_and_metrics_show_the_node_and_the_cluster_totals(cluster):
    http = free_port()
    a = cluster.node("--sys-interval", "1", "--http", f"tcp:{http}:interface=127.0.0.1")
    b = cluster.node("--sys-interval", "1")
    watcher = Client(a.direct_port, "watcher")
    others = [Client(b.direct_port, f"c{i}") for i in range(3)]
    watcher.subscribe("$SYS/broker/cluster/#", 0)
    wanted = {
        "$SYS/broker/cluster/node": b"n0",
        "$SYS/broker/cluster/state": b"up",
        "$SYS/broker/cluster/nodes": b"2",
        "$SYS/broker/cluster/clients/connected": b"4",  # 1 on n0, 3 on n1
    }
    seen: dict[str, bytes] = {}
    deadline = time.monotonic() + 15
    while any(seen.get(k) != v for k, v in wanted.items()) and time.monotonic() < deadline:
        for message in watcher.receive(1, 0.5):
            seen[message.topic] = message.payload
    assert {k: seen.get(k) for k in wanted} == wanted
    text = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5).read().decode()
    assert 'mqtt_cluster_up{node="n0"} 1.0' in text
    assert 'mqtt_cluster_nodes{node="n0"} 2.0' in text
    assert 'mqtt_cluster_clients_connected{node="n0"} 4.0' in text
    for client in others:
        client.stop()


@pytest.mark.parametrize("qos", [1, 2])
def test_a_persistent_subscriber_moving_to_another_node_mid_stream_misses_nothing(cluster, qos):
    """The subscriber reconnects to another node while messages flow: the old node hands
    its session over (what it held written to Redis first), the new one loads it; every
    acknowledged message arrives (QoS 2 exactly once), first arrivals in order."""
    a, b, c = cluster.start_nodes(3)
    received: list[int] = []
    subscriber = Client(a.direct_port, "mover", clean=False)
    subscriber.client.on_message = lambda cl, u, m: received.append(int(m.payload))
    subscriber.subscribe("move/#", qos)
    publisher = Numbered(c.direct_port, "mover-pub", "move/n", qos)
    time.sleep(0.6)
    client = subscriber.client  # the same client (its QoS 2 state too), on another node
    client.disconnect()
    client.loop_stop()
    client.connect("127.0.0.1", b.direct_port, keepalive=30)
    client.loop_start()
    time.sleep(0.6)
    publisher.stop()
    acked = publisher.acknowledged()
    publisher.close()
    assert len(acked) > 100
    deadline = time.monotonic() + 20
    while not acked <= set(received) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    missing = acked - set(received)
    assert not missing, f"acknowledged but lost: {sorted(missing)[:20]} of {len(acked)}"
    firsts = list(dict.fromkeys(received))
    assert firsts == sorted(firsts)
    if qos == 2:
        assert not [n for n, count in Counter(received).items() if count > 1]


@pytest.mark.parametrize("clean", [False, True], ids=["persistent", "clean"])
def test_a_full_subscriber_holds_back_publishers_on_other_nodes(cluster, clean):
    """Flow control across nodes: a subscriber slower than its publisher (but within
    --slow-client-grace) fills its queue (--max-queued-messages 10 here); the publisher's
    node stops reading the publisher instead of the subscriber's node dropping what was
    acknowledged. Every acknowledged message arrives, in order; nothing is dropped."""
    http = free_port()
    a = cluster.node("--max-queued-messages", "10")
    b = cluster.node("--max-queued-messages", "10", "--http", f"tcp:{http}:interface=127.0.0.1")
    received: list[int] = []
    held = []  # messages held on node B for its clients, as /metrics shows them

    def watch() -> None:
        while not done.is_set():
            text = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5).read()
            for line in text.decode().splitlines():
                if line.startswith("mqtt_stored_messages "):
                    held.append(float(line.split()[1]))
            time.sleep(0.02)

    done = threading.Event()
    watcher = threading.Thread(target=watch, daemon=True)

    def slow(client, userdata, message) -> None:
        if message.payload != b"probe":
            received.append(int(message.payload))
            time.sleep(0.002)  # about 500 messages a second, acknowledged after each

    subscriber = Client(b.direct_port, "slowish", clean=clean)
    subscriber.subscribe("full/#", 1)
    probe = Client(a.direct_port, "probe")
    until_routed(probe, subscriber, "full/probe")
    subscriber.client.on_message = slow
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fast")
    publisher.max_inflight_messages_set(64)
    acked: set[int] = set()
    publisher.on_publish = lambda c, u, mid, rc, p: acked.add(mid)
    publisher.connect("127.0.0.1", a.direct_port)
    publisher.loop_start()
    watcher.start()
    sent = [publisher.publish("full/n", str(n), qos=1) for n in range(2000)]
    deadline = time.monotonic() + 30
    while len(acked) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.05)
    publisher.disconnect()
    publisher.loop_stop()
    acknowledged = {n for n, info in enumerate(sent) if info.mid in acked}
    assert len(acknowledged) == len(sent)
    while not acknowledged <= set(received) and time.monotonic() < deadline:
        time.sleep(0.05)
    missing = acknowledged - set(received)
    assert not missing, f"acknowledged but dropped: {len(missing)}, e.g. {sorted(missing)[:10]}"
    done.set()
    watcher.join(5)
    assert list(dict.fromkeys(received)) == sorted(set(received))
    assert "dropping messages" not in b.log()
    # bounded: the queue, the in-flight window and what was on its way when the publisher
    # was held (without flow control across nodes it grows to most of the 2,000)
    assert held and max(held) < 400, max(held)


def test_tls_terminated_at_haproxy_reaches_the_nodes(cluster, tmp_path):
    """README: TLS terminated at HAProxy (`bind ... ssl crt`), plain MQTT with the PROXY
    header to the nodes: a paho 5.0 client over TLS and a plain one talk across nodes."""
    files = make_certificates(tmp_path / "certs")
    pem = tmp_path / "haproxy.pem"
    pem.write_bytes(files.server_cert.read_bytes() + files.server_key.read_bytes())
    cluster.start_nodes(2)
    front = cluster.front(tls_pem=pem)
    secure = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="secure", protocol=mqtt.MQTTv5)
    secure.tls_set(ca_certs=str(files.ca))
    got: list[bytes] = []
    secure.on_message = lambda c, u, m: got.append(m.payload)
    subscribed = threading.Event()
    secure.on_subscribe = lambda *args: subscribed.set()
    secure.connect("127.0.0.1", front.tls_port)
    secure.loop_start()
    try:
        secure.subscribe("tls/#", 1)
        assert subscribed.wait(TIMEOUT)
        plain = Client(front.port, "plain")
        deadline = time.monotonic() + TIMEOUT
        while not got and time.monotonic() < deadline:
            plain.publish("tls/x", b"through haproxy", 1)
            time.sleep(0.2)
        assert got and got[0] == b"through haproxy"
        logs = "".join(node.log() for node in cluster.nodes)
        assert "client secure connected from 127.0.0.1:" in logs
    finally:
        secure.disconnect()
        secure.loop_stop()
