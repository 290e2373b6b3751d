"""Liveness, readiness and the Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from serving.deps import MetricsDep, StoreDep
from serving.schemas import ErrorOut, HealthOut, StatusOut

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthOut)
async def health() -> dict[str, Any]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready", response_model=StatusOut, responses={503: {"model": ErrorOut}})
async def ready(store: StoreDep) -> dict[str, Any]:
    """Readiness: 200 once a bundle is loaded, else 503."""
    return {"status": "ready", "model_version": store.get().model_version}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(metrics: MetricsDep) -> PlainTextResponse:
    """Prometheus text: request counts and latency histograms by route template."""
    return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)
