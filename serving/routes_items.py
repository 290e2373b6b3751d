"""The catalogue: title search, one movie, similar movies, and adding a movie."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Path as PathParam, Query

from movierec.core.data import to_plain
from recommender import writes
from recommender.requests import canonical_genres, item_detail
from recommender.state import AlreadyDone, IdConflict, Idempotency
from serving import idempotency
from serving.bodies import item_json
from serving.deps import ModelDep, SettingsDep, StoreDep, catalogue_writer_if_configured
from serving.errors import ADMIN_ERRORS, ERRORS
from serving.freshness import catch_up
from serving.idempotency import IdempotencyKeyHeader
from serving.schemas import ErrorOut, ItemDetail, NewItemRequest, SearchOut, SearchQuery, SimilarOut, SimilarQuery

router = APIRouter(tags=["items"])


@router.get("/items", response_model=SearchOut, responses=ERRORS)
async def search_items(query: Annotated[SearchQuery, Query()], served: ModelDep) -> dict[str, Any]:
    """Title search: case-insensitive substring, prefix matches first, then by popularity."""
    return {"query": query.q, "items": served.recommender.search_titles(query.q, query.limit)}


@router.get("/items/{item_id}", response_model=ItemDetail, responses=ERRORS)
async def get_item(item_id: Annotated[str, PathParam(min_length=1, max_length=200)], served: ModelDep) -> dict[str, Any]:
    """One movie's metadata."""
    rec = served.recommender
    return item_detail(rec, rec.item_idx(item_id))


@router.get("/items/{item_id}/similar", response_model=SimilarOut, responses=ERRORS)
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


@router.post(
    "/items",
    status_code=201,
    response_model=ItemDetail,
    responses={**ERRORS, **ADMIN_ERRORS, 409: {"model": ErrorOut, "description": "item_id already exists"}},
    dependencies=[Depends(catalogue_writer_if_configured)],
)
def add_item(
    body: NewItemRequest, served: ModelDep, store: StoreDep, settings: SettingsDep, idempotency_key: IdempotencyKeyHeader = None
) -> Any:
    """Add a movie at run time: it gets content and two-tower vectors from its text and genres,
    joins both indexes, and is found by /similar and recommendable at once, through every
    worker. It is kept in the online state, so it survives restarts and reloads. With an
    ``Idempotency-Key``, a retry gets the first answer (the same movie) and adds nothing."""
    rec = served.recommender
    key = idempotency.checked_key(idempotency_key)

    def answer(draft: dict[str, Any]) -> bytes:
        catch_up(rec, store.state)
        item_id = draft["item_id"]
        writes.keep_vectors(store.state, rec, item_id)
        out = rec.item_records(np.array([rec.item_idx(item_id)]))[0]
        out.update({"description": body.description, "tags": None, "popularity": 0})
        return item_json(out)

    idem = None
    if key is not None:
        state = writes.require_state(store.state, "movie not added")
        idem = Idempotency("POST /items", key, idempotency.fingerprint(body.model_dump(mode="json")), 201, settings.idempotency_ttl)
        again = idempotency.prior_answer(state, idem, answer)
        if again is not None:
            return again
    genres = canonical_genres(rec, body.genres) or []
    record = {"title": body.title, "genres": genres, "description": body.description or "", "year": body.year}
    try:
        item_id = writes.add_item(store.state, rec, record, writes.new_item_id(rec, body.item_id), idempotency=idem)
    except AlreadyDone as e:  # only with a key: a retry that raced the first request, which won
        return idempotency.replay(store.state, e.remembered, idem, answer)  # type: ignore[arg-type]
    except IdConflict as e:
        raise HTTPException(409, str(e)) from e
    return idempotency.answered(store.state, idem, answer({"item_id": to_plain(item_id)}), status=201)
