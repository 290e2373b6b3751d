"""What routes need, as ``Annotated`` dependencies: settings, the store, the model of one
request, the metrics, and the key checks of admin routes and public writes."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from pydantic import SecretStr

from recommender.state import StateError
from serving.freshness import StateCheck, catch_up, unreadable
from serving.metrics import Metrics
from serving.settings import Settings
from serving.store import ModelStore, ServedModel

API_KEY_HEADER = "X-API-Key"


# async, like the read routes: these take well under a millisecond, and a thread-pool hop per
# dependency would cost more than the work itself
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> ModelStore:
    return request.app.state.store


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_model(request: Request) -> ServedModel:
    """The model for this request: one reference, held until the answer is sent.

    Before it is handed out it catches up with the online state: one indexed lookup of the
    newest sequence number (:class:`~serving.freshness.StateCheck`: on the event loop for
    SQLite, a local read; in a thread with a bounded wait for PostgreSQL), and only when
    another worker wrote since, the events after ours, applied in a thread so that a large
    catch-up never holds up the loop. So every worker answers with every write acknowledged
    before the request arrived, or with 503 when the state cannot say in time. (It reads the
    store itself rather than through :func:`get_store`: one dependency fewer to solve per request.)
    """
    store: ModelStore = request.app.state.store
    served = store.get()
    check: StateCheck | None = getattr(request.app.state, "check", None)
    if check is not None:
        try:
            behind = await check.behind(served.recommender.applied_seq)
        except StateError:
            raise
        except Exception as e:
            raise unreadable(e) from e
        if behind:
            await check.catch_up(catch_up, served.recommender, store.state)
    return served


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
ModelDep = Annotated[ServedModel, Depends(get_model)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

_api_key = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False,
    description="admin key (MOVIEREC_API_KEY); for rating posts and added movies also the write key (MOVIEREC_WRITE_KEY)",
)


def _check_key(request: Request, given: str | None, required: bool) -> None:
    settings: Settings = request.app.state.settings
    if settings.api_key is None:
        if required:
            raise HTTPException(403, "admin routes are disabled: no MOVIEREC_API_KEY is configured")
        return
    expected = settings.api_key.get_secret_value().encode()
    # constant-time comparison: response time must not reveal how much of the key matched
    if given is None or not hmac.compare_digest(given.encode(), expected):
        raise HTTPException(401, f"missing or wrong {API_KEY_HEADER} header", headers={"WWW-Authenticate": "APIKey"})


def require_admin(request: Request, key: Annotated[str | None, Security(_api_key)]) -> None:
    """Admin routes: 403 when no key is configured, 401 without the right key."""
    _check_key(request, key, required=True)


def _write_keys(settings: Settings, catalogue: bool) -> list[SecretStr] | None:
    """The keys a public write accepts; None when it is open to anyone.

    ``MOVIEREC_WRITE_KEY`` is the one setting that guards every public write (rating posts and
    added movies); the admin key is accepted as well. Without it, rating posts are open and adding
    a movie needs the admin key when one is configured."""
    admin = [settings.api_key] if settings.api_key is not None else []
    if settings.write_key is not None:
        return [settings.write_key, *admin]
    return admin if catalogue and admin else None


def _require_writer(request: Request, given: str | None, catalogue: bool) -> None:
    settings: Settings = request.app.state.settings
    keys = _write_keys(settings, catalogue)
    if keys is None:
        return
    # every key compared in constant time, none skipped: the time must not tell which one nearly matched
    matches = [given is not None and hmac.compare_digest(given.encode(), k.get_secret_value().encode()) for k in keys]
    if not any(matches):
        what = "adding movies needs" if catalogue else "rating posts need"
        which = "MOVIEREC_WRITE_KEY or the admin key" if settings.write_key is not None else "the admin key"
        raise HTTPException(401, f"missing or wrong {API_KEY_HEADER} header ({what} {which})", headers={"WWW-Authenticate": "APIKey"})


def catalogue_writer_if_configured(request: Request, key: Annotated[str | None, Security(_api_key)]) -> None:
    """``POST /items``: the write key (or the admin key) when one is set, else the admin key when
    that is set, else open."""
    _require_writer(request, key, catalogue=True)


def writer_if_configured(request: Request, key: Annotated[str | None, Security(_api_key)]) -> None:
    """Rating posts: open unless ``MOVIEREC_WRITE_KEY`` is set; then that key (or the admin key)."""
    _require_writer(request, key, catalogue=False)
