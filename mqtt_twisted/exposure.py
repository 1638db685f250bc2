"""Secure by default: which listeners can be reached from beyond this machine, and whether
the broker may start with them as configured."""

from __future__ import annotations

import ipaddress

#: endpoint types that only this machine can reach
LOCAL_TYPES = {"unix"}
#: endpoint types whose ``interface`` argument says where they listen
INET_TYPES = {"tcp", "tcp6", "ssl", "tls"}


def split_endpoint(description: str) -> list[str]:
    """Split a Twisted endpoint string on unescaped colons (``\\:`` stays a colon)."""
    parts, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local_only(description: str) -> bool:
    """Whether a server endpoint string listens on loopback (or a Unix socket) only.

    ``tcp:1883`` (no ``interface``) listens on every interface; wrappers such as
    ``haproxy:tcp:...`` are judged by the endpoint they wrap; unknown types count as
    reachable from outside."""
    parts = split_endpoint(description)
    while parts and parts[0].lower() == "haproxy":
        parts = parts[1:]
    if not parts:
        return False
    kind = parts[0].lower()
    if kind in LOCAL_TYPES:
        return True
    if kind not in INET_TYPES:
        return False
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key == "interface":
            return is_loopback(value)
    return False


def exposure_error(
    listeners: list[tuple[str, str]],
    password_file: bool,
    allow_anonymous: bool | None,
    require_certificate: bool,
    is_tls: object,
) -> str | None:
    """The one-line reason the broker must not start, or None.

    ``listeners`` are ``(option, endpoint)`` pairs. A listener reachable from outside
    loopback needs a password file, a required client certificate (TLS listeners), or an
    explicit ``--allow-anonymous yes``."""
    if password_file or allow_anonymous:
        return None
    for option, description in listeners:
        if is_local_only(description):
            continue
        if require_certificate and callable(is_tls) and is_tls(description):
            continue
        return (
            f"--{option} {description} can be reached from beyond this machine and anyone "
            "could connect: add --password-file FILE, or --require-certificate (with "
            "--cafile) on TLS listeners, or --allow-anonymous yes to let anyone in"
        )
    return None
