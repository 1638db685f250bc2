"""Test helpers: a paho-mqtt client whose callbacks land in queues, awaited without blocking the reactor."""

from __future__ import annotations

import queue
import socket
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread

TIMEOUT = 5.0


#: how often ``get`` looks at its queue while the reactor runs
POLL = 0.002


async def get(q: queue.Queue, timeout: float = TIMEOUT):
    """The next item of ``q``, waited for without blocking the reactor. It polls rather
    than wait in the reactor's thread pool: a test that gave up on several queues would
    leave pool threads waiting out their timeouts, and the next tests' waits would queue
    behind them and time out in turn, one failure making many."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return q.get_nowait()
        except queue.Empty:
            if time.monotonic() >= deadline:
                raise
        await sleep(POLL)


async def nothing_in(q: queue.Queue, seconds: float = 0.5) -> bool:
    """True if ``q`` stays empty for ``seconds`` (used to assert something does *not* arrive)."""
    await sleep(seconds)
    return q.empty()


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


def release(client: mqtt.Client) -> None:
    """Stop a paho client's network loop and close its sockets now: its connection and
    the loopback socket pair it wakes its loop with. Left to the garbage collector they
    stay open as long as anything refers to the client, and a full run then passes 1,024
    descriptors, where paho's ``select`` fails and every later client loses its CONNACK."""
    client.loop_stop()
    client._reset_sockets()  # paho has no public call that closes the socket pair


class Paho:
    """A paho-mqtt client running its network loop in its own thread."""

    def __init__(
        self,
        port: int,
        client_id: str = "",
        protocol=mqtt.MQTTv311,
        clean_session: bool = True,
        host: str = "127.0.0.1",
        transport: str = "tcp",
    ) -> None:
        self.port = port
        self.host = host
        kwargs = {}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = clean_session
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            transport=transport,
            **kwargs,
        )
        self.client.enable_logger(None)
        self.connacks: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.unsubacks: queue.Queue = queue.Queue()
        self.published: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        c = self.client
        c.on_connect = lambda cl, ud, flags, rc, props: self.connacks.put((flags, rc, props))
        c.on_message = lambda cl, ud, msg: self.messages.put(msg)
        c.on_subscribe = lambda cl, ud, mid, rcs, props: self.subacks.put((mid, rcs))
        c.on_unsubscribe = lambda cl, ud, mid, rcs, props: self.unsubacks.put((mid, rcs))
        c.on_publish = lambda cl, ud, mid, rc, props: self.published.put(mid)
        c.on_disconnect = lambda cl, ud, flags, rc, props: self.disconnects.put(rc)

    async def connect(self, keepalive: int = 60, expect_success: bool = True, **kwargs):
        """Connect and wait for CONNACK; returns (flags, reason code, properties)."""
        self.client.connect(self.host, self.port, keepalive=keepalive, **kwargs)
        self.client.loop_start()
        result = await get(self.connacks)
        if expect_success:
            assert not result[1].is_failure, f"CONNACK refused: {result[1]}"
        return result

    async def subscribe(self, topic, qos: int = 0, **kwargs):
        """Subscribe and wait for SUBACK; returns the list of reason codes."""
        _rc, mid = self.client.subscribe(topic, qos, **kwargs)
        got_mid, codes = await get(self.subacks)
        assert got_mid == mid
        return codes

    async def unsubscribe(self, topic):
        _rc, mid = self.client.unsubscribe(topic)
        got_mid, codes = await get(self.unsubacks)
        assert got_mid == mid
        return codes

    async def publish(self, topic: str, payload=b"", qos: int = 0, retain: bool = False, **kwargs):
        """Publish and, for QoS 1/2, wait until the broker acknowledged it."""
        info = self.client.publish(topic, payload, qos, retain, **kwargs)
        if qos:
            while True:
                mid = await get(self.published)
                if mid == info.mid:
                    break
        return info

    async def message(self, timeout: float = TIMEOUT) -> mqtt.MQTTMessage:
        return await get(self.messages, timeout)

    async def messages_for(self, seconds: float = 0.5) -> list:
        """Everything that arrives in the next ``seconds``."""
        await sleep(seconds)
        out = []
        while not self.messages.empty():
            out.append(self.messages.get_nowait())
        return out

    def disconnect(self) -> None:
        self.client.disconnect()

    def stop(self) -> None:
        """Stop the network loop and close the socket (used at teardown): a socket left
        to the garbage collector stays open for as long as anything refers to the client,
        and a full run then passes 1,024 descriptors, where paho's ``select`` fails."""
        release(self.client)

    def drop(self) -> None:
        """Close the socket without DISCONNECT (so the broker publishes the will)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class RawClient:
    """A plain socket for byte-level tests (malformed packets and the like)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self, count: int, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        data = b""
        deadline = time.monotonic() + timeout
        while len(data) < count and time.monotonic() < deadline:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                break
            data += chunk
        return data

    async def read(self, count: int, timeout: float = TIMEOUT) -> bytes:
        return await deferToThread(self._read, count, timeout)

    def _closed(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(4096)
                if not chunk:
                    return True
        except TimeoutError:
            return False
        except OSError:
            return True

    async def closed(self, timeout: float = TIMEOUT) -> bool:
        """True if the broker closes the connection within ``timeout`` (unread bytes are skipped)."""
        return await deferToThread(self._closed, timeout)

    def close(self) -> None:
        self.sock.close()


# -- byte-level helpers for RawClient tests ----------------------------------------------


def connect_bytes(
    client_id: str = "raw",
    clean_session: bool = True,
    keep_alive: int = 60,
    will=None,
    protocol_level: int = 4,
    username: str | None = None,
    password: bytes | None = None,
) -> bytes:
    """A valid CONNECT (``will`` is a ``mqtt_twisted.packets.Will``); level 3 uses "MQIsdp"."""
    from mqtt_twisted.packets import Connect, encode

    name = "MQIsdp" if protocol_level == 3 else "MQTT"
    packet = Connect(
        client_id, protocol_level, name, clean_session, keep_alive, username, password, will
    )
    return encode(packet, protocol_level)


def subscribe_bytes(topic_filter: str, qos: int = 0, packet_id: int = 1) -> bytes:
    """A valid MQTT 3.1.1 SUBSCRIBE with one filter."""
    from mqtt_twisted.packets import Subscribe, SubscriptionRequest, encode

    return encode(Subscribe(packet_id, [SubscriptionRequest(topic_filter, qos)]), 4)


async def read_whole(client: RawClient, timeout: float = TIMEOUT) -> bytes:
    """One whole packet as its bytes (fixed header included); b"" on timeout or close."""
    got = await deferToThread(_read_whole, client.sock, timeout)
    return got


def _read_whole(sock: socket.socket, timeout: float) -> bytes:
    got = _read_packet(sock, timeout)  # defined further down (shared helper)
    if got is None:
        return b""
    first, body = got
    return bytes([first]) + remaining_length(len(body)) + body


def no_reconnect(client: Paho) -> None:
    """Make ``client``'s network loop end, not reconnect, when the broker closes it."""
    record = client.client.on_disconnect

    def on_disconnect(cl, userdata, flags, rc, props) -> None:
        cl.disconnect()  # DISCONNECTING state: loop_forever returns instead of reconnecting
        record(cl, userdata, flags, rc, props)

    client.client.on_disconnect = on_disconnect


# -- byte-level MQTT 3.1.1 helpers for RawClient (appended for the publish/subscribe/flow tests) --

import attrs  # noqa: E402

PUBACK, PUBREC, PUBREL, PUBCOMP = 0x40, 0x50, 0x62, 0x70


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def packet(first_byte: int, body: bytes = b"") -> bytes:
    return bytes([first_byte]) + remaining_length(len(body)) + body


def connect_packet(
    client_id: str, clean: bool = True, keepalive: int = 60, level: int = 4
) -> bytes:
    name = b"MQTT" if level == 4 else b"MQIsdp"
    flags = 0x02 if clean else 0
    return packet(
        0x10,
        mqtt_string(name)
        + bytes([level, flags])
        + keepalive.to_bytes(2, "big")
        + mqtt_string(client_id),
    )


def subscribe_packet(packet_id: int, filters) -> bytes:
    """SUBSCRIBE with ``filters`` = [(topic filter, qos), ...]."""
    body = packet_id.to_bytes(2, "big")
    for topic_filter, qos in filters:
        body += mqtt_string(topic_filter) + bytes([qos])
    return packet(0x82, body)


def unsubscribe_packet(packet_id: int, filters) -> bytes:
    return packet(0xA2, packet_id.to_bytes(2, "big") + b"".join(mqtt_string(f) for f in filters))


def publish_packet(
    topic: str,
    payload: bytes = b"",
    qos: int = 0,
    packet_id: int | None = None,
    retain: bool = False,
    dup: bool = False,
) -> bytes:
    first = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    body = mqtt_string(topic)
    if qos:
        body += packet_id.to_bytes(2, "big")
    return packet(first, body + payload)


def ack_packet(first_byte: int, packet_id: int) -> bytes:
    """PUBACK / PUBREC / PUBREL / PUBCOMP (pass one of the constants above)."""
    return packet(first_byte, packet_id.to_bytes(2, "big"))


@attrs.define
class RawPublish:
    topic: str
    payload: bytes
    qos: int
    packet_id: int | None
    dup: bool
    retain: bool


def parse_publish(first_byte: int, body: bytes) -> RawPublish:
    assert first_byte >> 4 == 3, f"not a PUBLISH: {first_byte:#x}"
    qos = (first_byte >> 1) & 3
    length = int.from_bytes(body[:2], "big")
    topic = body[2 : 2 + length].decode()
    rest = body[2 + length :]
    packet_id = None
    if qos:
        packet_id, rest = int.from_bytes(rest[:2], "big"), rest[2:]
    return RawPublish(topic, rest, qos, packet_id, bool(first_byte & 0x08), bool(first_byte & 1))


def _read_packet(sock: socket.socket, timeout: float):
    """One whole packet as (first byte, body), or None on timeout / close."""
    deadline = time.monotonic() + timeout

    def exactly(count: int) -> bytes | None:
        data = b""
        while len(data) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            try:
                chunk = sock.recv(count - len(data))
            except TimeoutError:
                return None
            if not chunk:
                return None
            data += chunk
        return data

    first = exactly(1)
    if first is None:
        return None
    length, shift = 0, 0
    while True:
        byte = exactly(1)
        if byte is None:
            return None
        length |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            break
    body = exactly(length) if length else b""
    if body is None:
        return None
    return first[0], body


async def read_packet(client: RawClient, timeout: float = TIMEOUT):
    """The next whole packet from a RawClient as (first byte, body), or None (timeout / closed)."""
    return await deferToThread(_read_packet, client.sock, timeout)


async def raw_connect(client: RawClient, client_id: str, **kwargs) -> None:
    """Send CONNECT and check the CONNACK accepts it."""
    client.send(connect_packet(client_id, **kwargs))
    got = await read_packet(client)
    assert got is not None and got[0] == 0x20 and got[1][1] == 0, f"bad CONNACK {got!r}"


async def raw_subscribe(client: RawClient, filters, packet_id: int = 1) -> list[int]:
    """Send SUBSCRIBE and return the SUBACK return codes."""
    client.send(subscribe_packet(packet_id, filters))
    got = await read_packet(client)
    assert got is not None and got[0] == 0x90, f"expected SUBACK, got {got!r}"
    assert int.from_bytes(got[1][:2], "big") == packet_id
    return list(got[1][2:])


# -- MQTT 5 helpers (appended for the test_v5_* tests) ---------------------------------------


def record_publish_reasons(client: Paho) -> queue.Queue:
    """From now on also put (mid, reason code) of each acknowledged PUBLISH into a queue.

    paho reports the reason code of PUBACK (QoS 1) and PUBCOMP (QoS 2) to on_publish."""
    reasons = getattr(client, "publish_reasons", None)
    if reasons is None:
        reasons = client.publish_reasons = queue.Queue()

        def on_publish(cl, userdata, mid, rc, props) -> None:
            reasons.put((mid, rc))
            client.published.put(mid)

        client.client.on_publish = on_publish
    return reasons


async def publish_reason(
    client: Paho, topic: str, payload=b"", qos: int = 1, retain: bool = False, **kwargs
) -> int:
    """Publish at QoS 1/2 and return the reason code (int) the broker acknowledged it with."""
    reasons = record_publish_reasons(client)
    info = client.client.publish(topic, payload, qos, retain, **kwargs)
    while True:
        mid, rc = await get(reasons)
        if mid == info.mid:
            return rc.value if hasattr(rc, "value") else int(rc)


def v5_connect_bytes(
    client_id: str,
    clean_start: bool = True,
    keep_alive: int = 60,
    properties: dict | None = None,
    will=None,
) -> bytes:
    """An MQTT 5.0 CONNECT."""
    from mqtt_twisted.packets import Connect, encode

    return encode(
        Connect(
            client_id, 5, "MQTT", clean_start, keep_alive, will=will, properties=properties or {}
        ),
        5,
    )


def v5_bytes(packet_object) -> bytes:
    """Any packet object of mqtt_twisted.packets encoded as MQTT 5.0."""
    from mqtt_twisted.packets import encode

    return encode(packet_object, 5)


def decode_packet(first_byte: int, body: bytes, level: int = 5):
    """A packet read by read_packet, decoded as the client sees it (mqtt_twisted.packets)."""
    from mqtt_twisted.packets import Parser

    parser = Parser(protocol_level=level, client_side=True)
    parser.feed(bytes([first_byte]) + remaining_length(len(body)) + body)
    return parser.next_packet()


async def read_v5(client: RawClient, timeout: float = TIMEOUT):
    """The next packet from a raw MQTT 5.0 client, decoded; None on timeout or close."""
    got = await read_packet(client, timeout)
    return None if got is None else decode_packet(*got, level=5)


async def raw_v5_connect(client: RawClient, client_id: str, **kwargs):
    """Send an MQTT 5.0 CONNECT and check the CONNACK accepts it; returns the CONNACK."""
    client.send(v5_connect_bytes(client_id, **kwargs))
    connack = await read_v5(client)
    assert connack is not None and connack.return_code == 0, f"bad CONNACK {connack!r}"
    return connack


# -- more MQTT 5 helpers (appended for test_v5_connect/session/flow/aliases) -----------------


def paho_props(packet_type: str, **values):
    """A paho ``Properties`` for ``packet_type`` ("CONNECT", "PUBLISH", "WILLMESSAGE",
    "DISCONNECT", ...) with the given attributes (paho names: SessionExpiryInterval=60)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(getattr(PacketTypes, packet_type))
    for name, value in values.items():
        setattr(props, name, value)
    return props


def reason_int(rc) -> int:
    """A paho ReasonCode (or plain int) as an int."""
    return rc.value if hasattr(rc, "value") else int(rc)


async def wait_until(predicate, timeout: float = 3.0) -> None:
    """Wait (without blocking the reactor) until ``predicate()`` is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await sleep(0.02)
