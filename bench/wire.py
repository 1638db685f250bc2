"""Just enough MQTT 3.1.1 to drive a broker from raw sockets with pre-encoded packets.

The load generator never runs a codec in its hot loops: every PUBLISH of a scenario has
the same size, so a subscriber counts deliveries by bytes and checks the fixed-header
bytes with a strided slice (``data[start::size]``), and a QoS 1 subscriber builds its
PUBACKs with strided slice assignments; all of that runs at C speed.
"""

from __future__ import annotations

import socket
import sys
from array import array

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


def connect_packet(client_id: str, clean: bool = True) -> bytes:
    """CONNECT, MQTT 3.1.1, keep alive 0 (no PINGREQ); ``clean`` False: a persistent session."""
    flags = b"\x02" if clean else b"\x00"
    return packet(0x10, _str(b"MQTT") + b"\x04" + flags + b"\x00\x00" + _str(client_id.encode()))


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    return packet(0x82, packet_id.to_bytes(2, "big") + _str(topic_filter.encode()) + bytes([qos]))


def publish_packet(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0) -> bytes:
    body = _str(topic.encode())
    if qos:
        body += packet_id.to_bytes(2, "big")
    return packet(0x30 | (qos << 1), body + payload)


DISCONNECT = b"\xe0\x00"
CONNACK_OK = b"\x20\x02\x00\x00"
CONNACK_SESSION_PRESENT = b"\x20\x02\x01\x00"


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
    clean: bool = True,
) -> socket.socket:
    """Connect (and subscribe); returns a blocking socket with a timeout, handshake done.

    ``clean`` False: a persistent session (clean session 0), whose CONNACK may say the
    session was present; without ``topic_filter`` nothing is subscribed, and what the broker
    kept for the session may follow the CONNACK at once.
    """
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
            sock.sendall(connect_packet(client_id, clean) + sub)
        else:
            sock.sendall(connect_packet(client_id, clean))
        connack = recv_exactly(sock, 4)
        if connack != CONNACK_OK and (clean or connack != CONNACK_SESSION_PRESENT):
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


# -- numbered QoS 1 messages (overload scenarios) ------------------------------------

#: packet ids follow the sequence number: seq % PACKET_IDS + 1
PACKET_IDS = 65535


class NumberedPublishes:
    """QoS 1 PUBLISHes of one topic whose payload names the message.

    The 64-byte payload starts with the publisher id and the sequence number (4 bytes each,
    little-endian), then padding, so every packet has the same size and a subscriber reads
    the numbers of a whole batch with strided slices (``sequence_numbers``). The packet id
    is ``seq % 65535 + 1``: a PUBACK names its message as long as fewer than 65,535 are
    unacknowledged (``acknowledged_seq``).
    """

    def __init__(self, topic: str, publisher_id: int, payload_size: int = 64) -> None:
        topic_field = _str(topic.encode())
        self.prefix = bytes([0x32]) + varint(len(topic_field) + 2 + payload_size) + topic_field
        self.publisher = publisher_id.to_bytes(4, "little")
        self.padding = b"n" * (payload_size - 8)
        self.size = len(self.prefix) + 2 + payload_size

    def encode(self, first: int, count: int) -> bytes:
        """Messages ``first`` .. ``first + count - 1``, back to back."""
        prefix, publisher, padding = self.prefix, self.publisher, self.padding
        return b"".join(
            prefix
            + (seq % PACKET_IDS + 1).to_bytes(2, "big")
            + publisher
            + seq.to_bytes(4, "little")
            + padding
            for seq in range(first, first + count)
        )


def acknowledged_seq(packet_id: int, last_sent: int) -> int:
    """The sequence number a PUBACK's packet id stands for: the latest one sent with that id."""
    return last_sent - ((last_sent - (packet_id - 1)) % PACKET_IDS)


def strided_u32(chunk: bytes, offset: int, stride: int) -> array:
    """The little-endian uint32 at ``offset`` of every ``stride``-byte packet of ``chunk``."""
    raw = bytearray(4 * (len(chunk) // stride))
    for j in range(4):
        raw[j::4] = chunk[offset + j :: stride]
    values = array("I")
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def pubacks(chunk: bytes, packet_id_at: int, size: int) -> bytes:
    """One PUBACK for each ``size``-byte PUBLISH of ``chunk`` (packet id at ``packet_id_at``)."""
    n = len(chunk) // size
    acks = bytearray(4 * n)
    acks[0::4] = b"\x40" * n
    acks[1::4] = b"\x02" * n
    acks[2::4] = chunk[packet_id_at::size]
    acks[3::4] = chunk[packet_id_at + 1 :: size]
    return bytes(acks)
