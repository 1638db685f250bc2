"""Broker nodes (``twistd -n mqtt --cluster rediss://...``) on a redis-server that speaks TLS
only and asks for client certificates (``tls-auth-clients yes``): the CA and the client
certificate come from the URL's ``ssl_ca_certs``, ``ssl_certfile`` and ``ssl_keyfile``."""

from __future__ import annotations

import subprocess

import paho.mqtt.client as mqtt
import pytest

from tests.redisserver import RedisServer

from .browser import TWISTD
from .cluster import LEASE, Client, until_routed
from .nodes import Node


@pytest.fixture
def tls_redis(tmp_path):
    server = RedisServer(tmp_path / "redis", password="s3cret", tls=True)
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.fixture
def make_node(tmp_path):
    """Call with (name, Redis URL) to start ``twistd -n mqtt --cluster URL --node-id name``;
    every node is stopped at teardown."""
    made: list[Node] = []

    def make(name: str, url: str, ready: str | None = None) -> Node:
        node = Node(
            tmp_path,
            name,
            *("--sys-interval", "0", "--http", "none"),
            *("--cluster", url, "--node-id", name, "--cluster-lease", str(LEASE)),
            direct=True,
            ready=f"cluster node {name} joined" if ready is None else ready,
        )
        made.append(node)
        return node.start()

    yield make
    Client.stop_all()  # no paho client reconnecting to later tests' ports
    for node in made:
        node.stop()


def test_qos1_messages_cross_nodes_through_a_tls_redis_in_order(tls_redis, make_node):
    assert tls_redis.url.startswith("rediss://:s3cret@127.0.0.1:")
    a, b = make_node("n0", tls_redis.url), make_node("n1", tls_redis.url)
    assert "joining through rediss://127.0.0.1:" in a.log() and "s3cret" not in a.log()
    subscriber = Client(a.direct_port, "sub", mqtt.MQTTv311)
    subscriber.subscribe("orders/#", 1)
    publisher = Client(b.direct_port, "pub", mqtt.MQTTv5)
    until_routed(publisher, subscriber, "orders/probe", 1)
    count = 200
    for n in range(count):
        publisher.publish(f"orders/{n % 3}", str(n).encode(), 1)
    got = subscriber.receive(count)
    assert [m.payload for m in got] == [str(n).encode() for n in range(count)]
    assert {m.qos for m in got} == {1}
    assert subscriber.nothing_more()
    publisher.stop()
    subscriber.stop()


def test_a_node_without_a_client_certificate_does_not_join_and_says_why(tls_redis, make_node):
    url = tls_redis.url_with(ssl_ca_certs=tls_redis.certificates.ca)
    node = make_node("n0", url, ready="")  # listening, not joined
    node.wait_for_log("cluster node n0: cannot join through rediss://127.0.0.1:")
    line = next(x for x in node.log().splitlines() if "cannot join through" in x)
    assert "certificate required" in line and "retrying" in line
    assert "joined" not in node.log() and "s3cret" not in node.log()


def test_an_unreadable_certificate_file_stops_twistd_with_one_line(tls_redis, tmp_path):
    files = tls_redis.certificates
    missing = tmp_path / "nowhere" / "client.key"
    url = tls_redis.url_with(
        ssl_ca_certs=files.ca, ssl_certfile=files.client_cert, ssl_keyfile=missing
    )
    result = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "mqtt", "--http", "none", "--cluster", url],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output and "s3cret" not in output
    (line,) = [x for x in output.splitlines() if "cannot read ssl_keyfile" in x]
    assert f"cannot read ssl_keyfile '{missing}': No such file or directory" in line
