"""When a connection's input is read: the reading side of flow control.

The broker reads a connection only as fast as it can finish the work its packets bring:

- a subscriber whose queue is full *holds* the connections that publish to it (their
  transport stops reading, so TCP slows their clients) until it drains;
- a burst is handled at most :data:`PACKETS_PER_TURN` packets at a time, the rest on the
  next reactor turn, so one connection's backlog does not delay everybody else's
  acknowledgements;
- a connection that was told why it is closed (DISCONNECT, refusing CONNACK) *lingers*:
  its output is half-closed and its input read and discarded for a short, bounded time,
  so the client reads the reason code instead of a connection reset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableDescriptor,
    IReactorTime,
    ITCPTransport,
)

from mqtt_twisted.broker.stats import BrokerStats

#: packets handled from one connection before the others get their turn
PACKETS_PER_TURN = 100
#: how long a closing connection's input is read and discarded after the reason code
LINGER_SECONDS = 2.0
#: ... and how many bytes of it at most
LINGER_BYTES = 1 << 20


class InputGate:
    """Pauses and resumes one connection's reading; calls ``resume`` when it may go on."""

    __slots__ = ("held_by", "open", "_transport", "_clock", "_stats", "_resume", "_turn", "_paused")

    def __init__(
        self,
        transport: Any,
        clock: IReactorTime,
        stats: BrokerStats,
        resume: Callable[[], None],
    ) -> None:
        #: the sessions (full subscribers) holding this connection's input
        self.held_by: set[Any] = set()
        #: whether buffered packets may be handled now (nobody holds it, no turn pending);
        #: an attribute, not a property: it is read once per packet
        self.open = True
        self._transport = transport
        self._clock = clock
        self._stats = stats
        self._resume = resume
        self._turn: IDelayedCall | None = None
        self._paused = False

    def hold(self, by: Any) -> None:
        """``by`` (a full subscriber, or an answer being awaited) asks to stop reading until
        it releases this connection."""
        held_by = self.held_by
        if by in held_by:
            return
        held_by.add(by)
        self.open = False
        if len(held_by) == 1:
            self._stats.connections_held += 1
            self._pause()

    def release(self, by: Any) -> None:
        """``by`` drained (or gave up waiting): read again once nobody holds us."""
        held_by = self.held_by
        if by not in held_by:
            return
        held_by.discard(by)
        if not held_by:
            self._stats.connections_held -= 1
            # Go on from the reactor, not from inside the subscriber's handler that
            # released us: no re-entrant packet handling, and everyone gets a turn.
            self.next_turn()

    def next_turn(self) -> None:
        """Handle the (rest of the) buffered packets on the next reactor turn."""
        if self._turn is None:
            self.open = False
            self._pause()
            self._turn = self._clock.callLater(0, self._next_turn)

    def _next_turn(self) -> None:
        self._turn = None
        if not self.held_by:
            self.open = True
            self._unpause()
            self._resume()

    def close(self) -> set[Any]:
        """The connection ends: stop every timer; returns the sessions that held it."""
        if self._turn is not None:
            if self._turn.active():
                self._turn.cancel()
            self._turn = None
        held_by, self.held_by = self.held_by, set()
        self.open = True
        if held_by:
            self._stats.connections_held -= 1
        self._unpause()
        return held_by

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            self._transport.pauseProducing()

    def _unpause(self) -> None:
        if self._paused:
            self._paused = False
            self._transport.resumeProducing()


class Linger:
    """Half-close a connection and discard its input until the client closes, a time or a
    byte count runs out, then call ``close``."""

    __slots__ = ("_close", "_timer", "_discarded")

    def __init__(self, transport: Any, clock: IReactorTime, close: Callable[[], None]) -> None:
        self._close = close
        self._discarded = 0
        if IHalfCloseableDescriptor.providedBy(transport):
            # FIN once the reason code is flushed
            cast(ITCPTransport, transport).loseWriteConnection()
        self._timer: IDelayedCall | None = clock.callLater(LINGER_SECONDS, self.done)

    def discard(self, data: bytes) -> None:
        """Input that arrived after the reason code: thrown away, up to the byte bound."""
        self._discarded += len(data)
        if self._discarded > LINGER_BYTES:
            self.done()

    def done(self) -> None:
        """Stop lingering and close now (also when the connection was lost)."""
        timer, self._timer = self._timer, None
        if timer is None:
            return
        if timer.active():
            timer.cancel()
        self._close()

    def cancel(self) -> None:
        """The connection is gone: nothing more to close."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
