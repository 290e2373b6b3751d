"""The web page and the HTML report of the served model (not part of the API schema)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.deps import SettingsDep, StoreDep
from serving.schemas import ErrorOut
from serving.settings import Settings
from serving.store import ModelStore

WEB_DIR = Path(__file__).parent / "web"
"""The page and its static files (mounted at ``/static`` by the app)."""

router = APIRouter(include_in_schema=False)


def _report_path(settings: Settings, store: ModelStore) -> Path | None:
    """``MOVIEREC_REPORT``, else ``report.html`` inside the served bundle or beside it (the demo
    writes ``demo-output/report.html`` next to ``demo-output/model``)."""
    if settings.report is not None:
        return settings.report if settings.report.is_file() else None
    served = store.current
    if served is None:  # no model loaded yet: no report either
        return None
    for candidate in (served.path / "report.html", served.path.parent / "report.html"):
        if candidate.is_file():
            return candidate
    return None


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")


@router.get("/report", responses={404: {"model": ErrorOut}})
def report(store: StoreDep, settings: SettingsDep) -> FileResponse:
    """The HTML report of the served model (``movierec report``), when one was written."""
    path = _report_path(settings, store)
    if path is None:
        raise StarletteHTTPException(404, "no report for this model; write one with movierec report --model DIR --out DIR/report.html")
    return FileResponse(path, media_type="text/html")
