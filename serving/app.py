"""The HTTP service: ``create_app(settings)`` builds a FastAPI app over one model bundle.

Nothing is loaded at import time: the lifespan loads the bundle once into a
:class:`~serving.store.ModelStore` on ``app.state`` and routes receive the current model through
a dependency, one reference per request, so a hot reload never changes the model under a
request that is already running. This module imports only run-time code (the recommender,
retrieval towers, content transform); no Lightning or training modules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import hmac
import inspect
import ipaddress
import json
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
import numpy as np
from fastapi import Body, Depends, FastAPI, Header, HTTPException, Path as PathParam, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from pydantic import SecretStr, TypeAdapter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from movierec.core.data import to_plain
from recommender import Filters, HybridRecommender, UnknownIdError
from recommender.diversity import mmr
from recommender.explain import explain
from serving.schemas import (
    MAX_LIKED,
    ErrorOut,
    FeedbackOut,
    HealthOut,
    ItemDetail,
    NewItemRequest,
    NewUserRequest,
    RatingIn,
    RecommendationsOut,
    ReloadOut,
    SearchOut,
    SearchQuery,
    SimilarOut,
    SimilarQuery,
    StatusOut,
    UserRecommendationQuery,
    VersionsOut,
)
from serving.settings import Settings
from recommender.events import encode_id, is_generated
from recommender.state import AlreadyDone, IdConflict, Idempotency, Remembered, StateError, open_state
from serving.freshness import StateCheck
from serving.store import ModelStore, NotReadyError, ReloadError, ReloadResult, ServedModel, newest_bundle
from serving.watcher import Watcher

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).parent / "web"
API_KEY_HEADER = "X-API-Key"

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "unknown user or item id"},
    422: {"model": ErrorOut, "description": "invalid parameters"},
    503: {"model": ErrorOut, "description": "no model loaded yet"},
}
_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or wrong X-API-Key"},
    403: {"model": ErrorOut, "description": "admin routes are off (no MOVIEREC_API_KEY set)"},
}


# ---- middleware ------------------------------------------------------------------------------------
async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodyLimitMiddleware:
    """413 for request bodies over ``max_bytes``, before any route parses them.

    A declared ``Content-Length`` is checked up front. A chunked body (no length) is read
    here up to the limit and replayed to the app, so no route ever holds more than
    ``max_bytes`` of request body.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        too_large = {"detail": f"request body is larger than {self.max_bytes} bytes"}
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                return
            if declared > self.max_bytes:
                await _send_json(send, 413, too_large)
                return
        elif chunked:
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # client went away
                size += len(message.get("body", b""))
                if size > self.max_bytes:
                    await _send_json(send, 413, too_large)
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)


class TimeoutMiddleware:
    """503 JSON for a request that runs longer than ``seconds``, so one slow or stuck request
    (a huge filter, a starved thread pool) cannot hold a client forever.

    The handler task is cancelled; a synchronous route keeps its worker thread until it returns
    (Python threads cannot be stopped) but its late answer is dropped. Admin routes are exempt:
    a reload legitimately takes as long as loading a bundle. If the response had already
    started when time ran out it cannot be replaced, and the connection is closed unfinished.
    """

    def __init__(self, app: ASGIApp, seconds: float, exempt: tuple[str, ...] = ("/admin/",)) -> None:
        self.app = app
        self.seconds = seconds
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.seconds <= 0 or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            # asyncio.timeout cancels this task at the deadline; wait_for would start a second
            # task per request (about a tenth of a cached answer's time)
            async with asyncio.timeout(self.seconds):
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            log.warning("%s %s exceeded the %.3gs request budget", scope["method"], scope["path"], self.seconds)
            if started:
                raise
            await _send_json(
                send,
                503,
                {"detail": f"request took longer than {self.seconds:g} s and was abandoned; retry later"},
                headers=[(b"retry-after", b"1")],
            )


class MetricsMiddleware:
    """Request counts and latency histograms labelled by route *template* (``/items/{item_id}``),
    never the raw path, so the number of series stays bounded whatever clients send.

    The labelled children are looked up once per (method, template[, status]) and kept: a
    ``labels()`` call takes a lock and normalises its arguments, twice per request otherwise.
    """

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.latency = latency
        self._latency: dict[tuple[str, str], Any] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None)
            if template is None:
                template = "/static" if scope["path"].startswith("/static/") else "unmatched"
            method = scope["method"]
            timer = self._latency.get((method, template))
            if timer is None:
                timer = self._latency[(method, template)] = self.latency.labels(method, template)
            timer.observe(time.perf_counter() - t0)
            counter = self._requests.get((method, template, status))
            if counter is None:
                counter = self._requests[(method, template, status)] = self.requests.labels(method, template, str(status))
            counter.inc()


class CachedAnswerMiddleware:
    """``GET /users/{user_id}/recommendations`` answered from the answer cache before routing.

    When the app answered a plain request (no diversity, no explanations) it keeps the JSON
    body with the cached answer and remembers the exact path and query string that asked for
    it (:meth:`~recommender.cache.AnswerCache.put_blob`). The same path and query string
    parse to the same user and request for the same model, so a repeat is sent those bytes
    here, without parameter parsing, dependencies or serialisation (about a third of the
    time of the routed answer). Everything else, and a repeat whose body is gone (the user
    rated, the catalogue changed, evicted), goes to the app. The online-state check is the
    same as :func:`get_model`'s: a worker behind the state lets the app catch up first; when
    the state cannot answer (stalled past its bound, or unreachable) the cached body is sent.
    It sits inside the metrics, size-limit, timeout and CORS layers, so those see it as any
    other request, labelled with the route's template.
    """

    PREFIX = "/users/"
    SUFFIX = "/recommendations"

    def __init__(self, app: ASGIApp, host: FastAPI) -> None:
        self.app = app
        self.host = host
        self.route = next(r for r in host.routes if getattr(r, "path", None) == self.PREFIX + "{user_id}" + self.SUFFIX)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            if path.startswith(self.PREFIX) and path.endswith(self.SUFFIX):
                body = await self._cached(path, scope["query_string"])
                if body is not None:
                    scope["route"] = self.route
                    await send({"type": "http.response.start", "status": 200, "headers": [
                        (b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

    async def _cached(self, path: str, query: bytes) -> bytes | None:
        store: ModelStore | None = getattr(self.host.state, "store", None)
        served = store._current if store is not None else None
        if served is None:
            return None
        rec = served.recommender
        check: StateCheck | None = getattr(self.host.state, "check", None)
        if check is not None:
            try:
                if await check.behind(rec.applied_seq):
                    return None  # the app catches up, then answers
            except Exception:
                # the database is stalled or away: the answer this worker has is still sent (it
                # holds every write this worker applied; uncached requests get 503 meanwhile)
                pass
        return rec.cache.blob_for((path, query))


def _metrics_registry() -> tuple[CollectorRegistry, Counter, Histogram, Counter]:
    """A registry per app (tests build many apps); with several workers and
    ``PROMETHEUS_MULTIPROC_DIR`` set, ``/metrics`` aggregates over all worker processes."""
    registry = CollectorRegistry(auto_describe=True)
    requests = Counter(
        "movierec_http_requests_total", "HTTP requests by method, route template and status",
        ["method", "route", "status"], registry=registry,
    )
    latency = Histogram(
        "movierec_http_request_duration_seconds", "HTTP request latency by method and route template",
        ["method", "route"], registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    )
    reloads = Counter("movierec_model_reloads_total", "bundle reloads by outcome", ["outcome"], registry=registry)
    return registry, requests, latency, reloads


def _render_metrics(registry: CollectorRegistry) -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)
    return generate_latest(registry)


# ---- dependencies --------------------------------------------------------------------------------
async def get_store(request: Request) -> ModelStore:
    # async (like the read routes below): these handlers take well under a millisecond without
    # the ranker, and a thread-pool hop per dependency, endpoint and serialisation cost more
    # than the work itself (448 -> 525 req/s for GET /items/{id} from this change alone)
    return request.app.state.store


async def get_model(request: Request) -> ServedModel:
    """The model for this request: one reference, held until the answer is sent.

    Before it is handed out it catches up with the online state: one indexed lookup of the
    newest sequence number (:class:`~serving.freshness.StateCheck`: on the event loop for
    SQLite, a few microseconds; in a thread with a bounded wait for PostgreSQL), and only when
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
        except Exception as e:  # the database went away: the answer would miss acknowledged writes
            log.error("online state unreadable: %s", e)
            raise StateError(f"online state unreadable ({e.__class__.__name__}); retry later") from e
        if behind:
            await check.catch_up(catch_up, served, store.state)
    return served


def catch_up(served: ServedModel, state: Any) -> None:
    try:
        served.recommender.catch_up(state)
    except StateError:
        raise
    except Exception as e:  # the database went away: the answer would miss acknowledged writes
        log.error("online state unreadable: %s", e)
        raise StateError(f"online state unreadable ({e.__class__.__name__}); retry later") from e


StoreDep = Annotated[ModelStore, Depends(get_store)]
ModelDep = Annotated[ServedModel, Depends(get_model)]
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
    a movie needs the admin key when one is configured, as before the write key existed."""
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


IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255


def _idempotency_key(value: str | None) -> str | None:
    """The client's ``Idempotency-Key``, checked: 1..255 printable ASCII characters (422 otherwise)."""
    if value is None:
        return None
    if not value or len(value) > MAX_IDEMPOTENCY_KEY or not all(" " <= c <= "~" for c in value):
        raise ValueError(f"{IDEMPOTENCY_HEADER} header: 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters expected")
    return value


def _fingerprint(payload: Any) -> str:
    """A request body's identity: sha256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        description="a client's key for this write (1-255 printable ASCII characters): a retry with the same key and body gets "
        "the first answer and writes nothing; the same key with another body is 422. Scoped by route (and user for "
        "ratings), remembered for MOVIEREC_IDEMPOTENCY_TTL seconds (a day by default).",
    ),
]


def _replay(state: Any, first: Remembered, idem: Idempotency, build: Callable[[dict[str, Any]], bytes]) -> Response:
    """The first answer to a write done under ``idem``'s key, again (nothing is written).

    When the first request committed but its answer is not stored yet (it is being built, or its
    worker died in between), the answer is built from the record's draft and the state, and
    stored: the first answer stored wins, so the two requests still get the same bytes."""
    if first.fingerprint != idem.fingerprint:
        raise HTTPException(
            422, f"{IDEMPOTENCY_HEADER} {idem.key!r} was already used for a different request to this route; send a new key for a new request"
        )
    body = first.body
    if body is None:
        body = _finish(state, idem, build(first.draft))
    return Response(body.encode(), status_code=first.status, media_type="application/json", headers={"Idempotent-Replayed": "true"})


def _finish(state: Any, idem: Idempotency, body: bytes) -> str:
    """Store the answer of a write done under ``idem``'s key (the write itself is committed)."""
    try:
        return state.finish_idempotent(idem.scope, idem.key, body.decode())
    except Exception as e:
        log.error("online state not writable: %s", e)
        raise StateError(
            f"online state is not writable; the write was recorded, retry with the same {IDEMPOTENCY_HEADER} for its answer"
        ) from e


def _remembered(state: Any, idem: Idempotency) -> Remembered | None:
    try:
        return state.remembered(idem.scope, idem.key, idem.ttl)
    except Exception as e:
        log.error("online state unreadable: %s", e)
        raise StateError(f"online state unreadable ({e.__class__.__name__}); retry later") from e


# ---- helpers -------------------------------------------------------------------------------------
def _genres(model: HybridRecommender, names: list[str] | None) -> list[str] | None:
    """Canonical genre names (case-insensitive); 422 for a genre the catalogue does not have."""
    if not names:
        return None
    known = {g.lower(): g for g in model.genre_vocab}
    out = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        if name.lower() not in known:
            raise ValueError(f"unknown genre {name!r}; known genres: {', '.join(model.genre_vocab)}")
        out.append(known[name.lower()])
    return out or None


def _pool(rec: HybridRecommender, k: int, diversity: float) -> int:
    """How many to fetch: ``k``, or a larger pool when diversity re-ranking picks from it."""
    return k if diversity <= 0 else min(max(3 * k, 50), rec.n_items)


def _ranked_items(
    served: ServedModel,
    fetch: Callable[[int], Any],
    k: int,
    diversity: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Run a recommendation, over a larger pool when diversity re-ranking will pick from it."""
    rec = served.recommender
    result = fetch(_pool(rec, k, diversity))
    idx, scores = result.item_idx, np.nan_to_num(result.scores, nan=0.0, posinf=0.0, neginf=0.0)
    if diversity > 0 and len(idx) > 1:
        order = mmr(idx, scores, rec.retrieval.item_vectors[idx], k, diversity)
        idx, scores = idx[order], scores[order]
    return idx[:k], scores[:k]


OFF_LOOP_K = 100
"""Lists longer than this (or diversified, or explained) are built in the thread pool."""


RANKING_THREADS = 2
"""Ranked answers computed at once per worker process; the rest wait their turn off the event
loop. They are short runs of small numpy and torch operations that take and release the GIL many
times each: many of them in parallel threads of one process still run one at a time, but hand the
GIL back and forth between every operation, and each costs about twice the CPU it costs alone
(benchmarks/RESULTS.md, session 8). That happens whenever one worker holds most connections:
uvicorn's workers share one listening socket and the kernel may give one worker all of them. Two,
not one, so that one long answer (explanations or diversity at a large k) does not hold up the
short ones behind it; the event loop stays free meanwhile (health checks, cached answers)."""

_RANKING_LIMITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()


def _ranking_limiter() -> anyio.CapacityLimiter:
    """This event loop's limiter of ranked answers (one loop per worker process; tests start several)."""
    loop = asyncio.get_running_loop()
    limiter = _RANKING_LIMITERS.get(loop)
    if limiter is None:
        limiter = _RANKING_LIMITERS[loop] = anyio.CapacityLimiter(RANKING_THREADS)
    return limiter


async def _off_loop_if_heavy(
    settings: Settings,
    served: ServedModel,
    fetch: Callable[[int], Any],
    k: int,
    diversity: float,
    explained: bool,
    cached: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Short retrieval-only answers take well under a millisecond and run on the event loop;
    ranking takes milliseconds, and MMR and explanations grow with ``k``, so those run in the
    thread pool where they cannot hold up other requests (health checks, reloads). A
    ``cached`` answer (``fetch`` only copies it) is not ranked again, so it stays on the loop
    unless diversity or explanations (or a long list) make it heavy."""
    ranked = settings.rank and served.recommender.ranker is not None and not cached
    heavy = ranked or diversity > 0 or explained or k > OFF_LOOP_K
    if heavy:
        return await anyio.to_thread.run_sync(functools.partial(_ranked_items, served, fetch, k, diversity), limiter=_ranking_limiter())
    return _ranked_items(served, fetch, k, diversity)


_RECOMMENDATIONS = TypeAdapter(RecommendationsOut)
# the write answers are serialised here, as FastAPI would for their response_model, so that the
# bytes stored with an Idempotency-Key are the bytes sent
_FEEDBACK = TypeAdapter(FeedbackOut)
_ITEM = TypeAdapter(ItemDetail)


def _recommendations_json(content: dict[str, Any]) -> bytes:
    """The body FastAPI would send for ``response_model=RecommendationsOut``: the same
    validation and the same serializer (pydantic's ``dump_json``), so the same bytes; done here
    so that the bytes can be cached with the answer and sent again as they are."""
    return _RECOMMENDATIONS.dump_json(_RECOMMENDATIONS.validate_python(content, from_attributes=True), by_alias=True)


def _json(body: bytes) -> Response:
    return Response(content=body, media_type="application/json")


def _with_reasons(
    items: list[dict[str, Any]], served: ServedModel, history: np.ndarray, ratings: np.ndarray | None, idx: np.ndarray, verb: str
) -> None:
    for item, because in zip(items, explain(served.recommender, history, ratings, idx, verb=verb)):
        item["because"] = because


async def _explained(
    items: list[dict[str, Any]], served: ServedModel, history: np.ndarray, ratings: np.ndarray | None, idx: np.ndarray, verb: str
) -> None:
    """Explanations, in the thread pool under the same per-worker limit as ranked answers: their
    work grows with ``k`` times the (bounded) history, so they wait their turn like a ranking."""
    await anyio.to_thread.run_sync(
        functools.partial(_with_reasons, items, served, history, ratings, idx, verb), limiter=_ranking_limiter()
    )


# ---- app -----------------------------------------------------------------------------------------
def _report_path(settings: Settings, store: ModelStore) -> Path | None:
    """``MOVIEREC_REPORT``, else ``report.html`` inside the served bundle or beside it (the demo
    writes ``demo-output/report.html`` next to ``demo-output/model``)."""
    if settings.report is not None:
        return settings.report if settings.report.is_file() else None
    try:
        bundle = store.get().path
    except Exception:  # no model loaded yet: no report either
        return None
    for candidate in (bundle / "report.html", bundle.parent / "report.html"):
        if candidate.is_file():
            return candidate
    return None


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. With ``settings=None`` they come from the environment (``MOVIEREC_*``),
    which is how uvicorn workers started from an import string get them."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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

    app = FastAPI(
        title="movierec",
        summary="Hybrid movie recommendations: two-tower retrieval, content similarity, ranker.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    registry, requests, latency, reloads = _metrics_registry()

    # ---- errors: always JSON with a message; client mistakes are never 500 -----------------------
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        message = "; ".join(f"{'.'.join(e['loc'][1:]) or e['loc'][0] if e['loc'] else 'request'}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": message or "invalid request", "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(UnknownIdError)
    async def _unknown(request: Request, exc: UnknownIdError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(StateError)
    async def _state_down(request: Request, exc: StateError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(NotReadyError)
    async def _not_ready(request: Request, exc: NotReadyError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(ValueError)
    async def _bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    # ---- health ------------------------------------------------------------------------------------
    @app.get("/health", response_model=HealthOut, tags=["health"])
    async def health() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", response_model=StatusOut, responses={503: {"model": ErrorOut}}, tags=["health"])
    async def ready(store: StoreDep) -> dict[str, Any]:
        """Readiness: 200 once a bundle is loaded, else 503."""
        return {"status": "ready", "model_version": store.get().model_version}

    # ---- recommendations ---------------------------------------------------------------------------
    @app.get(
        "/users/{user_id}/recommendations", response_model=RecommendationsOut, responses=_ERRORS, tags=["recommendations"]
    )
    async def user_recommendations(
        user_id: Annotated[str, PathParam(min_length=1, max_length=200)],
        query: Annotated[UserRecommendationQuery, Query()],
        served: ModelDep,
        request: Request,
    ) -> Response:
        """Top-k movies for a known user, optionally filtered, diversified and explained."""
        rec = served.recommender
        u = rec.user_idx(user_id)
        genres = _genres(rec, query.genres.split(",") if query.genres else None)
        exclude = [e.strip() for e in query.exclude.split(",") if e.strip()] if query.exclude else None
        filters = Filters(genres=genres, year_min=query.year_min, year_max=query.year_max, exclude_items=exclude)
        # a repeated plain request is answered with the bytes sent the first time; the stamp,
        # taken before the answer is read, keeps a body from outliving a change to the user
        plain = query.diversity <= 0 and not query.explain
        key = rec.answer_key(_pool(rec, query.k, query.diversity), query.exclude_seen, filters, settings.rank)
        stamp = rec.cache.stamp(u)
        if plain:
            blob = rec.cache.get_blob(u, key)
            if blob is not None:
                return _json(blob)
        hit = rec.cached_answer(u, key)
        idx, scores = await _off_loop_if_heavy(
            settings, served,
            (lambda n: hit) if hit is not None else
            (lambda n: rec.recommend_user(user_id, n, query.exclude_seen, filters, rank=settings.rank)),
            query.k, query.diversity, query.explain, cached=hit is not None,
        )
        items = served.records(idx, scores)
        if query.explain:
            history, ratings = served.user_history(u)  # live feedback included
            await _explained(items, served, history, ratings, idx, "rated")
        body = _recommendations_json({"user_id": rec.users.id_of(u), "model_version": served.model_version, "items": items})
        if plain:
            rec.cache.put_blob(u, key, body, stamp, alias=(request.scope["path"], request.scope["query_string"]))
        return _json(body)

    @app.post(
        "/users/{user_id}/ratings", response_model=FeedbackOut, responses={**_ERRORS, 401: _ADMIN_ERRORS[401]},
        dependencies=[Depends(writer_if_configured)], tags=["recommendations"],
    )
    def record_ratings(
        user_id: Annotated[str, PathParam(min_length=1, max_length=200)],
        body: Annotated[list[RatingIn], Body(min_length=1, max_length=MAX_LIKED)],
        served: ModelDep,
        store: StoreDep,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Any:
        """Live feedback: the ratings are committed to the online state (durable before this
        answers), then applied: the user's query vector is re-pooled from the updated history,
        so the next recommendation from any worker reflects them. An unknown user is created.
        ``movierec train --feedback STATE`` folds them into the next bundle. With an
        ``Idempotency-Key``, a retry gets the first answer and records nothing."""
        rec = served.recommender
        uid = rec.users.parse(user_id)  # 422 for an id of the wrong type, before anything is written
        key = _idempotency_key(idempotency_key)

        def answer(draft: dict[str, Any]) -> bytes:
            catch_up(served, store.state)
            u = rec.user_idx(uid)
            return _FEEDBACK.dump_json(_FEEDBACK.validate_python({
                "user_id": rec.users.id_of(u),
                "created": draft["created"],
                "recorded": draft["recorded"],
                "history_length": len(rec.histories.of(u)),
                "model_version": served.model_version,
            }))

        idem = None
        if key is not None:
            if store.state is None:
                raise StateError("no online state is configured; ratings not recorded")
            payload = [r.model_dump(mode="json") for r in body]
            idem = Idempotency(f"POST /users/{encode_id(uid)}/ratings", key, _fingerprint(payload), 200, settings.idempotency_ttl)
            first = _remembered(store.state, idem)
            if first is not None:
                return _replay(store.state, first, idem, answer)
        rows = []
        for r in body:
            i = rec.item_idx(r.item_id)  # 404 (or 422) before anything is written
            rows.append((rec.item_ids.id_of(i), r.rating, rec.title_of(i)))
        lo, hi = (float(v) for v in rec.bundle.manifest.get("dataset", {}).get("rating_scale", (-np.inf, np.inf)))
        for r in body:
            if not lo <= r.rating <= hi:
                raise ValueError(f"rating {r.rating:g} for item {r.item_id!r} is outside this model's scale {lo:g}..{hi:g}")
        if store.state is None:
            raise StateError("no online state is configured; ratings not recorded")
        draft = {"created": bool(rec.users.get(uid) < 0), "recorded": len(body)}
        if idem is not None:
            idem = dataclasses.replace(idem, draft=draft)
        try:
            store.state.append_ratings(uid, rows, idempotency=idem)
        except AlreadyDone as e:  # only with a key: a retry that raced the first request, which won
            return _replay(store.state, e.remembered, idem, answer)  # type: ignore[arg-type]
        except Exception as e:
            log.error("online state not writable: %s", e)
            raise StateError("online state is not writable; ratings not recorded") from e
        body_json = answer(draft)
        if idem is None:
            return _json(body_json)
        return _json(_finish(store.state, idem, body_json).encode())

    @app.post("/recommendations", response_model=RecommendationsOut, responses=_ERRORS, tags=["recommendations"])
    async def new_user_recommendations(body: NewUserRequest, served: ModelDep) -> dict[str, Any]:
        """Top-k for a new user described by liked movies (the user tower pools them; no retraining)."""
        rec = served.recommender
        filters = Filters(
            genres=_genres(rec, body.genres), year_min=body.year_min, year_max=body.year_max, exclude_items=body.exclude_items
        )
        idx, scores = await _off_loop_if_heavy(
            settings, served, lambda n: rec.recommend_from_items(body.liked_items, n, filters, rank=settings.rank), body.k,
            body.diversity, body.explain,
        )
        items = served.records(idx, scores)
        if body.explain:
            liked = np.array([rec.item_idx(i) for i in body.liked_items], dtype=np.int64)
            await _explained(items, served, liked, None, idx, "liked")
        return {"user_id": None, "model_version": served.model_version, "items": items}

    # ---- catalogue ---------------------------------------------------------------------------------
    @app.get("/items", response_model=SearchOut, responses=_ERRORS, tags=["items"])
    async def search_items(query: Annotated[SearchQuery, Query()], served: ModelDep) -> dict[str, Any]:
        """Title search: case-insensitive substring, prefix matches first, then by popularity."""
        return {"query": query.q, "items": served.recommender.search_titles(query.q, query.limit)}

    @app.get("/items/{item_id}", response_model=ItemDetail, responses=_ERRORS, tags=["items"])
    async def get_item(item_id: Annotated[str, PathParam(min_length=1, max_length=200)], served: ModelDep) -> dict[str, Any]:
        """One movie's metadata."""
        rec = served.recommender
        i = rec.item_idx(item_id)
        out = rec.item_records(np.array([i]))[0]
        row = rec.items.iloc[i]
        for col in ("description", "tags"):
            value = row.get(col)
            out[col] = value if isinstance(value, str) and value else None
        out["popularity"] = int(rec.item_counts[i]) if i < len(rec.item_counts) else 0
        return out

    @app.get("/items/{item_id}/similar", response_model=SimilarOut, responses=_ERRORS, tags=["items"])
    async def similar_items(
        item_id: Annotated[str, PathParam(min_length=1, max_length=200)],
        query: Annotated[SimilarQuery, Query()],
        served: ModelDep,
    ) -> dict[str, Any]:
        """Movies like this one by content vectors, two-tower (collaborative) vectors, or both."""
        rec = served.recommender
        i = rec.item_idx(item_id)
        result = rec.similar(item_id, query.k, by=query.by)
        return {
            "item_id": to_plain(rec.items["item_id"].iat[i]),
            "by": query.by,
            "model_version": served.model_version,
            "items": served.records(result.item_idx, np.nan_to_num(result.scores)),
        }

    @app.post(
        "/items",
        status_code=201,
        response_model=ItemDetail,
        responses={**_ERRORS, **_ADMIN_ERRORS, 409: {"model": ErrorOut, "description": "item_id already exists"}},
        dependencies=[Depends(catalogue_writer_if_configured)],
        tags=["items"],
    )
    def add_item(body: NewItemRequest, served: ModelDep, store: StoreDep, idempotency_key: IdempotencyKeyHeader = None) -> Any:
        """Add a movie at run time: it gets content and two-tower vectors from its text and genres,
        joins both indexes, and is found by /similar and recommendable at once, through every
        worker. It is kept in the online state, so it survives restarts and reloads. With an
        ``Idempotency-Key``, a retry gets the first answer (the same movie) and adds nothing."""
        rec = served.recommender
        key = _idempotency_key(idempotency_key)

        def answer(draft: dict[str, Any]) -> bytes:
            catch_up(served, store.state)
            item_id = draft["item_id"]
            i = rec.item_idx(item_id)
            try:  # the vectors it got, kept beside its text (best effort: the movie is already stored)
                store.state.save_vectors(item_id, served.model_version, rec.content.item_vectors[i], rec.retrieval.item_vectors[i])
            except Exception as e:
                log.warning("vectors of added movie %r not stored: %s", item_id, e)
            out = rec.item_records(np.array([i]))[0]
            out.update({"description": body.description, "tags": None, "popularity": 0})
            return _ITEM.dump_json(_ITEM.validate_python(out))

        idem = None
        if key is not None:
            if store.state is None:
                raise StateError("no online state is configured; movie not added")
            idem = Idempotency("POST /items", key, _fingerprint(body.model_dump(mode="json")), 201, settings.idempotency_ttl)
            first = _remembered(store.state, idem)
            if first is not None:
                return _replay(store.state, first, idem, answer)
        genres = _genres(rec, body.genres) or []
        item_id = None
        if body.item_id is not None:
            item_id = rec.item_ids.parse(body.item_id)  # 422 for an id of the wrong type
            if rec.item_ids.get(item_id) >= 0:
                raise HTTPException(409, f"item_id {item_id!r} already exists")
            if is_generated(item_id):
                raise ValueError(f"item_id {item_id!r} lies in the range the service generates ids from; leave it out to get one")
        if store.state is None:
            raise StateError("no online state is configured; movie not added")
        record = {"title": body.title, "genres": genres, "description": body.description or "", "year": body.year}
        try:
            item_id, _ = store.state.add_item(
                record, item_id, rec.item_ids.integer, lambda i: rec.item_ids.get(i) >= 0, idempotency=idem
            )
        except AlreadyDone as e:  # only with a key: a retry that raced the first request, which won
            return _replay(store.state, e.remembered, idem, answer)  # type: ignore[arg-type]
        except IdConflict as e:
            raise HTTPException(409, str(e)) from e
        except Exception as e:
            log.error("online state not writable: %s", e)
            raise StateError("online state is not writable; movie not added") from e
        body_json = answer({"item_id": to_plain(item_id)})
        if idem is None:
            return Response(body_json, status_code=201, media_type="application/json")
        return Response(_finish(store.state, idem, body_json).encode(), status_code=201, media_type="application/json")

    # ---- admin -------------------------------------------------------------------------------------
    @app.post(
        "/admin/reload",
        response_model=ReloadOut,
        responses={**_ADMIN_ERRORS, 409: {"model": ErrorOut, "description": "no bundle found or bundle refused"}},
        dependencies=[Depends(require_admin)],
        tags=["admin"],
    )
    def reload(
        store: StoreDep, force: Annotated[bool, Query(description="reload even when the newest bundle is already served")] = False
    ) -> dict[str, Any]:
        """Swap in the newest bundle; running requests finish on the old one; a bundle that fails
        verification is refused (409) and the old one keeps serving."""
        try:
            result = store.reload(force=force)
        except ReloadError as e:
            reloads.labels("refused").inc()
            raise HTTPException(409, str(e)) from e
        reloads.labels(result.status).inc()
        result = store.wait_for_workers(result, settings.converge_timeout)
        if result.status == "reloaded":
            store.prune(settings.keep_bundles)
        return _reload_out(result)

    @app.post(
        "/admin/rollback",
        response_model=ReloadOut,
        responses={**_ADMIN_ERRORS, 409: {"model": ErrorOut, "description": "no older bundle, or it was refused"}},
        dependencies=[Depends(require_admin)],
        tags=["admin"],
    )
    def rollback(store: StoreDep) -> dict[str, Any]:
        """Go back to the bundle before the served one; model and indexes switch together, and
        running requests finish on the model they started with."""
        try:
            result = store.rollback()
        except ReloadError as e:
            reloads.labels("rollback_refused").inc()
            raise HTTPException(409, str(e)) from e
        reloads.labels(result.status).inc()
        return _reload_out(store.wait_for_workers(result, settings.converge_timeout))

    @app.get("/admin/versions", response_model=VersionsOut, responses=_ADMIN_ERRORS, dependencies=[Depends(require_admin)], tags=["admin"])
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

    # ---- metrics, docs, page -----------------------------------------------------------------------
    @app.get("/metrics", response_class=PlainTextResponse, tags=["health"])
    async def metrics() -> PlainTextResponse:
        """Prometheus text: request counts and latency histograms by route template."""
        return PlainTextResponse(_render_metrics(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    @app.get("/report", include_in_schema=False, responses={404: {"model": ErrorOut}})
    def report(store: StoreDep) -> FileResponse:
        """The HTML report of the served model (``movierec report``), when one was written."""
        path = _report_path(settings, store)
        if path is None:
            raise StarletteHTTPException(404, "no report for this model; write one with movierec report --model DIR --out DIR/report.html")
        return FileResponse(path, media_type="text/html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    # outermost first: metrics see every request (413s included), then size limit, then CORS,
    # then the cached answers
    app.add_middleware(CachedAnswerMiddleware, host=app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    app.add_middleware(TimeoutMiddleware, seconds=settings.request_timeout)  # inside the size limit
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, requests=requests, latency=latency)
    return app


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


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (as ``MALLOC_ARENA_MAX=2`` would): with one arena per worker
    thread, RSS grew 12% over a 5-minute soak with reloads; capped it stayed within 2%
    (benchmarks/soak.py). Worker processes inherit the environment variable."""
    os.environ.setdefault("MALLOC_ARENA_MAX", str(arenas))
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8 = M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc: nothing to cap
        pass


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _limit_threads(threads: int) -> None:
    """``threads`` intra-op threads for torch, FAISS and BLAS in this process and the worker
    processes it starts (they read the environment when they import them). A request is a
    few small products; with one thread per worker the workers share the cores, where more
    threads spin while they wait for each other (measured: ~1.6 ms of CPU per uncached ranked
    request on 2 cores)."""
    for name in _THREAD_VARIABLES:
        os.environ[name] = str(threads)
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except Exception:  # no BLAS found to limit: nothing to do
        pass


_WORKER_SETTINGS = (
    "watch_interval", "heartbeat_interval", "worker_expiry", "converge_timeout",
    "state_check_timeout", "state_connect_timeout", "state_statement_timeout", "state_lock_timeout", "state_pool_size",
    "state_max_overflow", "state_read_pool_size", "state_pool_timeout",
)


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) reaches this machine only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if host.lower() == "localhost":
        return True
    import socket

    try:
        addresses = {info[4][0].split("%")[0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def warn_if_writes_are_open(settings: Settings) -> None:
    """One warning when the service listens beyond this machine and anyone may write."""
    if settings.write_key is not None or _is_loopback(settings.host):
        return
    what = "post ratings" if settings.api_key is not None else "post ratings and add movies"
    log.warning(
        "serving on %s, reachable from other machines, without MOVIEREC_WRITE_KEY: anyone who can connect may %s; "
        "set MOVIEREC_WRITE_KEY to require a key for every write", settings.host, what,
    )


WORKER_HEALTHCHECK_S = 60
"""Seconds a worker may take to answer uvicorn's liveness ping (starting up included)."""


def serve(settings: Settings, workers: int = 1) -> None:
    """Run the service with uvicorn (uvloop + httptools) on ``settings.host:settings.port``.

    One worker serves an app built here. Several workers are separate processes that each build
    their own app from the import string ``serving.app:create_app``; they read the same
    settings from ``MOVIEREC_*`` environment variables, which are set here for them.
    """
    import tempfile

    import uvicorn

    warn_if_writes_are_open(settings)  # here, in the one process that starts the workers: one warning
    _limit_malloc_arenas()
    _limit_threads(settings.threads)
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "log_level": settings.log_level,
        "access_log": False,  # per-request log lines cost more than the request itself here
    }
    if workers <= 1:
        uvicorn.run(create_app(settings), **common)
        return
    if settings.model is not None:
        os.environ["MOVIEREC_MODEL"] = str(settings.model)
    os.environ["MOVIEREC_MAX_BODY_BYTES"] = str(settings.max_body_bytes)
    os.environ["MOVIEREC_REQUEST_TIMEOUT"] = str(settings.request_timeout)
    if settings.cors_origins:
        os.environ["MOVIEREC_CORS_ORIGINS"] = ",".join(settings.cors_origins)
    if settings.api_key is not None:
        os.environ["MOVIEREC_API_KEY"] = settings.api_key.get_secret_value()
    if settings.write_key is not None:
        os.environ["MOVIEREC_WRITE_KEY"] = settings.write_key.get_secret_value()
    for name in _WORKER_SETTINGS:  # the rest of what each worker reads from the environment
        os.environ[f"MOVIEREC_{name.upper()}"] = str(getattr(settings, name))
    os.environ["MOVIEREC_IDEMPOTENCY_TTL"] = str(settings.idempotency_ttl)
    if settings.state_location is not None:  # every worker opens the same state
        key = "MOVIEREC_STATE_URL" if settings.state_url else "MOVIEREC_STATE_DIR"
        os.environ[key] = settings.state_location
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:
        # uvicorn's supervisor kills a worker that does not answer its ping within this many
        # seconds, and a starting worker answers only once it has imported torch and the rest:
        # with uvicorn's 5 s on a busy 2-core machine every new worker was killed while
        # importing, 17 times in 25 s, and one worker served alone (measured at load 9)
        common["timeout_worker_healthcheck"] = WORKER_HEALTHCHECK_S
    with tempfile.TemporaryDirectory(prefix="movierec-metrics-") as metrics_dir:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
        uvicorn.run("serving.app:create_app", factory=True, workers=workers, **common)


def run_server(model: Path | str, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """``movierec serve``: the other settings (API key, body limit, CORS) come from the environment."""
    settings = Settings(model=Path(model), host=host, port=port, workers=workers)
    serve(settings, workers=workers)
