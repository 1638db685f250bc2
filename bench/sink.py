"""A trivial MQTT relay used to measure the load generator's ceiling (not a broker).

``python bench/sink.py PORT``: answers CONNECT with CONNACK and SUBSCRIBE with SUBACK, and
forwards every PUBLISH byte-for-byte to every subscribed connection, ignoring topics
(each bench scenario has one topic family). It relies on the bench's fixed-size PUBLISHes:
the first PUBLISH of a connection gives the size, after which whole packets are forwarded
in bulk and QoS 1 PUBACKs are built with strided slices, so it costs almost nothing per
message. Whatever a subscriber sends after SUBSCRIBE (PUBACKs) is discarded.
"""

from __future__ import annotations

import selectors
import socket
import sys
import time


class Conn:
    __slots__ = ("sock", "buf", "size", "qos", "pid_at", "subscriber", "connected")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.size = 0
        self.qos = 0
        self.pid_at = 0
        self.subscriber = False
        self.connected = False


def main() -> None:
    port = int(sys.argv[1])
    lifetime = float(sys.argv[2]) if len(sys.argv) > 2 else 3600.0
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(1024)
    server.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    subscribers: list[Conn] = []
    conns: dict[socket.socket, Conn] = {}

    def close(conn: Conn) -> None:
        sel.unregister(conn.sock)
        conns.pop(conn.sock, None)
        if conn.subscriber:
            subscribers.remove(conn)
        conn.sock.close()

    def forward(data: bytes) -> None:
        for sub in list(subscribers):
            try:
                sub.sock.sendall(data)
            except OSError:
                close(sub)

    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        for key, _ in sel.select(1.0):
            if key.fileobj is server:
                for _ in range(256):
                    try:
                        sock, _addr = server.accept()
                    except BlockingIOError:
                        break
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.settimeout(10.0)
                    conn = conns[sock] = Conn(sock)
                    sel.register(sock, selectors.EVENT_READ)
                continue
            conn = conns[key.fileobj]
            try:
                data = conn.sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                close(conn)
                continue
            if conn.subscriber:
                continue  # PUBACKs (or DISCONNECT): discarded
            buf = conn.buf
            buf += data
            try:
                handle(conn, buf, subscribers, forward)
            except OSError:
                close(conn)


def handle(conn: Conn, buf: bytearray, subscribers: list, forward) -> None:
    for _ in range(1000):  # control packets one by one, PUBLISHes in bulk
        if conn.size:
            n = len(buf) // conn.size
            if n:
                chunk = bytes(buf[: n * conn.size])
                del buf[: n * conn.size]
                forward(chunk)
                if conn.qos:
                    acks = bytearray(4 * n)
                    acks[0::4] = b"\x40" * n
                    acks[1::4] = b"\x02" * n
                    acks[2::4] = chunk[conn.pid_at :: conn.size][:n]
                    acks[3::4] = chunk[conn.pid_at + 1 :: conn.size][:n]
                    conn.sock.sendall(acks)
            return
        if len(buf) < 2:
            return
        rl, i, mult = 0, 1, 1
        while i < len(buf) and i < 5:
            b = buf[i]
            rl += (b & 0x7F) * mult
            mult <<= 7
            i += 1
            if not b & 0x80:
                break
        else:
            return
        total = i + rl
        if len(buf) < total:
            return
        ptype = buf[0] >> 4
        if ptype == 3:
            conn.size = total
            conn.qos = (buf[0] >> 1) & 3
            conn.pid_at = i + 2 + ((buf[i] << 8) | buf[i + 1])
            continue  # handled in bulk above, this packet included
        body = bytes(buf[i:total])
        del buf[:total]
        if ptype == 1:
            conn.sock.sendall(b"\x20\x02\x00\x00")
        elif ptype == 8:
            conn.sock.sendall(b"\x90\x03" + body[:2] + bytes([body[-1] & 3]))
            conn.subscriber = True
            subscribers.append(conn)
            return
        elif ptype == 12:
            conn.sock.sendall(b"\xd0\x00")


if __name__ == "__main__":
    main()
