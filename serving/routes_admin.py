"""Admin: reload the newest bundle, roll back, list the bundles (behind the admin key)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from serving.deps import MetricsDep, SettingsDep, StoreDep, require_admin
from serving.errors import ADMIN_ERRORS
from serving.schemas import ErrorOut, ReloadOut, VersionsOut
from serving.store import ReloadError, ReloadResult

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


def _reload_out(result: ReloadResult) -> dict[str, Any]:
    """An admin action's answer: what the service now serves, and which live workers (of every
    server sharing the state) serve it or had not followed yet when it was sent."""
    return {
        "status": result.status,
        "model_version": result.model_version,
        "previous_version": result.previous_version,
        "path": str(result.path),
        "generation": result.generation,
        "workers": result.workers,
        "pending": result.pending,
    }


@router.post(
    "/reload", response_model=ReloadOut,
    responses={**ADMIN_ERRORS, 409: {"model": ErrorOut, "description": "no bundle found or bundle refused"}},
)
def reload(
    store: StoreDep, settings: SettingsDep, metrics: MetricsDep,
    force: Annotated[bool, Query(description="reload even when the newest bundle is already served")] = False,
) -> dict[str, Any]:
    """Swap in the newest bundle; running requests finish on the old one; a bundle that fails
    verification is refused (409) and the old one keeps serving."""
    try:
        result = store.reload(force=force)
    except ReloadError as e:
        metrics.reloads.labels("refused").inc()
        raise HTTPException(409, str(e)) from e
    metrics.reloads.labels(result.status).inc()
    result = store.wait_for_workers(result, settings.converge_timeout)
    if result.status == "reloaded":
        store.prune(settings.keep_bundles)
    return _reload_out(result)


@router.post(
    "/rollback", response_model=ReloadOut,
    responses={**ADMIN_ERRORS, 409: {"model": ErrorOut, "description": "no older bundle, or it was refused"}},
)
def rollback(store: StoreDep, settings: SettingsDep, metrics: MetricsDep) -> dict[str, Any]:
    """Go back to the bundle before the served one; model and indexes switch together, and
    running requests finish on the model they started with."""
    try:
        result = store.rollback()
    except ReloadError as e:
        metrics.reloads.labels("rollback_refused").inc()
        raise HTTPException(409, str(e)) from e
    metrics.reloads.labels(result.status).inc()
    return _reload_out(store.wait_for_workers(result, settings.converge_timeout))


@router.get("/versions", response_model=VersionsOut, responses=ADMIN_ERRORS)
def versions(store: StoreDep) -> dict[str, Any]:
    """Bundles in the serving directory, newest first; ``active`` marks the one this worker
    serves, ``chosen`` the one every worker serves, ``workers`` the live workers serving each."""
    return {
        "versions": [
            {"version": v.version, "path": str(v.path), "created": v.created, "active": v.active, "chosen": v.chosen,
             "workers": v.workers}
            for v in store.versions()
        ]
    }
