"""Limits that are exceeded are logged once per burst, not once per event."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

log = Logger()


class LimitLog:
    """Remembers which limits are being exceeded right now: the first event of a burst is
    logged (with how many the previous burst had), the rest only counted."""

    __slots__ = ("_bursts",)

    def __init__(self) -> None:
        #: limit name -> events in the current burst
        self._bursts: dict[str, int] = {}

    def exceeded(self, name: str, message: str, **fields: Any) -> None:
        """One more event over limit ``name``; ``message`` is logged if it starts a burst."""
        count = self._bursts.get(name)
        if count is None:
            log.warn(message, **fields)
            self._bursts[name] = 1
        else:
            self._bursts[name] = count + 1

    def ok(self, name: str) -> None:
        """An event within limit ``name``: the burst (if any) is over."""
        count = self._bursts.pop(name, None)
        if count is not None and count > 1:
            log.info("{name}: {count} events over the limit in that burst", name=name, count=count)


class ConnectionRate:
    """New connections per second per source address: a token bucket per host, a burst of
    ``rate`` connections, refilled at ``rate`` per second. Remembers ``hosts`` addresses at
    most (the least recently seen are forgotten first)."""

    __slots__ = ("rate", "_hosts", "_max_hosts")

    def __init__(self, rate: int, hosts: int = 10_000) -> None:
        self.rate = rate
        self._hosts: dict[str, tuple[float, float]] = {}
        self._max_hosts = hosts

    def allow(self, host: str, now: float) -> bool:
        """Whether one more connection from ``host`` is allowed at time ``now``."""
        rate = self.rate
        if not rate:
            return True
        hosts = self._hosts
        tokens, last = hosts.pop(host, (float(rate), now))
        tokens = min(float(rate), tokens + (now - last) * rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        hosts[host] = (tokens, now)  # most recently seen last
        if len(hosts) > self._max_hosts:
            del hosts[next(iter(hosts))]
        return allowed
