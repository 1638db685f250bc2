"""Hand-made wire bytes and parse helpers shared by the codec rule tests."""

from __future__ import annotations

from typing import Any

import pytest

from mqtt_twisted.packets import PacketError, Parser, ReasonCode, encode_varint

MAL = ReasonCode.MALFORMED_PACKET
PROTO = ReasonCode.PROTOCOL_ERROR


def frame(b0: int, body: bytes) -> bytes:
    """A packet: first byte, remaining length, body."""
    return bytes([b0]) + encode_varint(len(body)) + body


def s(text: str | bytes) -> bytes:
    """An MQTT string (2-byte length + bytes)."""
    raw = text.encode() if isinstance(text, str) else text
    return len(raw).to_bytes(2, "big") + raw


def connect(
    name: bytes = b"MQTT",
    level: int = 4,
    flags: int = 0x02,
    props: bytes = b"\x00",
    payload: bytes = s("cid"),
) -> bytes:
    """A CONNECT built by hand (keep alive 60)."""
    body = s(name) + bytes([level, flags]) + b"\x00\x3c"
    if level == 5:
        body += props
    return frame(0x10, body + payload)


def parse(data: bytes, level: int | None = None, **kw: Any) -> list[Any]:
    """Every packet a server-side (by default) Parser decodes from ``data``."""
    parser = Parser(level, **kw)
    parser.feed(data)
    out = []
    while (pkt := parser.next_packet()) is not None:
        out.append(pkt)
    return out


def fails(data: bytes, reason: int, level: int | None = None, **kw: Any) -> PacketError:
    """Assert that parsing ``data`` raises PacketError with ``reason``."""
    with pytest.raises(PacketError) as info:
        parse(data, level, **kw)
    assert info.value.reason_code == reason, info.value
    return info.value
