"""The per-request check that a worker has applied every acknowledged write, bounded in time.

Every answer is computed with every write acknowledged before its request arrived: the worker
reads the newest sequence number of the online state and, when another worker wrote since,
applies the events after its own first. On SQLite that read is a lookup in a local file in WAL
mode, where readers never wait for writers, and costs microseconds: it stays on the event loop.
On PostgreSQL it is a round trip to a server that can stall, so it runs in a thread with a
bounded wait; past the bound the request gets 503 with ``Retry-After``, and for a short while
after, requests are answered that way at once instead of each waiting the bound again. Threads
stuck in a stalled read are abandoned (Python cannot stop them; they return when the server
answers again) and counted, so a stall never ties up more than :attr:`StateCheck.max_stuck`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from recommender import HybridRecommender
from recommender.state import StateError

T = TypeVar("T")
log = logging.getLogger(__name__)


def unreadable(e: Exception) -> StateError:
    """The error a request gets when the database went away: an answer now would miss
    acknowledged writes (HTTP 503, Retry-After)."""
    log.error("online state unreadable: %s", e)
    return StateError(f"online state unreadable ({e.__class__.__name__}); retry later")


def catch_up(recommender: HybridRecommender, state: Any) -> None:
    """Apply the online state's events after ``recommender``'s own (see :class:`StateCheck`)."""
    try:
        recommender.catch_up(state)
    except StateError:
        raise
    except Exception as e:
        raise unreadable(e) from e


class StateStalled(StateError):
    """The online state did not answer within the request's bound (HTTP 503, Retry-After)."""


class StateCheck:
    """Bounded reads of the online state from the request path.

    Args:
        state: the online state (:class:`recommender.state.StateStore`).
        timeout: seconds a request waits for the sequence check.
        catch_up_timeout: seconds a request waits for a catch-up (reads every event after its own).
        max_stuck: reads in flight (stalled ones included) beyond which requests fail at once.
    """

    def __init__(self, state: Any, timeout: float, catch_up_timeout: float, max_stuck: int = 8) -> None:
        self.state = state
        self.timeout = timeout
        self.catch_up_timeout = catch_up_timeout
        self.max_stuck = max_stuck
        self.inline = state.dialect == "sqlite"
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stalled_until = 0.0

    @property
    def stalled(self) -> bool:
        """Whether a recent read timed out (requests fail at once until it has been retried)."""
        return time.monotonic() < self._stalled_until

    async def behind(self, applied_seq: int) -> bool:
        """Whether writes after ``applied_seq`` were acknowledged (this worker must catch up).

        Raises:
            StateStalled: no answer within :attr:`timeout`.
            Exception: the database's own error (unreachable, refused).
        """
        if self.inline:
            return bool(self.state.last_seq() > applied_seq)
        return bool(await self.run(self.state.last_seq, self.timeout) > applied_seq)

    async def catch_up(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (a catch-up) in a worker thread; bounded on PostgreSQL only (on SQLite a
        long catch-up is a large one, not a stalled one)."""
        if self.inline:
            return await anyio.to_thread.run_sync(fn, *args)
        return await self.run(fn, self.catch_up_timeout, *args)

    async def run(self, fn: Callable[..., T], timeout: float, *args: Any) -> T:
        """``fn(*args)`` in a worker thread; raises :class:`StateStalled` past ``timeout``."""
        if self.stalled or self._in_flight >= self.max_stuck:
            raise StateStalled(f"online state did not answer within {self.timeout:g} s; retry later")

        def call() -> T:
            with self._lock:
                self._in_flight += 1
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._in_flight -= 1

        try:
            with anyio.fail_after(timeout):
                return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except TimeoutError:
            # the next requests fail at once for one bound's length; then one tries again
            self._stalled_until = time.monotonic() + self.timeout
            raise StateStalled(f"online state did not answer within {timeout:g} s; retry later") from None
