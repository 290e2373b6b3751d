"""The thread-pool policy: which answers leave the event loop, and how many run at once.

Short retrieval-only answers take well under a millisecond and run on the event loop; ranking
takes milliseconds, and diversity and explanations grow with ``k``, so those run in the thread
pool where they cannot hold up other requests (health checks, cached answers, reloads), under a
per-worker limit.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")

OFF_LOOP_K = 100
"""Lists longer than this (or diversified, or explained) are built in the thread pool."""

RANKING_THREADS = 2
"""Ranked answers computed at once per worker process; the rest wait their turn off the event
loop. They are short runs of small numpy and torch operations that take and release the GIL many
times each: many of them in parallel threads of one process still run one at a time, but hand the
GIL back and forth between every operation, and each costs much more CPU than it costs alone
(benchmarks/RESULTS.md). That happens whenever one worker holds most connections: uvicorn's
workers share one listening socket and the kernel may give one worker all of them. Two, not one,
so that one long answer (explanations or diversity at a large k) does not hold up the short ones
behind it; the event loop stays free meanwhile (health checks, cached answers)."""

_RANKING_LIMITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()


def ranking_limiter() -> anyio.CapacityLimiter:
    """This event loop's limiter of ranked answers (one loop per worker process; tests start several)."""
    loop = asyncio.get_running_loop()
    limiter = _RANKING_LIMITERS.get(loop)
    if limiter is None:
        limiter = _RANKING_LIMITERS[loop] = anyio.CapacityLimiter(RANKING_THREADS)
    return limiter


def is_heavy(ranked: bool, k: int, diversity: float, explained: bool) -> bool:
    """Whether an answer is built in the thread pool: ranked, diversified, explained or long."""
    return ranked or diversity > 0 or explained or k > OFF_LOOP_K


async def limited(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the thread pool, under this worker's limit of ranked answers."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=ranking_limiter())


async def off_loop_if(heavy: bool, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the thread pool under the limit when ``heavy``, else here on the loop."""
    if heavy:
        return await limited(fn, *args)
    return fn(*args)
