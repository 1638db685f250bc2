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
