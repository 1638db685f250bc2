"""Two broker processes behind a real HAProxy speaking the PROXY protocol (v2) to them.

Each node is ``twistd -n mqtt --mqtt haproxy:tcp:PORT:interface=127.0.0.1``: Twisted's
``haproxy:`` endpoint wrapper reads the PROXY header, so the broker sees (and logs) the
client's own address, not HAProxy's. Each node logs to a file (twistd's ``--logfile``)
that the tests read. Clients are paho-mqtt 2.x (3.1.1 and 5.0) and raw sockets.

Plain (synchronous) tests: everything runs in separate processes or paho's threads.
"""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from .browser import TWISTD, free_port
from .haproxy import HAProxy, find_haproxy, haproxy
from .mqttclient import _read_packet, connect_packet
from .nodes import Node

FAILOVER_TIMEOUT = 20.0
TIMEOUT = 5.0


class Client:
    """A paho client that subscribes to its own topic (QoS 1) on every (re)connection."""

    def __init__(
        self, port: int, client_id: str, version=mqtt.MQTTv311, bind_address: str = ""
    ) -> None:
        self.client_id = client_id
        self.topic = f"haproxy/{client_id}"
        self.messages: queue.Queue = queue.Queue()
        self.subacks = 0
        self.connects = 0
        self._lock = threading.Lock()
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version)
        self.paho.reconnect_delay_set(0.05, 0.5)
        self.paho.on_connect = self._on_connect
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_message = lambda client, userdata, message: self.messages.put(message)
        self.paho.connect("127.0.0.1", port, keepalive=30, bind_address=bind_address)
        self.paho.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        with self._lock:
            self.connects += 1
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._lock:
            self.subacks += 1

    def wait_subscribed(self, count: int = 1, timeout: float = TIMEOUT) -> None:
        wait_until(lambda: self.subacks >= count, timeout, f"SUBACK #{count} for {self.client_id}")

    def round_trip(self, payload: bytes) -> mqtt.MQTTMessage:
        """Publish QoS 1 to its own topic; the message it gets back."""
        info = self.paho.publish(self.topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"no PUBACK for {self.client_id}"
        deadline = time.monotonic() + TIMEOUT
        while True:  # a message published before a failover may come back too: skip it
            message = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            if message.payload == payload:
                return message

    def local_address(self) -> tuple[str, int]:
        sock = self.paho.socket()
        assert sock is not None, f"{self.client_id} is not connected"
        host, port = sock.getsockname()[:2]
        return host, port

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def backend_side_ports(node_port: int) -> set[int]:
    """Local ports of the established IPv4 connections to ``node_port``: HAProxy's side of
    its connections to that node (Linux's /proc/net/tcp)."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if state == "01" and int(remote.rsplit(":", 1)[1], 16) == node_port:
            ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture
def nodes(tmp_path):
    """Two broker nodes, started; stopped at teardown."""
    started = [Node(tmp_path, "node1"), Node(tmp_path, "node2")]
    try:
        for node in started:
            node.start()
        yield started
    finally:
        for node in started:
            node.stop()


@pytest.fixture
def proxy(nodes, haproxy) -> HAProxy:
    """HAProxy (leastconn) in front of both nodes."""
    return haproxy([node.port for node in nodes])


@pytest.fixture
def clients():
    """Make ``Client``s; closed at teardown."""
    made: list[Client] = []

    def make(*args, **kwargs) -> Client:
        client = Client(*args, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def node_of(nodes: list[Node], client_id: str, timeout: float = TIMEOUT) -> Node:
    """The node whose log says ``client_id`` connected (exactly one)."""
    wait_until(lambda: any(n.connected(client_id) for n in nodes), timeout, client_id)
    hosting = [node for node in nodes if node.connected(client_id)]
    assert len(hosting) == 1, [node.name for node in hosting]
    return hosting[0]


@pytest.mark.parametrize("balance", ["leastconn", "roundrobin"])
def test_haproxy_accepts_the_config(tmp_path, balance):
    proxy = HAProxy([free_port(), free_port()], balance=balance, directory=tmp_path)
    text = proxy.config_text()
    assert f"bind 127.0.0.1:{proxy.port}" in text and f"balance {balance}" in text
    assert "send-proxy-v2" in text and "check-send-proxy" in text
    proxy.config_path.write_text(text)
    check = subprocess.run(
        [find_haproxy(), "-c", "-f", str(proxy.config_path)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "ALERT" not in check.stdout + check.stderr
    assert "WARNING" not in check.stdout + check.stderr, check.stdout + check.stderr


def test_haproxy_refuses_an_unknown_balance():
    with pytest.raises(ValueError):
        HAProxy([1883], balance="random")


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["mqtt-3.1.1", "mqtt-5.0"])
def test_paho_publishes_qos1_to_itself_through_haproxy(nodes, proxy, clients, version):
    client = clients(proxy.port, f"through-haproxy-{version}", version)
    client.wait_subscribed()
    message = client.round_trip(b"hello through haproxy")
    assert (message.topic, message.qos) == (client.topic, 1)
    node_of(nodes, client.client_id)


def test_both_protocol_versions_at_once_are_balanced_over_both_nodes(nodes, proxy, clients):
    """leastconn: the second client goes to the node without a client."""
    v3 = clients(proxy.port, "balanced-v3", mqtt.MQTTv311)
    v3.wait_subscribed()
    v5 = clients(proxy.port, "balanced-v5", mqtt.MQTTv5)
    v5.wait_subscribed()
    assert v3.round_trip(b"3.1.1").payload == b"3.1.1"
    assert v5.round_trip(b"5.0").payload == b"5.0"
    assert node_of(nodes, "balanced-v3") is not node_of(nodes, "balanced-v5")


def test_the_broker_logs_the_client_address_from_the_proxy_header(nodes, proxy, clients):
    """The log shows the client's own address and port (as its socket sees them), not those
    of HAProxy's connection to the node: the PROXY header was read."""
    # 127.0.0.2: a source address HAProxy's own connections to the nodes (127.0.0.1) never have
    elsewhere = clients(proxy.port, "from-127-0-0-2", mqtt.MQTTv311, bind_address="127.0.0.2")
    local = clients(proxy.port, "from-127-0-0-1", mqtt.MQTTv5)
    for client in (elsewhere, local):
        client.wait_subscribed()
        host, port = client.local_address()
        node = node_of(nodes, client.client_id)
        line = f"client {client.client_id} connected from {host}:{port} "
        assert line in node.log(), node.log()
        # HAProxy's side of its connections to that node: never what the broker logs
        haproxy_ports = backend_side_ports(node.port)
        assert haproxy_ports and port not in haproxy_ports, (port, haproxy_ports)
        for haproxy_port in haproxy_ports:
            assert f"connected from 127.0.0.1:{haproxy_port} " not in node.log()
    assert elsewhere.local_address()[0] == "127.0.0.2"


def test_a_connection_without_proxy_header_is_refused(nodes, proxy, clients):
    """Straight to a node, without a PROXY header: closed before any CONNACK; the node
    keeps serving, directly with a header and through HAProxy."""
    for node in nodes:
        with socket.create_connection(("127.0.0.1", node.port), timeout=TIMEOUT) as sock:
            sock.sendall(connect_packet("no-proxy-header"))
            sock.settimeout(TIMEOUT)
            try:
                data = sock.recv(1024)
            except ConnectionResetError:
                data = b""
            assert data == b"", data  # closed, no CONNACK
        assert not node.connected("no-proxy-header")
        assert node.running()

        # the same node with a PROXY v1 header: served, and the header's source logged
        with socket.create_connection(("127.0.0.1", node.port), timeout=TIMEOUT) as sock:
            header = f"PROXY TCP4 192.0.2.7 127.0.0.1 40001 {node.port}\r\n".encode()
            sock.sendall(header + connect_packet(f"header-{node.name}"))
            assert _read_packet(sock, TIMEOUT) == (0x20, b"\x00\x00")  # CONNACK accepted
        assert f"client header-{node.name} connected from 192.0.2.7:40001 " in node.log()

    # and through HAProxy, on both nodes (leastconn spreads two clients)
    first = clients(proxy.port, "after-refusal-1")
    second = clients(proxy.port, "after-refusal-2", mqtt.MQTTv5)
    for client in (first, second):
        client.wait_subscribed()
        assert client.round_trip(b"still serving").payload == b"still serving"
    hosting = {node_of(nodes, client.client_id).name for client in (first, second)}
    assert hosting == {"node1", "node2"}


def test_a_client_of_a_killed_node_reconnects_to_the_other_one(nodes, proxy, clients):
    client = clients(proxy.port, "failover", mqtt.MQTTv311)
    client.wait_subscribed()
    assert client.round_trip(b"before").payload == b"before"
    victim = node_of(nodes, "failover")
    survivor = next(node for node in nodes if node is not victim)
    assert not survivor.connected("failover")

    victim.kill()
    started = time.monotonic()
    wait_until(
        lambda: survivor.connected("failover"),
        FAILOVER_TIMEOUT,
        f"failover to {survivor.name}:\n{proxy.output()}",
    )
    client.wait_subscribed(count=2, timeout=FAILOVER_TIMEOUT)
    assert client.connects >= 2
    assert client.round_trip(b"after").payload == b"after"
    assert time.monotonic() - started < FAILOVER_TIMEOUT
    assert survivor.running()


def test_the_readme_shows_the_configuration_the_tests_run(tmp_path):
    """README's haproxy.cfg is HAProxy.config_text() for ports 1883/1884/1885 (bound on
    every address), and haproxy -c accepts it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("<!-- haproxy.cfg -->\n```\n", 1)[1].split("```", 1)[0]
    ours = HAProxy([1884, 1885], port=1883, directory=tmp_path).config_text()
    assert block == ours.replace("bind 127.0.0.1:1883", "bind :1883")
    config = tmp_path / "readme.cfg"
    config.write_text(block)
    check = subprocess.run([find_haproxy(), "-c", "-f", str(config)], capture_output=True)
    assert check.returncode == 0, check.stderr
