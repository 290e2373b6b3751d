"""The HTTP service: ``create_app(settings)`` assembles a FastAPI app over one model bundle.

Nothing is loaded at import time: the lifespan loads the bundle once into a
:class:`~serving.store.ModelStore` on ``app.state`` and routes receive the current model through
a dependency (:mod:`serving.deps`), one reference per request, so a hot reload never changes the
model under a request that is already running. The routes live in the ``serving.routes_*``
modules, one router per resource; errors, middleware, metrics and cached answers in modules of
their own;
``movierec serve`` starts uvicorn through :mod:`serving.launcher`. Only run-time code is
imported (the recommender, retrieval towers, content transform); no Lightning or training modules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from recommender.state import open_state
from serving import routes_admin, routes_health, routes_items, routes_pages, routes_recommendations, routes_users
from serving.answer_cache import CachedAnswerMiddleware
from serving.errors import add_error_handlers
from serving.freshness import StateCheck
from serving.metrics import Metrics, MetricsMiddleware
from serving.middleware import BodyLimitMiddleware, TimeoutMiddleware
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


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. With ``settings=None`` they come from the environment (``MOVIEREC_*``),
    which is how uvicorn workers started from an import string get them."""
    settings = settings or Settings()
    app = FastAPI(
        title="movierec",
        summary="Hybrid movie recommendations: two-tower retrieval, content similarity, ranker.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics = Metrics.create()
    add_error_handlers(app)
    for routes in (routes_health, routes_recommendations, routes_users, routes_items, routes_admin, routes_pages):
        app.include_router(routes.router)
    app.mount("/static", StaticFiles(directory=routes_pages.WEB_DIR), name="static")

    # outermost first: metrics see every request (413s included), then size limit, then CORS,
    # then the cached answers
    cached = next(r for r in routes_recommendations.router.routes if getattr(r, "path", None) == CachedAnswerMiddleware.TEMPLATE)
    app.add_middleware(CachedAnswerMiddleware, host=app, route=cached)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    app.add_middleware(TimeoutMiddleware, seconds=settings.request_timeout)  # inside the size limit
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, requests=metrics.requests, latency=metrics.latency)
    return app
