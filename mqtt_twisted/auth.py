"""Security: who may connect (a Mosquitto password file through ``twisted.cred``, SCRAM-SHA-512
from the same file, TLS client certificates, anonymous clients) and what they may do
(a Mosquitto ACL file). It plugs into the broker core as its :class:`Hooks`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import attrs
from twisted.cred.checkers import ANONYMOUS, ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from mqtt_twisted.acl import Acl, load_acl_file
from mqtt_twisted.broker.hooks import (
    Access,
    Authenticated,
    Challenge,
    ClientIdentity,
    ConnectRequest,
    Hooks,
    Refused,
    unsupported_method,
)
from mqtt_twisted.passwords import PasswordFileChecker, scram_secret
from mqtt_twisted.scram import ScramError, ScramSecret, ScramServer

log = Logger()

SCRAM_METHOD = "SCRAM-SHA-512"
#: the first failed login from an address is answered after this many seconds; each further
#: one doubles it, up to FAILURE_DELAY_MAX; an address quiet for FAILURE_MEMORY is forgiven
FAILURE_DELAY = 0.5
FAILURE_DELAY_MAX = 8.0
FAILURE_MEMORY = 300.0
#: addresses remembered at most (the oldest are forgotten first)
FAILURE_ADDRESSES = 10_000


class IMQTTClient(Interface):
    """The avatar a login yields: the username the client is known by (None: anonymous)."""


@implementer(IRealm)
class UsernameRealm:
    """Avatars are just usernames: what the broker does with them is the ACL's business."""

    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:
        if IMQTTClient not in interfaces:
            raise NotImplementedError("only IMQTTClient avatars")
        username = None if avatar_id is ANONYMOUS else avatar_id
        return IMQTTClient, username, lambda: None


@attrs.define
class _Failures:
    count: int
    last: float


class FailureThrottle:
    """Slows down failed logins per source address: a growing, bounded delay."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._hosts: OrderedDict[str, _Failures] = OrderedDict()

    def failed(self, host: str) -> float:
        """Record a failure from ``host``; returns how long to wait before answering it."""
        now = self._clock.seconds()
        entry = self._hosts.pop(host, None)
        if entry is None or now - entry.last > FAILURE_MEMORY:
            entry = _Failures(0, now)
        entry.count += 1
        entry.last = now
        self._hosts[host] = entry
        while len(self._hosts) > FAILURE_ADDRESSES:
            self._hosts.popitem(last=False)
        return min(FAILURE_DELAY_MAX, FAILURE_DELAY * 2 ** (entry.count - 1))

    def succeeded(self, host: str) -> None:
        self._hosts.pop(host, None)


class Security(Hooks):
    """Authentication and authorisation from Mosquitto-format files."""

    def __init__(
        self,
        clock: IReactorTime,
        allow_anonymous: bool,
        passwords: PasswordFileChecker | None = None,
        acl: Acl | None = None,
        acl_path: str | None = None,
    ) -> None:
        self.clock = clock
        self.allow_anonymous = allow_anonymous
        self.passwords = passwords
        self.acl_path = acl_path
        self.throttle = FailureThrottle(clock)
        checkers: list[ICredentialsChecker] = [] if passwords is None else [passwords]
        self.portal = Portal(UsernameRealm(), checkers)
        self.acl: Acl | None = None
        self.set_acl(acl)

    # -- configuration --------------------------------------------------------------

    def set_acl(self, acl: Acl | None) -> None:
        """Use ``acl`` from now on (None: every client may read and write everything)."""
        self.acl = acl
        self.plain_topics_writable = acl is None
        if acl is None:
            self.read_check = None
            return
        check = acl.check
        read = Access.READ

        def read_check(identity: ClientIdentity, topic: str) -> bool:
            return check(identity.username, identity.client_id, topic, read)

        self.read_check = read_check

    def reload(self) -> None:
        """Re-read the password and ACL files (SIGHUP); a file that fails to parse keeps the
        old one, and the log says why."""
        if self.passwords is not None:
            try:
                self.passwords.reload()
                log.info("password file reloaded")
            except Exception as error:
                log.error("password file not reloaded, keeping the old one: {error}", error=error)
        if self.acl_path is not None:
            try:
                self.set_acl(load_acl_file(self.acl_path))
                log.info("ACL file reloaded")
            except Exception as error:
                log.error("ACL file not reloaded, keeping the old one: {error}", error=error)

    # -- authentication -------------------------------------------------------------

    def authenticate(self, request: ConnectRequest) -> Authenticated | Challenge | Deferred[Any]:
        if request.certificate_username is not None:  # --use-identity-as-username
            return Authenticated(request.certificate_username)
        if request.method is not None:
            if request.method == SCRAM_METHOD and self.passwords is not None:
                return self._scram(request)
            raise unsupported_method(request.method)
        if (request.username is None and request.password is None) or self.passwords is None:
            # Anonymous, or nothing to check a password against (Mosquitto: with no password
            # file the user name is taken as given): the fast path, no Deferred.
            if self.allow_anonymous:
                return Authenticated(request.username)
            return self._refuse_later(
                request,
                Refused("anonymous clients are not allowed", 5, 0x87),
                "anonymous clients are not allowed",
            )
        # MQTT user names are text: the checker takes them as str (twisted-notes: cred)
        credentials = UsernamePassword(request.username or "", request.password or b"")  # type: ignore[arg-type]
        login = self.portal.login(credentials, None, IMQTTClient)
        return login.addCallbacks(
            lambda result: self._succeeded(request, result[1]),
            lambda failure: self._failed(request, failure),
        )

    def _succeeded(self, request: ConnectRequest, username: str | None) -> Authenticated:
        self.throttle.succeeded(request.host)
        return Authenticated(username)

    def _failed(self, request: ConnectRequest, failure: Failure) -> Deferred[Any]:
        if failure.check(UnauthorizedLogin, UnhandledCredentials):
            refused = Refused("bad user name or password", 4, 0x86)
            return self._refuse_later(request, refused, "bad user name or password")
        return fail(failure)  # the handshake logs it and answers: server unavailable

    def _refuse_later(self, request: ConnectRequest, refused: Refused, why: str) -> Deferred[Any]:
        delay = self.throttle.failed(request.host)
        log.warn(
            "authentication failed for client {client_id} (username {username}) from {host}: "
            "{why}; answering in {delay:g} s",
            client_id=request.client_id,
            username=request.username,
            host=request.host,
            why=why,
            delay=delay,
        )

        def refuse() -> None:
            raise refused

        return deferLater(self.clock, delay, refuse)

    def _scram(self, request: ConnectRequest) -> Challenge | Deferred[Any]:
        """MQTT 5 enhanced authentication: SCRAM-SHA-512 from the password file's $7$ entries."""
        passwords = self.passwords
        assert passwords is not None

        def lookup(username: str) -> ScramSecret | None:
            entry = passwords.entries.get(username)
            return None if entry is None else scram_secret(entry)

        server = ScramServer("sha512", lookup=lookup)
        try:
            server_first = server.client_first(request.data or b"")
        except ScramError as error:
            return self._refuse_later(
                request, Refused("bad SCRAM message", None, 0x86), f"SCRAM: {error.reason}"
            )

        def respond(data: bytes) -> Authenticated | Deferred[Any]:
            try:
                server_final = server.client_final(data)
            except ScramError as error:
                return self._refuse_later(
                    request,
                    Refused("bad user name or password", None, 0x86),
                    f"SCRAM: {error.reason}",
                )
            username = server.username
            if request.username is not None and request.username != username:
                return self._refuse_later(
                    request,
                    Refused("user name differs from the authenticated one", None, 0x86),
                    "SCRAM: CONNECT user name differs",
                )
            self.throttle.succeeded(request.host)
            return Authenticated(username, server_final)

        return Challenge(server_first, respond)

    # -- authorisation --------------------------------------------------------------

    def may_publish(self, identity: ClientIdentity, topic: str) -> bool:
        acl = self.acl
        if acl is None:
            return not topic.startswith("$SYS")
        return acl.check(identity.username, identity.client_id, topic, Access.WRITE)

    def may_subscribe(self, identity: ClientIdentity, topic_filter: str) -> bool:
        acl = self.acl
        if acl is None:
            return True
        return acl.may_subscribe(identity.username, identity.client_id, topic_filter)
