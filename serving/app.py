"""The HTTP service: ``create_app(settings)`` assembles a FastAPI app over one model bundle.

Nothing is loaded at import time: the lifespan (:mod:`serving.lifespan`) loads the bundle once
into a :class:`~serving.store.ModelStore` on ``app.state``, and routes receive the current model
through a dependency (:mod:`serving.deps`), one reference per request, so a hot reload never
changes the model under a request that is already running. The routes live in the
``serving.routes_*`` modules, one router per resource; errors, middleware, metrics and cached
answers in modules of their own; ``movierec serve`` starts uvicorn through
:mod:`serving.launcher`. Only run-time code is imported (the recommender, retrieval towers,
content transform); no Lightning or training modules.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from serving import routes_admin, routes_health, routes_items, routes_pages, routes_recommendations, routes_users
from serving.answer_cache import CachedAnswerMiddleware
from serving.errors import add_error_handlers
from serving.lifespan import lifespan
from serving.metrics import Metrics, MetricsMiddleware
from serving.middleware import BodyLimitMiddleware, TimeoutMiddleware
from serving.settings import Settings


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
