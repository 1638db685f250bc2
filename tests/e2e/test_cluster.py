"""Several broker processes as one, on a real redis-server: messages, subscriptions,
retained messages and client ids across nodes (``--cluster``), with paho clients.

Plain (synchronous) tests: the nodes and Redis are separate processes, paho runs threads.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest

from mqtt_twisted.packets import Connect, Will, encode

from .cluster import Client, RawMQTT, cluster, until_routed  # noqa: F401 (fixture)
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
