"""Response caching: a repeated plain ``GET /users/{user_id}/recommendations`` is answered with
the bytes sent the first time, before routing.

The route keeps the JSON body of a plain answer (no diversity, no explanations) with the cached
answer and remembers the exact path and query string that asked for it
(:meth:`~recommender.cache.AnswerCache.put_blob`); the same path and query string parse to the
same user and request for the same model, so a repeat is sent those bytes here, without
parameter parsing, dependencies or serialisation.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.freshness import StateCheck
from serving.store import ModelStore


class CachedAnswerMiddleware:
    """``GET /users/{user_id}/recommendations`` answered from the answer cache before routing.

    Everything but a repeat of a plain request, and a repeat whose body is gone (the user
    rated, the catalogue changed, evicted), goes to the app. The online-state check is the
    same as :func:`serving.deps.get_model`'s: a worker behind the state lets the app catch up
    first; when the state cannot answer (stalled past its bound, or unreachable) the cached
    body is sent. It sits inside the metrics, size-limit, timeout and CORS layers, so those see
    it as any other request, labelled with the route's template.
    """

    PREFIX = "/users/"
    SUFFIX = "/recommendations"
    TEMPLATE = PREFIX + "{user_id}" + SUFFIX

    def __init__(self, app: ASGIApp, host: FastAPI, route: BaseRoute) -> None:
        """``route``: the route these answers stand in for (what the metrics label them with)."""
        self.app = app
        self.host = host
        self.route = route

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
        served = store.current if store is not None else None
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
