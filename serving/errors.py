"""Errors: always JSON with a message, and a client's mistake is never a 500.

The domain's exceptions map to status codes here, once for every route: an unknown id is 404, a
bad value 422, a missing model 503, an online state that cannot answer 503 with ``Retry-After``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from recommender import UnknownIdError
from recommender.state import StateError
from serving.schemas import ErrorOut
from serving.store import NotReadyError

log = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "unknown user or item id"},
    422: {"model": ErrorOut, "description": "invalid parameters"},
    503: {"model": ErrorOut, "description": "no model loaded yet"},
}
"""The error answers of the read routes, as documented in the OpenAPI schema."""

ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or wrong X-API-Key"},
    403: {"model": ErrorOut, "description": "admin routes are off (no MOVIEREC_API_KEY set)"},
}
"""The error answers of routes behind a key."""


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    message = "; ".join(f"{'.'.join(e['loc'][1:]) or e['loc'][0] if e['loc'] else 'request'}: {e['msg']}" for e in errors)
    return JSONResponse({"detail": message or "invalid request", "errors": errors}, status_code=422)


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _unknown(request: Request, exc: UnknownIdError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _state_down(request: Request, exc: StateError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})


async def _not_ready(request: Request, exc: NotReadyError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503)


async def _bad_value(request: Request, exc: ValueError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def add_error_handlers(app: FastAPI) -> None:
    """Install the handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(UnknownIdError, _unknown)  # type: ignore[arg-type]
    app.add_exception_handler(StateError, _state_down)  # type: ignore[arg-type]
    app.add_exception_handler(NotReadyError, _not_ready)  # type: ignore[arg-type]
    app.add_exception_handler(ValueError, _bad_value)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal)
