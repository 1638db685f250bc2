"""Incremental (sans-I/O) packet parser."""

from __future__ import annotations

from typing import Any

from .constants import MQTT_5, PacketType, ReasonCode
from .decode import DECODERS
from .errors import PacketError, PacketTooLarge
from .properties import decode_properties
from .types import PubAck, Publish
from .wire import Reader, malformed

__all__ = ["Parser"]

_MAL = int(ReasonCode.MALFORMED_PACKET)
_PROTO = int(ReasonCode.PROTOCOL_ERROR)
T = PacketType


def _table(allowed: set[PacketType]) -> tuple[int, ...]:
    """Per packet type: 0 if it may be received, else the reason code to fail with."""
    out = []
    for t in range(16):
        if t in allowed:
            out.append(0)
        elif t == 0 or t == 15:
            out.append(_MAL)  # reserved type: 0 always, 15 in 3.x (spec 2.2.1 / 2.1.2)
        else:
            out.append(_PROTO)
    return tuple(out)


_CLIENT_TO_SERVER = {
    T.CONNECT, T.PUBLISH, T.PUBACK, T.PUBREC, T.PUBREL, T.PUBCOMP,
    T.SUBSCRIBE, T.UNSUBSCRIBE, T.PINGREQ, T.DISCONNECT,
}  # fmt: skip
_SERVER_TO_CLIENT = {
    T.CONNACK, T.PUBLISH, T.PUBACK, T.PUBREC, T.PUBREL, T.PUBCOMP,
    T.SUBACK, T.UNSUBACK, T.PINGRESP,
}  # fmt: skip

# Server side before CONNECT: only CONNECT [MQTT-3.1.0-1]; AUTH too is a
# protocol error there, it is not merely reserved.
_SERVER_NO_CONNECT = tuple(_MAL if t == 0 else (0 if t == T.CONNECT else _PROTO) for t in range(16))
_SERVER_3 = _table(_CLIENT_TO_SERVER)
_SERVER_5 = _table(_CLIENT_TO_SERVER | {T.AUTH})
_CLIENT_3 = _table(_SERVER_TO_CLIENT)
_CLIENT_5 = _table(_SERVER_TO_CLIENT | {T.DISCONNECT, T.AUTH})


def _bad_flags(b0: int, mqtt31: bool = False) -> bool:
    """Whether a first byte's flag nibble is invalid for its packet type.

    MQTT 3.1 (protocol level 3) sends PUBREL, SUBSCRIBE and UNSUBSCRIBE with QoS 1 and sets
    DUP when it re-sends them (3.1 spec, section 2.1 "DUP"), so DUP is allowed there; the
    fixed-flags rules [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1] are 3.1.1's.
    """
    ptype = b0 >> 4
    flags = b0 & 0x0F
    if ptype == T.PUBLISH:
        qos = (flags >> 1) & 3
        return qos == 3 or (qos == 0 and bool(flags & 0x08))  # [MQTT-3.3.1-4], [MQTT-3.3.1-2]
    if ptype in (T.PUBREL, T.SUBSCRIBE, T.UNSUBSCRIBE):
        if mqtt31:
            flags &= ~0x08
        return flags != 0x02  # [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1]
    return flags != 0  # [MQTT-2.2.2-1/2]


#: _BAD_FLAGS[first byte] is True when its fixed header flags are invalid (3.1.1 and 5.0).
_BAD_FLAGS = tuple(_bad_flags(b) for b in range(256))
#: the same for MQTT 3.1, where re-sent PUBREL / SUBSCRIBE / UNSUBSCRIBE carry DUP
_BAD_FLAGS_31 = tuple(_bad_flags(b, mqtt31=True) for b in range(256))


class Parser:
    """Incremental MQTT packet parser.

    Server side by default (decodes what a client may send); with
    ``client_side=True`` it decodes server-to-client packets and needs
    ``protocol_level``. After it raises, the parser stays failed.
    """

    __slots__ = (
        "protocol_level",
        "max_packet_size",
        "client_side",
        "_buf",
        "_pos",
        "_need",
        "_hl",
        "_error",
        "_tlevel",
        "_types",
        "_flags",
    )

    def __init__(
        self,
        protocol_level: int | None = None,
        max_packet_size: int | None = None,
        client_side: bool = False,
    ) -> None:
        if client_side and protocol_level is None:
            raise ValueError("a client-side Parser needs a protocol_level")
        self.protocol_level = protocol_level
        self.max_packet_size = max_packet_size
        self.client_side = client_side
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._need = 0  # total size of the packet at _pos once its header was validated
        self._hl = 0  # its fixed header length
        self._error: PacketError | None = None
        self._tlevel: Any = object()  # protocol level _types was computed for
        self._types: tuple[int, ...] = ()
        self._flags: tuple[bool, ...] = _BAD_FLAGS

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as packets (part of a packet, or more)."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (any chunking)."""
        if not data or self._error is not None:
            return
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            # Everything consumed: adopt the chunk itself, no copy.
            self._buf = data if data.__class__ is bytes else bytes(data)
            self._pos = 0
        elif buf.__class__ is bytes:
            nb = bytearray(memoryview(buf)[pos:])
            nb += data
            self._buf = nb
            self._pos = 0
        else:
            # A bytearray only ever holds an incomplete packet from offset 0.
            buf += data

    def _type_table(self) -> tuple[int, ...]:
        level = self.protocol_level
        self._tlevel = level
        if self.client_side:
            table = _CLIENT_5 if level == MQTT_5 else _CLIENT_3
        elif level is None:
            table = _SERVER_NO_CONNECT
        else:
            table = _SERVER_5 if level == MQTT_5 else _SERVER_3
        self._types = table
        self._flags = _BAD_FLAGS_31 if level == 3 else _BAD_FLAGS
        return table

    def _type_error(self, b0: int) -> PacketError:
        """The error for a first byte whose type or flags are invalid."""
        ptype = b0 >> 4
        err = self._types[ptype]
        if err == _PROTO:
            return PacketError(f"unexpected packet type {ptype}", err)
        if err:
            return malformed(f"reserved packet type {ptype}")  # spec 2.1.2
        if ptype == 3:
            if b0 & 0x06 == 0x06:
                return malformed("PUBLISH QoS 3")  # [MQTT-3.3.1-4]
            return malformed("PUBLISH QoS 0 with DUP set")  # [MQTT-3.3.1-2]
        return malformed("invalid fixed header flags")  # [MQTT-2.2.2-1/2]

    def next_packet(self) -> Any:
        """Return the next complete packet, or None; raises PacketError on a bad one."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        level = self.protocol_level
        try:
            need = self._need
            if need:
                if len(buf) - pos < need:
                    return None
                total = need
                hl = self._hl
                self._need = 0
                b0 = buf[pos]
            else:
                avail = len(buf) - pos
                if avail < 1:
                    return None
                b0 = buf[pos]
                if level != self._tlevel:
                    self._type_table()
                # Packet type allowed here, fixed header flags valid [MQTT-2.2.2-1/2]:
                if self._types[b0 >> 4] or self._flags[b0]:
                    raise self._type_error(b0)
                if avail < 2:
                    return None
                if b0 == 0x40 and buf[pos + 1] == 2 and avail >= 4:
                    # PUBACK fast path: one per QoS 1 message a subscriber receives
                    acked = (buf[pos + 2] << 8) | buf[pos + 3]
                    limit = self.max_packet_size
                    # packet id 0 and a limit below 4 bytes: reported below [MQTT-2.3.1-1]
                    if acked and (limit is None or limit >= 4):
                        self._pos = pos + 4
                        return PubAck(acked, 0, {})
                # Remaining length: variable byte integer of at most 4 bytes [MQTT-1.5.5-1].
                b = buf[pos + 1]
                if b < 0x80:
                    total = b + 2
                    hl = 2
                else:
                    rl = b & 0x7F
                    i = pos + 2
                    shift = 7
                    n = len(buf)
                    while True:
                        if i >= n:
                            return None
                        b = buf[i]
                        i += 1
                        rl |= (b & 0x7F) << shift
                        if not b & 0x80:
                            break
                        if i - pos >= 5:
                            raise malformed("remaining length longer than 4 bytes")  # 2.1.4
                        shift += 7
                    hl = i - pos
                    total = hl + rl
                limit = self.max_packet_size
                if limit is not None and total > limit:
                    raise PacketTooLarge(f"packet of {total} bytes exceeds the maximum of {limit}")
                if avail < total:
                    self._need = total
                    self._hl = hl
                    return None
            if buf.__class__ is not bytes:
                # A complete packet is buffered: freeze once so slices are bytes.
                buf = self._buf = bytes(buf)
            start = pos + hl
            end = pos + total
            self._pos = end
            if b0 & 0xF0 != 0x30:
                pkt = DECODERS[b0 >> 4](buf, start, end, b0, level)  # type: ignore[arg-type]
                if b0 >> 4 == 1 and not self.client_side:
                    self.protocol_level = pkt.protocol_level
                return pkt

            # PUBLISH fast path (spec 3.3).
            if end - start < 2:
                raise malformed("PUBLISH truncated")
            p = start + 2 + ((buf[start] << 8) | buf[start + 1])
            if p > end:
                raise malformed("PUBLISH topic exceeds the packet")
            try:
                topic = buf[start + 2 : p].decode("utf-8")
            except UnicodeDecodeError:
                raise malformed("invalid UTF-8 topic name") from None  # [MQTT-1.5.3-1]
            if "\x00" in topic:
                raise malformed("topic name contains U+0000")  # [MQTT-1.5.3-2]
            if b0 & 0x06:
                if p + 2 > end:
                    raise malformed("PUBLISH truncated")
                pid: int | None = (buf[p] << 8) | buf[p + 1]
                if not pid:
                    raise malformed("packet identifier 0")  # [MQTT-2.3.1-1]
                p += 2
                if level != 5 and (b0 == 0x32 or b0 == 0x34):  # 3.x, no retain, no DUP
                    payload = buf[p:end]  # one copy, shared by the packet and its raw form
                    return Publish(
                        topic,
                        payload,
                        (b0 >> 1) & 3,
                        False,
                        False,
                        pid,
                        {},
                        (buf[pos : p - 2], payload),
                    )
            else:
                pid = None
            if level == 5:
                if p >= end:
                    raise malformed("PUBLISH property length missing")
                if buf[p]:
                    r = Reader(buf, p, end)
                    props = decode_properties(r, 3)
                    p = r.pos
                else:
                    props = {}
                    p += 1
            else:
                if b0 == 0x30:  # 3.x, QoS 0, no retain: forwarded byte for byte
                    payload = buf[p:end]
                    return Publish(topic, payload, 0, False, False, None, {}, (buf[pos:p], payload))
                props = {}
            return Publish(topic, buf[p:end], (b0 >> 1) & 3, b0 & 1 == 1, b0 & 8 == 8, pid, props)
        except PacketError as e:
            self._error = e
            raise
        except (IndexError, ValueError) as e:  # defensive: never leak other errors
            self._error = PacketError(f"internal: {e!r}", _MAL)
            raise self._error from e
