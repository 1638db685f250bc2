"""A thin Redis client on Twisted and hiredis's parser (RESP2, bytes throughout).

Commands go out in call order on one connection, replies are matched first in, first out.
Nothing is replayed: once the connection ends, every waiting request and every later call
errbacks with `RedisConnectionLost` (the command may or may not have run)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, TypeAlias, cast

import attrs
import hiredis
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

# re-exported: ``from mqtt_twisted.cluster.redis import RedisAddress`` keeps working
from mqtt_twisted.cluster.address import RedisAddress as RedisAddress
from mqtt_twisted.cluster.address import RedisTLS as RedisTLS

log = Logger()

#: what a command argument may be; str is sent as UTF-8, numbers as their decimal text
Arg: TypeAlias = bytes | str | int | float
#: bytes, int, None or a list of those (error replies inside an array are `RedisError`s)
Reply: TypeAlias = Any

_pack = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)


class RedisError(Exception):
    """An error reply; ``str(error)`` is its text, e.g. ``"WRONGTYPE Operation against..."``."""


class RedisConnectionLost(Exception):
    """The connection ended (or was never there): the command may or may not have run."""

    def __init__(self, message: str, reason: Failure | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class RedisConnectError(Exception):
    """`connect` failed: refused, timed out, or AUTH / SELECT refused."""


def _is(reply: Reply, kind: bytes) -> bool:
    """A pub/sub array: [kind, channel, payload or count]."""
    return isinstance(reply, list) and len(reply) == 3 and reply[0] == kind


@attrs.define
class _Request:
    deferred: Deferred[Reply]
    confirm: bytes | None = None  # pub/sub: the kind of confirmation awaited, one per channel
    remaining: int = 1
    after_subscribe: bool = False  # messages may come before its reply


class RedisProtocol(Protocol):
    """One Redis connection: `execute` pipelines commands, replies come back in order."""

    def __init__(self) -> None:
        self.name = "Redis"  # for messages; `connect` sets the address's display
        self._reader = hiredis.Reader(replyError=RedisError)
        self._waiting: deque[_Request] = deque()
        self._closing = False
        self._lost: Failure | None = None
        self._lost_waiters: list[Deferred[RedisConnectionLost]] = []
        self._broken: str | None = None

    @property
    def pending(self) -> int:
        """Requests written whose replies have not come yet."""
        return len(self._waiting)

    def execute(self, *args: Arg) -> Deferred[Reply]:
        """Send one command now; fires with its reply, errbacks with `RedisError` (an error
        reply) or `RedisConnectionLost`. Never raises."""
        return self._send(args, _Request(Deferred()))

    def _send(self, args: tuple[Arg, ...], request: _Request) -> Deferred[Reply]:
        if not args:
            return defer.fail(ValueError("an empty command (Redis would not answer it)"))
        try:
            data = _pack(args)
        except (TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError
            return defer.fail(TypeError(f"Redis arguments are bytes, str, int or float: {e}"))
        if self._lost or self._broken or self._closing or self.transport is None:
            return defer.fail(self._lost_error())
        self._waiting.append(request)
        self.transport.write(data)
        return request.deferred

    def notify_lost(self) -> Deferred[RedisConnectionLost]:
        """Fires (never errbacks) with a `RedisConnectionLost` once the connection has ended."""
        if self._lost is not None:
            return defer.succeed(self._lost_error())
        waiter: Deferred[RedisConnectionLost] = Deferred()
        self._lost_waiters.append(waiter)
        return waiter

    def close(self) -> Deferred[RedisConnectionLost]:
        """Close now: later calls fail at once and waiting requests errback (their replies
        are not read). Fires like `notify_lost`."""
        ended = self.notify_lost()
        if self._lost is None and not self._closing and self.transport is not None:
            self._closing = True
            self.transport.loseConnection()
        return ended

    def abort(self) -> None:
        """Drop the connection without flushing what is still to be written."""
        if self.transport is not None and self._lost is None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _lost_error(self) -> RedisConnectionLost:
        if self._lost is None:
            state = "closed" if self._closing else "not connected"
            state = f"dropped ({self._broken})" if self._broken else state
            return RedisConnectionLost(f"connection to {self.name} {state}")
        return RedisConnectionLost(
            f"connection to {self.name} lost: {self._lost.getErrorMessage()}", self._lost
        )

    def dataReceived(self, data: bytes) -> None:
        self._reader.feed(data)
        while self._broken is None and self._lost is None:  # a callback may have dropped it
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as e:
                self._protocol_error(f"unreadable reply: {e}")
                return
            if reply is False:  # RESP2 has no booleans: False means "need more data"
                return
            if not self._push(reply):
                self._reply(reply)

    def _push(self, reply: Reply) -> bool:
        """Handle a reply that answers no request; False for an ordinary reply."""
        return False

    def _reply(self, reply: Reply) -> None:
        if not self._waiting:
            self._protocol_error(f"a reply with no request waiting: {reply!r:.100}")
            return
        request = self._waiting[0]
        if request.confirm is not None and not isinstance(reply, RedisError):
            if not _is(reply, request.confirm):
                self._protocol_error(f"expected {request.confirm!r}, got {reply!r:.100}")
                return
            request.remaining -= 1
            if request.remaining:
                return
            reply = None
        self._waiting.popleft()
        if isinstance(reply, RedisError):
            request.deferred.errback(reply)
        else:
            request.deferred.callback(reply)

    def _protocol_error(self, message: str) -> None:
        log.error("{name}: {message}; dropping the connection", name=self.name, message=message)
        self._broken = message
        self.abort()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._broken is not None:
            reason = Failure(RedisError(f"protocol error: {self._broken}"))
        self._lost = reason
        waiting, self._waiting = self._waiting, deque()
        for request in waiting:  # in order; a cancelled request ignores this
            request.deferred.errback(self._lost_error())
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(self._lost_error())


class RedisSubscriber(RedisProtocol):
    """A pub/sub connection: after `subscribe`, published messages go to ``on_message(channel,
    payload)`` in arrival order. Use it for nothing but (un)subscribing (and PING)."""

    def __init__(self, on_message: Callable[[bytes, bytes], None]) -> None:
        super().__init__()
        self.on_message = on_message
        self._subscribed = False

    def subscribe(self, *channels: Arg) -> Deferred[None]:
        """Subscribe; fires once Redis confirmed every channel."""
        self._subscribed = True
        return self._pubsub(b"SUBSCRIBE", b"subscribe", channels)

    def _send(self, args: tuple[Arg, ...], request: _Request) -> Deferred[Reply]:
        request.after_subscribe = self._subscribed
        return super()._send(args, request)

    def unsubscribe(self, *channels: Arg) -> Deferred[None]:
        """Unsubscribe from these channels (at least one); fires once Redis confirmed each."""
        return self._pubsub(b"UNSUBSCRIBE", b"unsubscribe", channels)

    def _pubsub(self, command: bytes, confirm: bytes, channels: tuple[Arg, ...]) -> Deferred[None]:
        if not channels:
            return defer.fail(ValueError("name at least one channel"))
        return self._send((command, *channels), _Request(Deferred(), confirm, len(channels)))

    def _push(self, reply: Reply) -> bool:
        if not (self._subscribed and _is(reply, b"message")):
            return False
        if self._waiting and not self._waiting[0].after_subscribe:
            return False  # an earlier command's reply (LRANGE can return anything)
        try:
            self.on_message(reply[1], reply[2])
        except Exception:
            log.failure("{name}: on_message failed", name=self.name)
        return True


def connect(
    reactor: Any,
    address: RedisAddress,
    protocol_factory: Callable[[], RedisProtocol] = RedisProtocol,
    timeout: float = 5.0,
) -> Deferred[RedisProtocol]:
    """Connect, log in (AUTH, SELECT) and fire with the protocol, or errback with
    `RedisConnectError` (refused, no answer within ``timeout`` seconds, login refused)."""
    commands: list[tuple[Arg, ...]] = []
    if address.password is not None:
        login = (address.username, address.password) if address.username else (address.password,)
        commands.append((b"AUTH", *login))
    if address.db:
        commands.append((b"SELECT", address.db))
    commands = commands or [(b"PING",)]  # still make sure a Redis server answers

    async def attempt() -> RedisProtocol:
        factory = Factory.forProtocol(protocol_factory)
        factory.noisy = False  # no "Starting factory" line per connection
        protocol = cast(RedisProtocol, await address.endpoint_for(reactor).connect(factory))
        protocol.name = address.display
        requests = [protocol.execute(*command) for command in commands]
        try:
            for command, request in zip(commands, requests):
                try:
                    await request
                except RedisError as e:
                    name = cast(bytes, command[0]).decode()
                    why = f"cannot connect to {address.display}: {name} refused: {e}"
                    raise RedisConnectError(why) from e
        except BaseException:
            for request in requests:
                request.addErrback(lambda _: None)
            protocol.abort()
            raise
        timer.cancel()
        return protocol

    def failed(failure: Failure) -> Failure:
        if timer.active():
            timer.cancel()
        elif failure.check(defer.CancelledError, ConnectingCancelledError):
            failure = Failure(defer.TimeoutError(f"no answer within {timeout:g} s"))
        if failure.check(RedisConnectError, defer.CancelledError):
            return failure
        if failure.check(ConnectingCancelledError):  # cancelled by the caller
            return Failure(defer.CancelledError(failure.getErrorMessage()))
        error = RedisConnectError(f"cannot connect to {address.display}: {failure.value}")
        error.__cause__ = failure.value
        return Failure(error)

    timer = cast(IReactorTime, reactor).callLater(timeout, lambda: result.cancel())
    result = Deferred.fromCoroutine(attempt())
    return result.addErrback(failed)


def connect_subscriber(
    reactor: Any,
    address: RedisAddress,
    on_message: Callable[[bytes, bytes], None],
    timeout: float = 5.0,
) -> Deferred[RedisSubscriber]:
    """`connect` for a `RedisSubscriber` delivering to ``on_message(channel, payload)``."""
    connecting = connect(reactor, address, lambda: RedisSubscriber(on_message), timeout)
    return cast("Deferred[RedisSubscriber]", connecting)
