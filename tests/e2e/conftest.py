"""Fixtures that start a broker in this process on a free loopback port."""

from __future__ import annotations

import gc
import os

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor

from mqtt_twisted.broker import Broker, BrokerConfig
from mqtt_twisted.protocol import MQTTFactory

from .cluster import Cluster
from .mqttclient import Paho, RawClient

# Raw-socket reads wait in the reactor's thread pool (up to their timeout): room for the
# waits a failing test leaves behind, so one failure does not starve the next tests.
reactor.suggestThreadPoolSize(64)  # type: ignore[attr-defined]


#: open descriptors above which a test's teardown collects garbage: paho clients a test
#: made itself and dropped still hold three sockets each until collected, and paho's
#: ``select`` fails for every later client once descriptors pass 1,024
DESCRIPTORS_BEFORE_COLLECTING = 256


@pytest.fixture(autouse=True)
def _descriptors_stay_few():
    yield
    if len(os.listdir("/proc/self/fd")) > DESCRIPTORS_BEFORE_COLLECTING:
        gc.collect()


@attrs.define
class RunningBroker:
    broker: Broker
    port: int


@pytest.fixture
def start_broker():
    """Call with BrokerConfig fields to start a broker on 127.0.0.1 with a free port."""
    ports = []

    def start(**config) -> RunningBroker:
        broker = Broker(reactor, BrokerConfig(**config))
        factory = TrackingFactory(broker, "test")
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        ports.append((port, factory))
        return RunningBroker(broker, port.getHost().port)

    yield start
    for port, factory in ports:
        pytest_twisted.blockon(port.stopListening())
        # every connection it accepted, with or without a session: one left open keeps
        # its descriptor (and the client's) for the rest of the run
        for protocol in factory.made:
            if protocol.transport is not None and protocol.transport.connected:
                protocol.transport.abortConnection()


class TrackingFactory(MQTTFactory):
    """The broker's factory, remembering the connections it made (to close at teardown)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.made: list = []

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        self.made.append(protocol)
        return protocol


@pytest.fixture
def broker(start_broker) -> RunningBroker:
    """A broker with the default configuration."""
    return start_broker()


@attrs.define
class ClusterFront:
    """A cluster of two ``twistd -n mqtt --cluster`` nodes on one redis-server, behind
    HAProxy: ``port`` is HAProxy's (consecutive clients land on different nodes)."""

    port: int
    cluster: Cluster


@pytest.fixture(params=["one process", "two nodes behind HAProxy"])
def broker_anywhere(request, start_broker, tmp_path):
    """The default broker in this process, then a cluster of two nodes: modules that ask
    for it (``broker = broker_anywhere``) run every test against both."""
    if request.param == "one process":
        yield start_broker()
        return
    cluster = Cluster(tmp_path / "cluster")
    try:
        cluster.start_nodes(2, "--cluster-lease", "10")  # the default: no failover here
        yield ClusterFront(cluster.front().port, cluster)
    finally:
        cluster.close()


@pytest.fixture
def clients():
    """Make paho clients (``clients(port, client_id=...)``); their loops stop at teardown."""
    made = []

    def make(port: int, *args, **kwargs) -> Paho:
        client = Paho(port, *args, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        try:
            client.client.disconnect()
        except Exception:
            pass
        client.stop()


@pytest.fixture
def raw():
    made = []

    def make(port: int) -> RawClient:
        client = RawClient(port)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
