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

from twisted.logger import Logger

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from mqtt_twisted.broker.config import BrokerConfig
    from mqtt_twisted.broker.entries import Inflight, Publisher, SessionConnection
    from mqtt_twisted.broker.stats import BrokerStats

log = Logger()

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


class SessionFlow:
    """The flow-control half of :class:`mqtt_twisted.broker.session.Session` (a mixin:
    the session keeps the state declared below): holding publishers back while its queue
    is full, watching whether its client lags, and becoming slow after the grace time."""

    __slots__ = ("flow", "slow", "_dropping")

    client_id: str
    connection: SessionConnection | None
    inflight: dict[int, Inflight]
    flow: FlowWatch | None
    slow: bool
    dropped: int
    _dropping: bool
    _window: int
    _clock: IReactorTime
    _config: BrokerConfig
    _stats: BrokerStats

    def _hold(self, origin: Publisher | None) -> None:
        """The queue is full: hold the publisher back, and watch whether the client lags."""
        grace = self._config.slow_client_grace
        if grace <= 0:
            self._become_slow()
            return
        flow = self.flow
        if flow is None:
            flow = self.flow = FlowWatch(self._clock, grace, self._client_lags, self._become_slow)
        reader = origin.connection if origin is not None else None
        if reader is not None and reader not in flow.holding:
            flow.holding.add(reader)
            reader.hold_input(self)

    def _client_lags(self, now: float) -> bool:
        """Whether the broker is waiting on the client: its socket buffer full, or its window
        full with the oldest message unacknowledged, for longer than LAG."""
        conn = self.connection
        if conn is None:
            return False
        if conn.paused and now - conn.paused_at >= LAG:
            return True
        inflight = self.inflight
        if inflight and len(inflight) >= self._window:
            oldest = next(iter(inflight.values()))
            return now - oldest.sent_at >= LAG
        return False

    def _become_slow(self) -> None:
        """It made its publishers wait for the grace time: release them, drop what does not
        fit in its queue from now on."""
        if self.slow:
            return
        self.slow = True
        self._stats.clients_slow += 1
        log.warn(
            "client {client_id} is slower than its publishers (held them {grace:g} s): they "
            "are no longer held back for it and messages beyond its queue are dropped",
            client_id=self.client_id,
            grace=self._config.slow_client_grace,
        )
        flow, self.flow = self.flow, None
        if flow is not None:
            flow.stop(self)

    def _caught_up(self) -> None:
        """The queue is empty (or the connection ended): nothing held, no longer slow. Only
        an empty queue ends slowness, so a subscriber that stays behind cannot hold its
        publishers again at every dip."""
        flow, self.flow = self.flow, None
        if flow is not None:
            flow.stop(self)
        self._dropping = False
        if self.slow:
            self.slow = False
            self._stats.clients_slow -= 1
            log.info(
                "client {client_id} caught up ({dropped} messages dropped for it so far)",
                client_id=self.client_id,
                dropped=self.dropped,
            )

    def forget_reader(self, reader: SessionConnection) -> None:
        """A held publisher's connection ended."""
        if self.flow is not None:
            self.flow.holding.discard(reader)

    def _end_flow_control(self) -> None:
        """The connection ended: nothing is held for an offline session."""
        if self.flow is not None or self.slow:
            self._caught_up()
