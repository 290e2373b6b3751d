"""Recommendations: top-k for a known user, and for a new user described by liked movies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path as PathParam, Query, Request
from fastapi.responses import Response

from recommender.requests import filters, pool_size, split_list
from serving.bodies import json_response, recommendations_json
from serving.deps import ModelDep, SettingsDep
from serving.errors import ERRORS
from serving.offload import is_heavy, limited, off_loop_if
from serving.rerank import explain, mmr
from serving.schemas import NewUserRequest, RecommendationsOut, UserRecommendationQuery
from serving.settings import Settings
from serving.store import ServedModel

router = APIRouter(tags=["recommendations"])


def _ranked_items(served: ServedModel, fetch: Callable[[int], Any], k: int, diversity: float) -> tuple[np.ndarray, np.ndarray]:
    """Run a recommendation, over a larger pool when diversity re-ranking will pick from it."""
    rec = served.recommender
    result = fetch(pool_size(rec, k, diversity))
    idx, scores = result.item_idx, np.nan_to_num(result.scores, nan=0.0, posinf=0.0, neginf=0.0)
    if diversity > 0 and len(idx) > 1:
        order = mmr(idx, scores, rec.retrieval.item_vectors[idx], k, diversity)
        idx, scores = idx[order], scores[order]
    return idx[:k], scores[:k]


async def _items(
    settings: Settings, served: ServedModel, fetch: Callable[[int], Any], k: int, diversity: float, explained: bool,
    cached: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_ranked_items`, off the event loop when heavy (:func:`serving.offload.is_heavy`). A
    ``cached`` answer (``fetch`` only copies it) is not ranked again, so it stays on the loop
    unless diversity or explanations (or a long list) make it heavy."""
    ranked = settings.rank and served.recommender.ranker is not None and not cached
    return await off_loop_if(is_heavy(ranked, k, diversity, explained), _ranked_items, served, fetch, k, diversity)


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
    await limited(_with_reasons, items, served, history, ratings, idx, verb)


@router.get("/users/{user_id}/recommendations", response_model=RecommendationsOut, responses=ERRORS)
async def user_recommendations(
    user_id: Annotated[str, PathParam(min_length=1, max_length=200)],
    query: Annotated[UserRecommendationQuery, Query()],
    served: ModelDep,
    settings: SettingsDep,
    request: Request,
) -> Response:
    """Top-k movies for a known user, optionally filtered, diversified and explained."""
    rec = served.recommender
    u = rec.user_idx(user_id)
    wanted = filters(rec, split_list(query.genres), query.year_min, query.year_max, split_list(query.exclude))
    # a repeated plain request is answered with the bytes sent the first time; the stamp,
    # taken before the answer is read, keeps a body from outliving a change to the user
    plain = query.diversity <= 0 and not query.explain
    key = rec.answer_key(pool_size(rec, query.k, query.diversity), query.exclude_seen, wanted, settings.rank)
    stamp = rec.cache.stamp(u)
    if plain:
        blob = rec.cache.get_blob(u, key)
        if blob is not None:
            return json_response(blob)
    hit = rec.cached_answer(u, key)
    idx, scores = await _items(
        settings, served,
        (lambda n: hit) if hit is not None else
        (lambda n: rec.recommend_user(user_id, n, query.exclude_seen, wanted, rank=settings.rank)),
        query.k, query.diversity, query.explain, cached=hit is not None,
    )
    items = served.records(idx, scores)
    if query.explain:
        history, ratings = served.user_history(u)  # live feedback included
        await _explained(items, served, history, ratings, idx, "rated")
    body = recommendations_json({"user_id": rec.users.id_of(u), "model_version": served.model_version, "items": items})
    if plain:
        rec.cache.put_blob(u, key, body, stamp, alias=(request.scope["path"], request.scope["query_string"]))
    return json_response(body)


@router.post("/recommendations", response_model=RecommendationsOut, responses=ERRORS)
async def new_user_recommendations(body: NewUserRequest, served: ModelDep, settings: SettingsDep) -> dict[str, Any]:
    """Top-k for a new user described by liked movies (the user tower pools them; no retraining)."""
    rec = served.recommender
    wanted = filters(rec, body.genres, body.year_min, body.year_max, body.exclude_items)
    idx, scores = await _items(
        settings, served, lambda n: rec.recommend_from_items(body.liked_items, n, wanted, rank=settings.rank), body.k,
        body.diversity, body.explain,
    )
    items = served.records(idx, scores)
    if body.explain:
        liked = np.array([rec.item_idx(i) for i in body.liked_items], dtype=np.int64)
        await _explained(items, served, liked, None, idx, "liked")
    return {"user_id": None, "model_version": served.model_version, "items": items}
