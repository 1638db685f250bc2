"""Fixtures and clients for the TLS and WebSocket e2e tests.

Brokers are started the way ``twistd mqtt`` starts them: ``serve(*args)`` parses real
command-line options with :class:`mqtt_twisted.tap.Options` and starts ``makeService`` on the
test reactor with port 0 endpoints; ``listen(...)`` builds single listeners by hand from
``mqtt_twisted.tls.server_endpoint`` + ``MQTTFactory`` / ``mqtt_twisted.web.build_site``.
Neither blocks the reactor; every client that needs the broker to answer while it connects
(TLS and WebSocket handshakes) connects in a thread.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import time

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from mqtt_twisted.broker import Broker, BrokerConfig
from mqtt_twisted.protocol import MQTTFactory
from mqtt_twisted.tap import ListenerService, Options, makeService
from mqtt_twisted.tls import TLSSettings, server_endpoint
from mqtt_twisted.web import build_site

from .certs import TestCertificates, make_certificates
from .mqttclient import TIMEOUT, Paho, get

HOST = "127.0.0.1"


def escape(path) -> str:
    """A path as an endpoint-string value (``:`` and ``\\`` escaped)."""
    return str(path).replace("\\", "\\\\").replace(":", "\\:")


def ssl_endpoint(certs: TestCertificates, port: int = 0, key=None, cert=None) -> str:
    key = certs.server_key if key is None else key
    cert = certs.server_cert if cert is None else cert
    return f"ssl:{port}:interface={HOST}:privateKey={escape(key)}:certKey={escape(cert)}"


TCP_ENDPOINT = f"tcp:0:interface={HOST}"


@pytest.fixture(scope="session")
def certificates(tmp_path_factory) -> TestCertificates:
    """The test CA, server, client, untrusted-client certificates and a wrong key (generated)."""
    return make_certificates(tmp_path_factory.mktemp("certs"))


# -- brokers -------------------------------------------------------------------------------


@attrs.define
class Served:
    """A broker started by ``makeService``; ports in the order of the ``--mqtt`` / ``--http`` options."""

    service: object
    broker: Broker
    mqtt: list[int]
    http: list[int]


def _close_everything(broker: Broker) -> None:
    for session in list(broker.sessions.values()):
        if session.connection is not None:
            try:
                session.connection.transport.abortConnection()
            except Exception:
                pass


@pytest.fixture
def serve():
    """``serve(*twistd_mqtt_args)`` -> :class:`Served`; stopped at teardown.

    Give real endpoint strings with port 0 (``tcp:0:interface=127.0.0.1``, ``ssl:0:...``);
    ``--http none`` is added when no ``--http`` is given.
    """
    running = []

    def start(*args: str) -> Served:
        args = list(args)
        if "--http" not in args:
            args += ["--http", "none"]
        if "--store" not in args:  # in-process brokers keep nothing in the working directory
            args += ["--store", "memory"]
        options = Options()
        options.parseOptions(args)
        service = makeService(options, reactor)
        service.startService()
        running.append(service)
        listeners = [child for child in service if isinstance(child, ListenerService)]
        assert all(listener.port is not None for listener in listeners)
        ports = [listener.port.getHost().port for listener in listeners]
        count = len(options["mqtt"])  # makeService adds the --mqtt listeners first
        return Served(service, service.broker, ports[:count], ports[count:])

    yield start
    for service in running:
        pytest_twisted.blockon(service.stopService())
        _close_everything(service.broker)


@attrs.define
class Listening:
    broker: Broker
    ports: dict[str, int]  # "tcp", "tls", "ws", "wss" -> port


@pytest.fixture
def listen():
    """``listen(certs, settings=TLSSettings(), origins=(), **BrokerConfig fields)``: one broker
    with TCP, TLS, WS and WSS listeners built by hand from the real endpoints."""
    ports = []
    brokers = []

    async def start(
        certs: TestCertificates, settings: TLSSettings | None = None, origins=(), **config
    ) -> Listening:
        settings = settings if settings is not None else TLSSettings()
        broker = Broker(reactor, BrokerConfig(**config))
        brokers.append(broker)
        tls = ssl_endpoint(certs)
        identity = settings.use_identity_as_username
        factories = {
            "tcp": (TCP_ENDPOINT, MQTTFactory(broker, TCP_ENDPOINT)),
            "tls": (tls, MQTTFactory(broker, tls, identity)),
            "ws": (TCP_ENDPOINT, build_site(broker, "http " + TCP_ENDPOINT, origins)),
            "wss": (tls, build_site(broker, "http " + tls, origins, identity)),
        }
        found = {}
        for name, (description, factory) in factories.items():
            port = await server_endpoint(reactor, description, settings).listen(factory)
            ports.append(port)
            found[name] = port.getHost().port
        return Listening(broker, found)

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())
    for broker in brokers:
        _close_everything(broker)


# -- clients -------------------------------------------------------------------------------


class TPaho(Paho):
    """Paho over TLS and/or WebSocket; connects in a thread (the handshake needs the reactor)."""

    def __init__(self, port: int, *args, tls: dict | None = None, **kwargs) -> None:
        super().__init__(port, *args, **kwargs)
        if tls is not None:
            self.client.tls_set(**{k: (str(v) if v is not None else None) for k, v in tls.items()})

    async def connect(self, keepalive: int = 60, expect_success: bool = True, **kwargs):
        await deferToThread(self.client.connect, self.host, self.port, keepalive, **kwargs)
        self.client.loop_start()
        result = await get(self.connacks)
        if expect_success:
            assert not result[1].is_failure, f"CONNACK refused: {result[1]}"
        return result


@pytest.fixture
def tclients():
    """``tclients(port, client_id=..., tls={...}, transport="websockets")`` -> TPaho."""
    made = []

    def make(port: int, *args, **kwargs) -> TPaho:
        client = TPaho(port, *args, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        try:
            client.client.disconnect()
        except Exception:
            pass
        client.stop()


def client_context(certs: TestCertificates, cert=None, key=None, **versions) -> ssl.SSLContext:
    """A client SSLContext trusting the test CA, optionally with a client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(certs.ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    for name, value in versions.items():
        setattr(context, name, value)
    return context


def tls_exchange(
    port: int, context: ssl.SSLContext, send: bytes = b"", timeout: float = TIMEOUT
) -> bytes:
    """Blocking (run it in a thread): handshake, send ``send``, read until close or timeout.

    Raises ``ssl.SSLError`` / ``OSError`` when the server refuses the handshake (under TLS 1.3
    a refused client certificate shows up as an alert on the first read).
    """
    with socket.create_connection((HOST, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=HOST) as sock:
            if send:
                sock.sendall(send)
            data = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    chunk = sock.recv(4096)
                except TimeoutError:
                    break
                if not chunk:
                    break
                data += chunk
                if send and len(data) >= 4:  # a CONNACK is 4 bytes; enough for these tests
                    break
            return data


# -- WebSocket by hand (a plain or TLS socket doing the HTTP upgrade) ------------------------


class RawWebSocket:
    """A minimal blocking WebSocket client; use its methods through ``deferToThread``."""

    def __init__(self, port: int, context: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=HOST)
        self.sock = sock
        self.buffer = b""
        self.status: int | None = None
        self.headers: dict[str, str] = {}

    def handshake(self, protocols=("mqtt",), origin: str | None = None, path: str = "/mqtt") -> int:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {HOST}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if protocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
        if origin is not None:
            lines.append(f"Origin: {origin}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1]) if status_line else None
        self.headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        return self.status

    def send_frame(self, payload: bytes, opcode: int = 0x2, fin: bool = True) -> None:
        """One masked frame (client frames must be masked)."""
        first = (0x80 if fin else 0) | opcode
        length = len(payload)
        if length < 126:
            header = bytes([first, 0x80 | length])
        elif length < 65536:
            header = bytes([first, 0x80 | 126]) + length.to_bytes(2, "big")
        else:
            header = bytes([first, 0x80 | 127]) + length.to_bytes(8, "big")
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_binary(self, payload: bytes) -> None:
        self.send_frame(payload, 0x2)

    def send_text(self, text: str) -> None:
        self.send_frame(text.encode(), 0x1)

    def close_frame(self, code: int = 1000) -> None:
        self.send_frame(code.to_bytes(2, "big"), 0x8)

    def _exactly(self, count: int, deadline: float) -> bytes | None:
        """``count`` bytes; None on timeout; raises EOFError when the connection ended."""
        while len(self.buffer) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as error:
                raise EOFError(str(error)) from None
            if not chunk:
                raise EOFError("connection closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def read_frame(self, timeout: float = TIMEOUT):
        """(opcode, payload) of the next frame; None on timeout; EOFError when closed."""
        deadline = time.monotonic() + timeout
        head = self._exactly(2, deadline)
        if head is None:
            return None
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length in (126, 127):
            more = self._exactly(2 if length == 126 else 8, deadline)
            if more is None:
                return None
            length = int.from_bytes(more, "big")
        payload = self._exactly(length, deadline) if length else b""
        if payload is None:
            return None
        return opcode, payload

    def read_mqtt(self, count: int, timeout: float = TIMEOUT) -> bytes | None:
        """``count`` bytes of MQTT from binary frames; None on close or timeout."""
        data = b""
        deadline = time.monotonic() + timeout
        try:
            while len(data) < count:
                frame = self.read_frame(max(0.0, deadline - time.monotonic()))
                if frame is None:
                    return None
                opcode, payload = frame
                if opcode in (0x0, 0x2):
                    data += payload
                elif opcode == 0x8:
                    return None
        except EOFError:
            return None
        return data

    def closed(self, timeout: float = TIMEOUT):
        """Wait for the server to close: the close frame's code (1005 without one), 0 if the
        connection ended without a close frame, None if still open after ``timeout``."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                frame = self.read_frame(max(0.0, deadline - time.monotonic()))
                if frame is None:
                    return None
                opcode, payload = frame
                if opcode == 0x8:
                    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        except EOFError:
            return 0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@pytest.fixture
def websockets():
    """``await websockets(port, context=None)`` -> RawWebSocket, connected in a thread (the TLS
    handshake needs the reactor); closed at teardown."""
    made = []

    async def make(port: int, context: ssl.SSLContext | None = None) -> RawWebSocket:
        ws = await deferToThread(RawWebSocket, port, context)
        made.append(ws)
        return ws

    yield make
    for ws in made:
        ws.close()
