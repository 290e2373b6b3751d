"""Each worker's watcher: a background thread that keeps the worker on the bundle the service
serves, and records what it serves.

Reload, rollback and the choice made at the first start-up are recorded in the online state
with a generation number (:meth:`recommender.state.StateStore.choose_bundle`). Every
``interval`` seconds the watcher reads that record and, when the generation moved, loads the
chosen bundle and swaps it in (:meth:`serving.store.ModelStore.follow`), all in this thread:
the event loop never waits on the database or on a load. Every ``heartbeat`` seconds it
records what this worker serves, which admin actions wait for and pruning respects.
"""

from __future__ import annotations

import logging
import threading
import time

from serving.store import ModelStore

log = logging.getLogger(__name__)


class Watcher:
    """Start with :meth:`start`, stop with :meth:`stop` (the lifespan does both)."""

    def __init__(self, store: ModelStore, interval: float, heartbeat: float) -> None:
        self.store = store
        self.interval = interval
        self.heartbeat = heartbeat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="movierec-watcher", daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the thread to end and wait up to ``timeout`` (a thread stuck on a stalled
        database is left behind: it is a daemon and holds nothing the shutdown needs)."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        next_beat = time.monotonic() + self.heartbeat
        while not self._stop.wait(self.interval):
            try:
                self.store.follow()
                if time.monotonic() >= next_beat:
                    self.store.heartbeat()
                    next_beat = time.monotonic() + self.heartbeat
                if self._failing:
                    log.info("online state readable again; following the chosen bundle")
                self._failing = False
            except Exception as e:  # the database is away: keep serving, try again next round
                if not self._failing:
                    log.warning("cannot read the chosen bundle from the online state: %s", e)
                self._failing = True
