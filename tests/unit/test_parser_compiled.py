"""The compiled parser (mypyc, tools/build_speedups.py) against the pure-Python one.

The broker uses the compiled parser when it was built for this very ``parser.py`` (see
mqtt_twisted.packets.speedups); the rest of the suite then runs on it. Here both parse the
same streams, valid and mutated, of every packet type at every level, to either side, in
the same random chunkings: they must return equal packets and fail with the same reason
code and message at the same point.

CI builds the compiled parser and sets MQTT_TWISTED_REQUIRE_COMPILED=1, so a build that
silently fell back to pure Python fails here instead of being skipped.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from mqtt_twisted import packets
from mqtt_twisted.packets import MQTT_5, PacketError, encode
from mqtt_twisted.packets.parser import Parser as PureParser
from mqtt_twisted.packets.speedups import compiled_parser, parser_implementation

from .test_fuzz import (
    ALL_TYPES,
    CLIENT_TYPES,
    LEVELS,
    SERVER_TYPES,
    RandomSource,
    chunked,
    gen_connect,
    gen_packet,
    mutate,
)

COMPILED = compiled_parser()

if COMPILED is None:
    if os.environ.get("MQTT_TWISTED_REQUIRE_COMPILED"):
        pytest.fail(f"the compiled parser is required here: {parser_implementation()}")
    pytest.skip(f"packet parser: {parser_implementation()}", allow_module_level=True)


def outcome(parser: Any, chunks: list[bytes]) -> list[Any]:
    """Everything a parser returns for ``chunks``, fed one by one: packets, and the error
    (reason code, message) once it fails."""
    seen: list[Any] = []
    for chunk in chunks:
        parser.feed(chunk)
        try:
            while (packet := parser.next_packet()) is not None:
                seen.append(packet)
        except PacketError as error:
            seen.append(("error", int(error.reason_code), error.message))
            return seen
        seen.append(("buffered", parser.buffered))
    return seen


def both(level: int | None, client_side: bool, limit: int | None, chunks: list[bytes]) -> None:
    pure = PureParser(level, limit, client_side=client_side)
    compiled = COMPILED(level, limit, client_side=client_side)
    assert outcome(compiled, chunks) == outcome(pure, chunks), chunks


def test_the_broker_uses_the_compiled_parser():
    assert packets.Parser is COMPILED
    assert parser_implementation() == "compiled (mypyc)"


def test_valid_and_mutated_streams_parse_alike():
    s = RandomSource(20261130)
    for level in LEVELS:
        for client_side in (False, True):
            types = SERVER_TYPES if client_side else CLIENT_TYPES
            for _ in range(300):
                stream = []
                if not client_side and s.chance(2):
                    stream.append(encode(gen_connect(s, level), level))
                for _ in range(s.int(1, 4)):
                    ptype = s.choice(ALL_TYPES) if s.chance(8) else s.choice(types)
                    stream.append(encode(gen_packet(s, ptype, level), level))
                wire = b"".join(stream) if s.chance(3) else mutate(s, stream, level)
                limit = s.choice((5, 64, 1000)) if s.chance(6) else None
                parser_level = level if client_side or not stream[0][0] == 0x10 else None
                both(parser_level, client_side, limit, chunked(s, wire))


def test_random_bytes_parse_alike():
    s = RandomSource(7)
    for _ in range(1500):
        level = s.choice(LEVELS)
        client_side = s.bool()
        raw = s.bytes(200)
        both(level if client_side or s.bool() else None, client_side, None, chunked(s, raw))


def test_a_puback_burst_parses_alike_at_every_level():
    """The PUBACK fast path: identifiers 1 to 300, one of them 0 (malformed [MQTT-2.3.1-1])."""
    for level in (4, MQTT_5):
        wire = b"".join(b"\x40\x02" + i.to_bytes(2, "big") for i in range(1, 300))
        both(level, False, None, [wire, b"\x40\x02\x00\x00"])


def test_a_puback_over_the_maximum_packet_size_is_refused_alike():
    """A 4-byte PUBACK to a parser whose Maximum Packet Size is 3 bytes: too large, by both
    parsers (the fast path does not skip the limit)."""
    for parser_class in (PureParser, COMPILED):
        parser = parser_class(4, 3)
        parser.feed(b"\x40\x02\x00\x01")
        with pytest.raises(PacketError) as error:
            parser.next_packet()
        assert error.value.reason_code == 0x95  # Packet too large
