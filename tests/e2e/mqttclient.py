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


async def get(q: queue.Queue, timeout: float = TIMEOUT):
    """The next item of ``q``, waited for in a thread so the reactor keeps running."""
    try:
        return q.get_nowait()
    except queue.Empty:
        return await deferToThread(q.get, True, timeout)


async def nothing_in(q: queue.Queue, seconds: float = 0.5) -> bool:
    """True if ``q`` stays empty for ``seconds`` (used to assert something does *not* arrive)."""
    await sleep(seconds)
    return q.empty()


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


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
        """Stop the network loop (used at teardown)."""
        self.client.loop_stop()

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
        except (socket.timeout, TimeoutError):
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
    packet = Connect(client_id, protocol_level, name, clean_session, keep_alive,
                     username, password, will)
    return encode(packet, protocol_level)


def subscribe_bytes(topic_filter: str, qos: int = 0, packet_id: int = 1) -> bytes:
    """A valid MQTT 3.1.1 SUBSCRIBE with one filter."""
    from mqtt_twisted.packets import Subscribe, SubscriptionRequest, encode

    return encode(Subscribe(packet_id, [SubscriptionRequest(topic_filter, qos)]), 4)


async def read_packet(client: RawClient, timeout: float = TIMEOUT) -> bytes:
    """One whole packet (fixed header included) from ``client``; b"" if the connection closed."""
    head = await client.read(2, timeout)
    if len(head) < 2:
        return head
    length, shift, header = head[1] & 0x7F, 7, head
    while header[-1] & 0x80:
        more = await client.read(1, timeout)
        if not more:
            return header
        header += more
        length |= (more[0] & 0x7F) << shift
        shift += 7
    return header + (await client.read(length, timeout) if length else b"")


def parse_publish(packet: bytes) -> tuple[int, str, int | None, bytes]:
    """(first byte, topic, packet id or None, payload) of a PUBLISH read by :func:`read_packet`."""
    index = 1
    while packet[index] & 0x80:
        index += 1
    index += 1
    topic_length = int.from_bytes(packet[index:index + 2], "big")
    topic = packet[index + 2:index + 2 + topic_length].decode()
    index += 2 + topic_length
    packet_id = None
    if packet[0] & 0x06:
        packet_id = int.from_bytes(packet[index:index + 2], "big")
        index += 2
    return packet[0], topic, packet_id, packet[index:]


def no_reconnect(client: Paho) -> None:
    """Make ``client``'s network loop end, not reconnect, when the broker closes it."""
    record = client.client.on_disconnect

    def on_disconnect(cl, userdata, flags, rc, props) -> None:
        cl.disconnect()  # DISCONNECTING state: loop_forever returns instead of reconnecting
        record(cl, userdata, flags, rc, props)

    client.client.on_disconnect = on_disconnect
