"""Flow control of one connected subscriber: whom it holds back, and when it counts as slow.

A subscriber whose queue is full holds back the connections that publish to it (their
input is not read, so TCP slows the publishers). That is right while the *broker* is the
bottleneck: nothing acknowledged may be dropped for a subscriber that keeps up. It is wrong
when the *subscriber* is: it would pace every publisher, and through them every other
subscriber, to its own speed. So, while it is behind, its client is watched: every
``check`` seconds in which the broker is waiting on the client (its socket buffer has been
full, or its oldest unacknowledged message in flight, for longer than :data:`LAG`) count
against ``slow_client_grace``. Once they add up to it, the client counts as slow: the
publishers are released and what does not fit in its queue is dropped for it alone. An
empty queue ends it all. A client that acknowledges at once never lags, however far behind
the broker itself is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: how long the broker may wait on a client (full socket buffer, unacknowledged oldest
#: message) before that counts as the client lagging; a prompt client on loopback or a LAN
#: answers within a few milliseconds even from a busy broker
LAG = 0.05
#: how often a subscriber that is behind is checked (at most; a quarter of the grace time
#: when that is shorter)
CHECK_INTERVAL = 0.25


class FlowWatch:
    """Made when a connected session's queue first fills; dropped when it empties."""

    __slots__ = (
        "holding", "stalled", "_clock", "_grace", "_check", "_call", "_lags", "_slow", "_last",
    )  # fmt: skip

    def __init__(
        self,
        clock: IReactorTime,
        grace: float,
        lags: Callable[[float], bool],
        become_slow: Callable[[], None],
    ) -> None:
        #: publishing connections held back for this subscriber
        self.holding: set[Any] = set()
        #: seconds the broker has waited on this client while it was behind
        self.stalled = 0.0
        self._clock = clock
        self._grace = grace
        self._check = min(CHECK_INTERVAL, grace / 4)
        self._lags = lags
        self._slow = become_slow
        self._last = clock.seconds()
        self._call: IDelayedCall | None = clock.callLater(self._check, self._tick)

    def _tick(self) -> None:
        self._call = None
        now = self._clock.seconds()
        elapsed, self._last = now - self._last, now
        if self._lags(now):  # taken as true for the whole interval since the last check
            self.stalled += elapsed
            if self.stalled >= self._grace:
                self._slow()
                return
        self._call = self._clock.callLater(self._check, self._tick)

    def release(self, by: Any) -> None:
        """Let every held publisher go (the queue drained, or the client is slow now)."""
        holding, self.holding = self.holding, set()
        for reader in holding:
            reader.release_input(by)

    def stop(self, by: Any) -> None:
        """No longer behind (or gone): release everybody and stop watching."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        self.release(by)
