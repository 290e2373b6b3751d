"""A user's live feedback: rating posts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path as PathParam

from recommender import writes
from recommender.events import encode_id
from recommender.state import AlreadyDone, Idempotency
from serving import idempotency
from serving.bodies import feedback_json
from serving.deps import ModelDep, SettingsDep, StoreDep, writer_if_configured
from serving.errors import ADMIN_ERRORS, ERRORS
from serving.freshness import catch_up
from serving.idempotency import IdempotencyKeyHeader
from serving.schemas import MAX_LIKED, FeedbackOut, RatingIn

router = APIRouter(tags=["recommendations"])


@router.post(
    "/users/{user_id}/ratings", response_model=FeedbackOut, responses={**ERRORS, 401: ADMIN_ERRORS[401]},
    dependencies=[Depends(writer_if_configured)],
)
def record_ratings(
    user_id: Annotated[str, PathParam(min_length=1, max_length=200)],
    body: Annotated[list[RatingIn], Body(min_length=1, max_length=MAX_LIKED)],
    served: ModelDep,
    store: StoreDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Any:
    """Live feedback: the ratings are committed to the online state (durable before this
    answers), then applied: the user's query vector is re-pooled from the updated history,
    so the next recommendation from any worker reflects them. An unknown user is created.
    ``movierec train --feedback STATE`` folds them into the next bundle. With an
    ``Idempotency-Key``, a retry gets the first answer and records nothing."""
    rec = served.recommender
    uid = rec.users.parse(user_id)  # 422 for an id of the wrong type, before anything is written
    key = idempotency.checked_key(idempotency_key)

    def answer(draft: dict[str, Any]) -> bytes:
        catch_up(rec, store.state)
        u = rec.user_idx(uid)
        return feedback_json({
            "user_id": rec.users.id_of(u),
            "created": draft["created"],
            "recorded": draft["recorded"],
            "history_length": len(rec.histories.of(u)),
            "model_version": served.model_version,
        })

    idem = None
    if key is not None:
        state = writes.require_state(store.state, "ratings not recorded")
        payload = [r.model_dump(mode="json") for r in body]
        idem = Idempotency(f"POST /users/{encode_id(uid)}/ratings", key, idempotency.fingerprint(payload), 200, settings.idempotency_ttl)
        again = idempotency.prior_answer(state, idem, answer)
        if again is not None:
            return again
    rows = writes.rating_rows(rec, [(r.item_id, r.rating) for r in body])  # 404 or 422 before anything is written
    try:
        draft = writes.record_ratings(store.state, rec, uid, rows, idempotency=idem)
    except AlreadyDone as e:  # only with a key: a retry that raced the first request, which won
        return idempotency.replay(store.state, e.remembered, idem, answer)  # type: ignore[arg-type]
    return idempotency.answered(store.state, idem, answer(draft))
