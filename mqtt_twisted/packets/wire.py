"""Low-level wire primitives shared by the encoder and decoder.

Data representations are those of MQTT spec section 1.5: two/four byte
integers, UTF-8 strings, variable byte integers, binary data, string pairs.
"""

from __future__ import annotations

from .constants import ReasonCode
from .errors import PacketError

__all__ = ["encode_varint"]

MAX_VARINT = 268_435_455  # 0xFF 0xFF 0xFF 0x7F, spec 1.5.5
MALFORMED = ReasonCode.MALFORMED_PACKET
PROTOCOL_ERROR = ReasonCode.PROTOCOL_ERROR

#: ``BYTE[i] == bytes((i,))`` without a per-call allocation.
BYTE: tuple[bytes, ...] = tuple(bytes((i,)) for i in range(256))


def _varint_uncached(n: int) -> bytes:
    out = bytearray()
    while True:
        digit = n & 0x7F
        n >>= 7
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


#: Precomputed encodings of every one- and two-byte variable byte integer.
VARINT_SMALL: tuple[bytes, ...] = tuple(_varint_uncached(i) for i in range(16384))


def encode_varint(n: int) -> bytes:
    """Encode ``n`` (0..268435455) as an MQTT variable byte integer (spec 1.5.5)."""
    if 0 <= n < 16384:
        return VARINT_SMALL[n]
    if n < 0 or n > MAX_VARINT:
        raise PacketError(f"variable byte integer out of range: {n}")
    return _varint_uncached(n)


def encode_string(s: str) -> bytes:
    """Encode a UTF-8 string with its two-byte length prefix (spec 1.5.4)."""
    b = s.encode("utf-8")
    n = len(b)
    if n > 0xFFFF:
        raise PacketError("UTF-8 string longer than 65535 bytes")
    return n.to_bytes(2, "big") + b


def encode_binary(b: bytes) -> bytes:
    """Encode binary data with its two-byte length prefix (spec 1.5.6)."""
    n = len(b)
    if n > 0xFFFF:
        raise PacketError("binary data longer than 65535 bytes")
    return n.to_bytes(2, "big") + bytes(b)


def malformed(message: str) -> PacketError:
    """A PacketError with reason code 0x81 (Malformed Packet)."""
    return PacketError(message, MALFORMED)


def protocol_error(message: str) -> PacketError:
    """A PacketError with reason code 0x82 (Protocol Error)."""
    return PacketError(message, PROTOCOL_ERROR)


def decode_utf8(raw: bytes) -> str:
    """Decode a UTF-8 string's bytes, enforcing [MQTT-1.5.3-1] and [MQTT-1.5.3-2]."""
    try:
        s = raw.decode("utf-8")  # strict: also rejects surrogates [MQTT-1.5.3-1]
    except UnicodeDecodeError:
        raise malformed("invalid UTF-8 string") from None  # [MQTT-1.5.3-1]
    if "\x00" in s:
        raise malformed("UTF-8 string contains U+0000")  # [MQTT-1.5.3-2]
    return s


class Reader:
    """Bounded cursor over ``buf[pos:end]``; every overrun raises Malformed Packet."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes, pos: int, end: int) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end

    def remaining(self) -> int:
        """Number of unread bytes."""
        return self.end - self.pos

    def u8(self) -> int:
        """Read one byte."""
        p = self.pos
        if p >= self.end:
            raise malformed("packet truncated")
        self.pos = p + 1
        return self.buf[p]

    def u16(self) -> int:
        """Read a two byte integer (spec 1.5.2)."""
        p = self.pos
        q = p + 2
        if q > self.end:
            raise malformed("packet truncated")
        self.pos = q
        b = self.buf
        return (b[p] << 8) | b[p + 1]

    def u32(self) -> int:
        """Read a four byte integer (spec 1.5.3)."""
        p = self.pos
        q = p + 4
        if q > self.end:
            raise malformed("packet truncated")
        self.pos = q
        return int.from_bytes(self.buf[p:q], "big")

    def varint(self) -> int:
        """Read a variable byte integer of at most four bytes (spec 1.5.5)."""
        buf = self.buf
        end = self.end
        p = self.pos
        value = 0
        shift = 0
        for _ in range(4):
            if p >= end:
                raise malformed("packet truncated in variable byte integer")
            b = buf[p]
            p += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                self.pos = p
                return value
            shift += 7
        raise malformed("variable byte integer longer than 4 bytes")  # [MQTT-1.5.5-1]

    def take(self, n: int) -> bytes:
        """Read ``n`` raw bytes."""
        p = self.pos
        q = p + n
        if q > self.end:
            raise malformed("packet truncated")
        self.pos = q
        return bytes(self.buf[p:q])

    def binary(self) -> bytes:
        """Read two-byte-length-prefixed binary data (spec 1.5.6)."""
        return self.take(self.u16())

    def string(self) -> str:
        """Read a two-byte-length-prefixed UTF-8 string (spec 1.5.4)."""
        return decode_utf8(self.take(self.u16()))

    def rest(self) -> bytes:
        """Read every remaining byte."""
        p = self.pos
        self.pos = self.end
        return bytes(self.buf[p : self.end])

    def finish(self) -> None:
        """Assert the body was consumed exactly."""
        if self.pos != self.end:
            raise malformed("unexpected bytes at the end of the packet")
