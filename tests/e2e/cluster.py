"""A cluster for the tests: one real redis-server (AOF on) and broker nodes on it, each
``twistd -n mqtt --cluster redis://...`` with a PROXY-protocol listener (for HAProxy) and a
plain one (for clients that pick their node), plus paho helpers."""

from __future__ import annotations

import queue
import socket
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.redisserver import RedisServer

from .haproxy import HAProxy
from .mqttclient import release
from .nodes import Node

#: seconds without a lease renewal after which a node is declared dead (tests: short)
LEASE = 2.0
TIMEOUT = 10.0


class Cluster:
    """Redis, nodes on it (started on demand) and optionally HAProxy in front of them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.redis = RedisServer(directory / "redis").start()
        self.nodes: list[Node] = []
        self.haproxy: HAProxy | None = None

    def node(self, *args: str) -> Node:
        """Start one more node (``n0``, ``n1``...) with these extra options."""
        return self.make_node(*args).start()

    def start_nodes(self, count: int, *args: str) -> list[Node]:
        """Start ``count`` nodes at once."""
        made = [self.make_node(*args).launch() for _ in range(count)]
        return [node.wait_ready() for node in made]

    def make_node(self, *args: str) -> Node:
        name = f"n{len(self.nodes)}"
        node = Node(
            self.directory,
            name,
            *("--sys-interval", "0", "--http", "none"),
            *("--cluster", self.redis.url, "--node-id", name, "--cluster-lease", str(LEASE)),
            *args,
            direct=True,
            ready=f"cluster node {name} joined",
        )
        self.nodes.append(node)
        return node

    def front(self, tls_pem: Path | None = None) -> HAProxy:
        """HAProxy in front of every node started so far (``tls_pem``: also a TLS
        frontend, terminated there, on ``tls_port``)."""
        self.haproxy = HAProxy(
            [node.port for node in self.nodes], directory=self.directory / "hap", tls_pem=tls_pem
        )
        return self.haproxy.start()

    def close(self) -> None:
        # paho clients would otherwise reconnect for ever, to ports that later tests'
        # brokers may get, with the same client ids
        Client.stop_all()
        if self.haproxy is not None:
            self.haproxy.stop()
        for node in self.nodes:
            node.stop()
        self.redis.cleanup()


@pytest.fixture
def cluster(tmp_path):
    made = Cluster(tmp_path)
    try:
        yield made
    finally:
        made.close()


class Client:
    """A paho client (3.1.1 or 5.0) on one port; received messages in a queue. Every one
    made is stopped when its test's cluster closes (``stop_all``)."""

    made: list[Client] = []

    def __init__(
        self,
        port: int,
        client_id: str,
        version=mqtt.MQTTv311,
        clean: bool = True,
        will: tuple[str, bytes] | None = None,
        reconnect: bool = False,
    ) -> None:
        self.client_id = client_id
        self.version = version
        self.messages: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self.connected = threading.Event()
        kwargs = {"clean_session": clean} if version != mqtt.MQTTv5 else {}
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version, **kwargs
        )
        client.on_message = lambda c, u, m: self.messages.put(m)
        client.on_connect = lambda c, u, f, rc, p: self._on_connect(rc, f)
        client.on_disconnect = lambda c, u, f, rc, p: self.disconnects.put(rc)
        if will is not None:
            client.will_set(will[0], will[1], qos=1)
        if reconnect:
            client.reconnect_delay_set(0.1, 0.5)
        self.client = client
        Client.made.append(self)
        self.port = port
        self.connack: object = None
        self.connack_session_present = False
        if version == mqtt.MQTTv5:
            properties = None
            if not clean:  # a session that outlives the connection
                properties = Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = 3600
            client.connect(
                "127.0.0.1", port, keepalive=30, clean_start=clean, properties=properties
            )
        else:
            client.connect("127.0.0.1", port, keepalive=30)
        client.loop_start()
        assert self.connected.wait(TIMEOUT), f"{client_id} did not connect to {port}"

    def _on_connect(self, rc, flags) -> None:
        self.connack = rc
        self.connack_session_present = bool(flags.session_present)
        self.connected.set()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe(topic, qos)
        assert done.wait(TIMEOUT), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False):
        info = self.client.publish(topic, payload, qos, retain)
        if qos:
            info.wait_for_publish(TIMEOUT)
            assert info.is_published(), f"{topic} {payload!r} not acknowledged"
        return info

    def receive(self, count: int, timeout: float = TIMEOUT) -> list:
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            left = deadline - time.monotonic()
            try:
                got.append(self.messages.get(timeout=max(left, 0.001)))
            except queue.Empty:
                break
        return got

    def nothing_more(self, wait: float = 0.5) -> bool:
        try:
            message = self.messages.get(timeout=wait)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected message {message.topic} {message.payload!r}")

    def stop(self) -> None:
        self.client.disconnect()
        release(self.client)

    close = stop

    @classmethod
    def stop_all(cls) -> None:
        made, cls.made = cls.made, []
        for client in made:
            try:
                client.close()
            except Exception:  # a client the test already took apart
                pass


def until_routed(publisher: Client, subscriber: Client, topic: str, qos: int = 1) -> None:
    """Publish probes on ``topic`` until ``subscriber`` gets one: subscriptions reach the
    other nodes through Redis a moment after SUBACK."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        publisher.publish(topic, b"probe", qos)
        if subscriber.receive(1, 0.2):
            while subscriber.receive(1, 0.2):
                pass
            return
    raise AssertionError(f"{topic} never reached {subscriber.client_id}")


class RawMQTT:
    """A raw socket client, to send packets at a moment of the test's choosing."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.received = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def still_connected(self, wait: float) -> bool:
        """Read for ``wait`` seconds: True if CONNACK came and the broker did not close."""
        deadline = time.monotonic() + wait
        self.sock.settimeout(0.05)
        buffered = self.received
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return False
            if not chunk:
                return False
            buffered += chunk
            self.received = buffered
        return buffered[:1] == b"\x20"

    def first_packet(self) -> bytes:
        """The bytes of the first packet received (CONNACK), as far as they came."""
        return self.received[: 2 + self.received[1]] if len(self.received) > 1 else b""

    def close(self) -> None:
        self.sock.close()
