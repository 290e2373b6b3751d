"""The service's life cycle: what a worker opens and loads when it starts, and undoes when it stops.

At start: the online state (and the per-request check of it), the bundle the service serves
(the one chosen in the state, else the newest that loads; an empty serving directory starts
without a model and answers ``/ready`` with 503), and the watcher that follows the choices other
workers record. At shutdown: the watcher stops and this worker's record is removed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from recommender.state import open_state
from serving.freshness import StateCheck
from serving.settings import Settings
from serving.store import ModelStore, ReloadError, newest_bundle
from serving.watcher import Watcher

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the online state, load the bundle the service serves, and follow the choices other
    workers record; on shutdown stop following and remove this worker's record."""
    settings: Settings = app.state.settings
    if settings.model is not None and not settings.model.exists():
        raise ReloadError(f"{settings.model}: no such bundle or directory")
    location = settings.state_location
    state = await asyncio.to_thread(open_state, location, settings.state_limits()) if location is not None else None
    if state is not None:
        log.info("online state: %s", state.url.split("@")[-1])
        app.state.check = StateCheck(
            state, settings.state_check_timeout, catch_up_timeout=max(5 * settings.state_check_timeout, settings.state_pool_timeout)
        )
    store = ModelStore(settings.model, state, worker_expiry=settings.worker_expiry)
    app.state.store = store
    if settings.model is not None:
        try:
            newest_bundle(settings.model)
        except ReloadError as e:
            # an empty serving directory: start, answer /ready with 503, wait for /admin/reload
            log.warning("starting without a model: %s", e)
        else:
            await asyncio.to_thread(store.start)  # the chosen bundle, else the newest that loads; none: start-up stops
    else:
        log.warning("no model configured (MOVIEREC_MODEL); /ready answers 503 until /admin/reload")
    watcher = None
    if state is not None:
        await asyncio.to_thread(store.heartbeat)
        watcher = Watcher(store, settings.watch_interval, settings.heartbeat_interval)
        watcher.start()
    try:
        yield
    finally:
        if watcher is not None:
            await asyncio.to_thread(watcher.stop)
            try:  # a stalled database must not hold up the shutdown
                await asyncio.wait_for(asyncio.to_thread(store.forget), timeout=2)
            except TimeoutError:
                pass
