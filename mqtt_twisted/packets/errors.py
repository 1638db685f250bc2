"""Exceptions raised by the codec."""

from __future__ import annotations

from .constants import ReasonCode

__all__ = ["PacketError", "PacketTooLarge", "UnsupportedProtocolVersion"]


class PacketError(Exception):
    """A malformed or illegal packet; ``reason_code`` says which (0x81 by default)."""

    def __init__(self, message: str, reason_code: int = ReasonCode.MALFORMED_PACKET) -> None:
        super().__init__(message)
        self.message = message
        self.reason_code = reason_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason_code=0x{int(self.reason_code):02X})"


class PacketTooLarge(PacketError):
    """A packet exceeds the maximum packet size (reason code 0x95)."""

    def __init__(
        self, message: str = "packet too large", reason_code: int = ReasonCode.PACKET_TOO_LARGE
    ) -> None:
        super().__init__(message, reason_code)


class UnsupportedProtocolVersion(PacketError):
    """A CONNECT whose protocol name/level pair is not one of
    ("MQIsdp", 3), ("MQTT", 4) or ("MQTT", 5) (reason code 0x84)."""

    def __init__(
        self,
        message: str,
        protocol_name: str = "",
        protocol_level: int = 0,
        reason_code: int = ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
    ) -> None:
        super().__init__(message, reason_code)
        self.protocol_name = protocol_name
        self.protocol_level = protocol_level
