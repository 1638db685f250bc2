"""Just enough MQTT 3.1.1 to drive a broker from raw sockets with pre-encoded packets.

The load generator never runs a codec in its hot loops: every PUBLISH of a scenario has
the same size, so a subscriber counts deliveries by bytes and checks the fixed-header
bytes with a strided slice (``data[start::size]``), and a QoS 1 subscriber builds its
PUBACKs with strided slice assignments; all of that runs at C speed.
"""

from __future__ import annotations

import socket

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _str(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def packet(b0: int, body: bytes) -> bytes:
    return bytes([b0]) + varint(len(body)) + body


def connect_packet(client_id: str) -> bytes:
    # protocol name, level 4 (3.1.1), flags: clean session, keep alive 0 (no PINGREQ)
    return packet(0x10, _str(b"MQTT") + b"\x04\x02\x00\x00" + _str(client_id.encode()))


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    return packet(0x82, packet_id.to_bytes(2, "big") + _str(topic_filter.encode()) + bytes([qos]))


def publish_packet(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0) -> bytes:
    body = _str(topic.encode())
    if qos:
        body += packet_id.to_bytes(2, "big")
    return packet(0x30 | (qos << 1), body + payload)


DISCONNECT = b"\xe0\x00"
CONNACK_OK = b"\x20\x02\x00\x00"


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    for _ in range(1000):  # bounded: each recv returns >= 1 byte or raises
        if len(data) >= n:
            break
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection during the handshake")
        data += chunk
    return data


def open_client(
    port: int,
    client_id: str,
    topic_filter: str | None = None,
    qos: int = 0,
    source: str | None = None,
    timeout: float = 10.0,
    pipelined: bool = False,
) -> socket.socket:
    """Connect (and subscribe); returns a blocking socket with a timeout, handshake done."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source is not None:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sub = subscribe_packet(1, topic_filter, qos) if topic_filter is not None else b""
        if pipelined and sub:
            sock.sendall(connect_packet(client_id) + sub)
        else:
            sock.sendall(connect_packet(client_id))
        connack = recv_exactly(sock, 4)
        if connack != CONNACK_OK:
            raise ConnectionError(f"{client_id}: CONNACK {connack!r}")
        if sub:
            if not pipelined:
                sock.sendall(sub)
            suback = recv_exactly(sock, 5)
            if suback[:4] != b"\x90\x03\x00\x01" or suback[4] >= 0x80:
                raise ConnectionError(f"{client_id}: SUBACK {suback!r}")
        return sock
    except BaseException:
        sock.close()
        raise
