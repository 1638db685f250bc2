"""The one seam where authentication, authorisation and storage plug into the broker core.

The core calls a :class:`Hooks` object where state changes: a client connects
(:meth:`Hooks.authenticate`), publishes (:meth:`Hooks.may_publish`), subscribes
(:meth:`Hooks.may_subscribe`), and a message is about to be delivered
(:attr:`Hooks.read_check`). The default allows everything except publishing into ``$SYS``
(Mosquitto's ``acl__check_dollar``), so a broker without plug-ins behaves as before.
:class:`mqtt_twisted.auth.Security` is the implementation the service wires in.

``authenticate`` may answer with a Deferred (a password check in a thread, a Redis reply):
the connection stops handling its input until it fires, so nothing is reordered and the
reactor never blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs

from mqtt_twisted.acl import Access

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = [
    "Access",
    "Authenticated",
    "Challenge",
    "ClientIdentity",
    "ConnectRequest",
    "Hooks",
    "Refused",
    "unsupported_method",
]


class Refused(Exception):
    """A CONNECT the broker answers with a refusing CONNACK (no code: close without one)."""

    def __init__(self, reason: str, code_v3: int | None, code_v5: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code_v3 = code_v3
        self.code_v5 = code_v5


def unsupported_method(method: str) -> Refused:
    """The refusal for an Authentication Method the broker does not offer (0x8C)."""
    return Refused(f"authentication method {method!r} not supported", None, 0x8C)


@attrs.frozen
class ClientIdentity:
    """Who a connected client is, as the hooks see it (fixed at CONNECT)."""

    client_id: str
    username: str | None = None
    #: "host:port" of the peer
    address: str = ""
    listener: str = ""


class ConnectRequest(NamedTuple):
    """What a CONNECT asks for, for :meth:`Hooks.authenticate`."""

    client_id: str
    username: str | None
    password: bytes | None
    #: the peer's host (no port), for throttling failures
    host: str
    listener: str
    protocol_level: int
    #: MQTT 5 enhanced authentication (Authentication Method / Data), or None
    method: str | None = None
    data: bytes | None = None
    #: the username from the TLS client certificate, with --use-identity-as-username
    certificate_username: str | None = None


class Authenticated(NamedTuple):
    """A successful authentication: the username the client is known by from now on, and
    for enhanced authentication the Authentication Data the CONNACK carries."""

    username: str | None
    data: bytes | None = None


class Challenge(NamedTuple):
    """An enhanced authentication step: send ``data`` in AUTH (0x18 Continue authentication);
    the client's answer goes to ``respond``."""

    data: bytes
    respond: Callable[[bytes], Authenticated | Challenge | Deferred[Any]]


#: what authenticate (and Challenge.respond) may return: a result, or a Deferred of one.
#: Refusals raise (or fail with) :class:`mqtt_twisted.connect.Refused`.
AuthResult = Authenticated | Challenge


class Hooks:
    """The default: everyone may connect; anything but ``$SYS`` may be published."""

    #: called as ``read_check(identity, topic)`` for every delivery, or None when every
    #: client may read every topic (the fast path: no call at all)
    read_check: Callable[[ClientIdentity, str], bool] | None = None
    #: True while :meth:`may_publish` allows every topic not starting with ``$`` to every
    #: client (no ACL): the protocol then calls it only for ``$`` topics. A subclass that
    #: overrides may_publish gets False unless it says otherwise.
    plain_topics_writable: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "plain_topics_writable" not in cls.__dict__:
            cls.plain_topics_writable = cls.may_publish is Hooks.may_publish

    def authenticate(self, request: ConnectRequest) -> AuthResult | Deferred[Any]:
        """Accept or refuse a CONNECT (raise or fail with ``Refused``); no enhanced
        authentication method is offered by default (0x8C)."""
        if request.method is not None:
            raise unsupported_method(request.method)
        return Authenticated(request.certificate_username or request.username)

    def may_publish(self, identity: ClientIdentity, topic: str) -> bool:
        """Whether the client may publish to ``topic`` (its will included)."""
        return not topic.startswith("$SYS")

    def may_subscribe(self, identity: ClientIdentity, topic_filter: str) -> bool:
        """Whether the client may subscribe to ``topic_filter`` at all."""
        return True
