"""The store as a twistd service: opened and loaded before any listener, closed last.

A store that cannot be used stops start-up with one line on standard error and exit
status 1 (this runs in makeService, before twistd's log is set up).
"""

from __future__ import annotations

import sys
import time
from typing import Any, NoReturn

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mqtt_twisted.broker import Broker
from mqtt_twisted.broker.journal import Journal
from mqtt_twisted.broker.records import StoreBackend, StoreError
from mqtt_twisted.broker.restore import restore
from mqtt_twisted.storage import open_store

log = Logger()

#: seconds the last commit may take at shutdown before the broker stops without it
FINAL_COMMIT_SECONDS = 30.0


class StoreService(Service):
    """The broker's store while it runs: loads it into the broker at start-up, commits what
    is left when the broker stops, then closes it."""

    def __init__(
        self, backend: StoreBackend, clock: Any, opened_at: float, window: float = 0.0
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.journal = Journal(backend, clock, window)
        self._opened_at = opened_at

    def load_into(self, broker: Broker) -> None:
        """Restore ``broker`` (made with this journal) from the store, and log what it held."""
        try:
            snapshot = self.backend.load()
        except StoreError as error:
            refuse_to_start(str(error))
        report = restore(broker, snapshot)
        log.info(
            "store {store}: loaded {sessions} sessions, {messages} queued or in-flight messages "
            "and {retained} retained messages in {seconds:.3f} s (dropped as expired: "
            "{expired_sessions} sessions, {expired_messages} messages)",
            store=self.backend.description,
            **report._replace(seconds=time.perf_counter() - self._opened_at)._asdict(),
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        done: Deferred[None] = Deferred()
        barrier = self.journal.close()
        if barrier is None:
            done.callback(None)
        else:

            def too_late() -> None:
                log.error(
                    "store {store}: the last commit did not finish in {seconds:g} s; stopping "
                    "without it (what it held was never acknowledged)",
                    store=self.backend.description,
                    seconds=FINAL_COMMIT_SECONDS,
                )
                done.callback(None)

            timer = self.clock.callLater(FINAL_COMMIT_SECONDS, too_late)

            def committed() -> None:
                if timer.active():
                    timer.cancel()
                    done.callback(None)

            barrier.when_committed(committed)
        done.addCallback(lambda _: self.backend.close())
        done.addErrback(lambda failure: log.failure("store: closing failed", failure))
        return done


def refuse_to_start(why: str) -> NoReturn:
    """Stop start-up with one line on standard error and exit status 1."""
    sys.stderr.write(f"mqtt-twisted: {why}\n")
    raise SystemExit(1)


def open_store_service(
    spec: str, sync: str, recover: str, reactor: Any, window: float = 0.0
) -> StoreService | None:
    """The store ``--store`` names, opened (None for ``memory``: nothing is kept)."""
    opened_at = time.perf_counter()
    try:
        backend = open_store(spec, reactor, sync, recover)
    except (StoreError, ValueError) as error:
        refuse_to_start(str(error))
    if backend is None:
        log.info("store: memory (sessions and retained messages end with the process)")
        return None
    moved = getattr(backend, "moved_aside", None)
    if moved is not None:
        log.warn(
            "store: {path} was not a usable store and was moved aside to {moved} "
            "(--store-recover move-aside); starting empty",
            path=getattr(backend, "path", spec),
            moved=moved,
        )
    return StoreService(backend, reactor, opened_at, window)
