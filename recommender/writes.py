"""Writes at serve time: the checks a rating post or an added movie passes, and recording it.

A write is checked completely before anything is stored (an unknown item is 404, an id of the
wrong type or a rating outside the model's scale 422), then committed to the online state, which
every worker applies before its next answer (:meth:`HybridRecommender.catch_up`). The HTTP routes
call these; so can any other client of the serve-time layer.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from recommender.model import HybridRecommender
from recommender.events import is_generated
from recommender.state import AlreadyDone, IdConflict, Idempotency, StateError

log = logging.getLogger(__name__)


def require_state(state: Any | None, unless: str) -> Any:
    """``state``, or :class:`StateError` (HTTP 503) when no online state is configured."""
    if state is None:
        raise StateError(f"no online state is configured; {unless}")
    return state


def rating_scale(rec: HybridRecommender) -> tuple[float, float]:
    """The ``(lowest, highest)`` rating the model was trained on (unbounded when the bundle does
    not say)."""
    lo, hi = rec.bundle.manifest.get("dataset", {}).get("rating_scale", (-np.inf, np.inf))
    return float(lo), float(hi)


def rating_rows(rec: HybridRecommender, ratings: Iterable[tuple[Any, float]]) -> list[tuple[Any, float, str]]:
    """``[(item_id, rating), ...]`` checked and made ready to store: ``[(item_id, rating, title)]``
    with each id in the catalogue's own type.

    Raises:
        UnknownIdError: an item the model does not know (checked for every item first).
        IdTypeError: an item id of the wrong type.
        ValueError: a rating outside the model's scale.
    """
    ratings = list(ratings)
    rows = []
    for item_id, rating in ratings:
        i = rec.item_idx(item_id)
        rows.append((rec.item_ids.id_of(i), rating, rec.title_of(i)))
    lo, hi = rating_scale(rec)
    for item_id, rating in ratings:
        if not lo <= rating <= hi:
            raise ValueError(f"rating {rating:g} for item {item_id!r} is outside this model's scale {lo:g}..{hi:g}")
    return rows


def record_ratings(
    state: Any | None, rec: HybridRecommender, user_id: Any, rows: list[tuple[Any, float, str]],
    idempotency: Idempotency | None = None,
) -> dict[str, Any]:
    """Commit one user's checked ratings (:func:`rating_rows`) to the online state; returns what
    the answer needs besides the state: whether the user is new, how many were recorded.

    Raises:
        StateError: no online state, or it is not writable (nothing recorded).
        AlreadyDone: ``idempotency``'s key was used before (nothing recorded).
    """
    require_state(state, "ratings not recorded")
    draft = {"created": bool(rec.users.get(user_id) < 0), "recorded": len(rows)}
    if idempotency is not None:
        idempotency = dataclasses.replace(idempotency, draft=draft)
    try:
        state.append_ratings(user_id, rows, idempotency=idempotency)
    except AlreadyDone:
        raise
    except Exception as e:
        log.error("online state not writable: %s", e)
        raise StateError("online state is not writable; ratings not recorded") from e
    return draft


def new_item_id(rec: HybridRecommender, item_id: Any | None) -> Any | None:
    """A client's id for a movie to add, checked (None: the service generates one).

    Raises:
        IdTypeError: an id of the wrong type.
        IdConflict: the catalogue already has it (HTTP 409).
        ValueError: it lies in the range the service generates ids from.
    """
    if item_id is None:
        return None
    item_id = rec.item_ids.parse(item_id)
    if rec.item_ids.get(item_id) >= 0:
        raise IdConflict(f"item_id {item_id!r} already exists")
    if is_generated(item_id):
        raise ValueError(f"item_id {item_id!r} lies in the range the service generates ids from; leave it out to get one")
    return item_id


def add_item(
    state: Any | None, rec: HybridRecommender, record: dict[str, Any], item_id: Any | None,
    idempotency: Idempotency | None = None,
) -> Any:
    """Commit a movie to add (``record``: title, genres, description, year) to the online state;
    returns its id (``item_id``, checked by :func:`new_item_id`, or a generated one).

    Raises:
        StateError: no online state, or it is not writable (nothing added).
        IdConflict: another request took ``item_id`` meanwhile.
        AlreadyDone: ``idempotency``'s key was used before (nothing added).
    """
    require_state(state, "movie not added")
    try:
        item_id, _ = state.add_item(
            record, item_id, rec.item_ids.integer, lambda i: rec.item_ids.get(i) >= 0, idempotency=idempotency
        )
    except (AlreadyDone, IdConflict):
        raise
    except Exception as e:
        log.error("online state not writable: %s", e)
        raise StateError("online state is not writable; movie not added") from e
    return item_id


def keep_vectors(state: Any, rec: HybridRecommender, item_id: Any) -> None:
    """Store the vectors an added movie got beside its text (best effort: the movie is already
    stored)."""
    i = rec.item_idx(item_id)
    try:
        state.save_vectors(item_id, rec.model_version, rec.content.item_vectors[i], rec.retrieval.item_vectors[i])
    except Exception as e:
        log.warning("vectors of added movie %r not stored: %s", item_id, e)
