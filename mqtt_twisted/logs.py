"""``--log-format json``: one flat JSON object per log event, one per line, for log shippers."""

from __future__ import annotations

import json
from typing import IO

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer


def _plain(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@implementer(ILogObserver)
class JSONLineObserver:
    """Writes ``{"time", "level", "namespace", "message", ...event fields}`` lines."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: dict) -> None:
        level = event.get("log_level")
        record = {
            "time": event.get("log_time"),
            "level": getattr(level, "name", "info"),
            "namespace": event.get("log_namespace"),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if (
                not key.startswith("log_")
                and key not in record
                and key not in ("message", "format", "system", "time", "isError", "why", "failure")
            ):
                record[key] = _plain(value)
        failure = event.get("log_failure")
        if failure is not None:
            record["error"] = failure.getTraceback()
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()
