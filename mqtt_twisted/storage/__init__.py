"""Store backends: where the broker's durable state (sessions, queued messages, retained
messages, totals) is committed. See :mod:`mqtt_twisted.broker.records` for the interface."""

from __future__ import annotations

import os
from typing import Any

from mqtt_twisted.broker.records import StoreBackend
from mqtt_twisted.storage.memory import MemoryStore
from mqtt_twisted.storage.sqlite import SQLiteStore

__all__ = ["MemoryStore", "SQLiteStore", "open_store"]


def open_store(
    spec: str, reactor: Any, synchronous: str = "full", recover: str = "fail"
) -> StoreBackend | None:
    """The store named by ``spec``.

    ``"memory"`` gives None: the broker then keeps no journal at all and its state lives in
    memory only (lost at exit). ``"sqlite:PATH"`` opens (or creates) an :class:`SQLiteStore`,
    a relative PATH being relative to the working directory. Raises ValueError for any other
    spec, StoreError when the file cannot be used.
    """
    if spec == "memory":
        return None
    kind, sep, path = spec.partition(":")
    if kind == "sqlite" and sep and path:
        return SQLiteStore(os.path.abspath(path), reactor, synchronous, recover)
    raise ValueError(f"unknown store {spec!r}: expected 'memory' or 'sqlite:PATH'")
