"""Fixtures that start a broker in this process on a free loopback port."""

from __future__ import annotations

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor

from mqtt_twisted.broker import Broker, BrokerConfig
from mqtt_twisted.protocol import MQTTFactory

from .mqttclient import Paho, RawClient

# Raw-socket reads wait in the reactor's thread pool (up to their timeout): room for the
# waits a failing test leaves behind, so one failure does not starve the next tests.
reactor.suggestThreadPoolSize(64)  # type: ignore[attr-defined]


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
        port = reactor.listenTCP(0, MQTTFactory(broker, "test"), interface="127.0.0.1")
        ports.append((port, broker))
        return RunningBroker(broker, port.getHost().port)

    yield start
    for port, broker in ports:
        pytest_twisted.blockon(port.stopListening())
        for session in list(broker.sessions.values()):
            if session.connection is not None:
                session.connection.transport.abortConnection()


@pytest.fixture
def broker(start_broker) -> RunningBroker:
    """A broker with the default configuration."""
    return start_broker()


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
