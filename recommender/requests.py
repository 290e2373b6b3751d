"""What a request asks of the serve-time layer, in the catalogue's own terms: genre names made
canonical, lists of ids, filters, the size of the list to fetch, and one movie's details.

Clients write genres in any case and ids as text; these turn them into what the query path
takes, and raise :class:`ValueError` (HTTP 422) for what the catalogue does not have.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recommender.model import Filters, HybridRecommender


def canonical_genres(rec: HybridRecommender, names: list[str] | None) -> list[str] | None:
    """Canonical genre names (case-insensitive); None for none.

    Raises:
        ValueError: a genre the catalogue does not have.
    """
    if not names:
        return None
    known = {g.lower(): g for g in rec.genre_vocab}
    out = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        if name.lower() not in known:
            raise ValueError(f"unknown genre {name!r}; known genres: {', '.join(rec.genre_vocab)}")
        out.append(known[name.lower()])
    return out or None


def split_list(text: str | None) -> list[str] | None:
    """A comma-separated list (as a query parameter gives it), blanks dropped; None for no text."""
    if not text:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def filters(
    rec: HybridRecommender, genres: list[str] | None, year_min: int | None, year_max: int | None,
    exclude_items: list[Any] | None,
) -> Filters:
    """The filters of a request, genres made canonical."""
    return Filters(genres=canonical_genres(rec, genres), year_min=year_min, year_max=year_max, exclude_items=exclude_items)


def pool_size(rec: HybridRecommender, k: int, diversity: float) -> int:
    """How many to fetch: ``k``, or a larger pool when diversity re-ranking picks from it."""
    return k if diversity <= 0 else min(max(3 * k, 50), rec.n_items)


def item_detail(rec: HybridRecommender, i: int) -> dict[str, Any]:
    """Item row ``i`` with its description, tags and rating count."""
    out = rec.item_records(np.array([i]))[0]
    row = rec.items.iloc[i]
    for col in ("description", "tags"):
        value = row.get(col)
        out[col] = value if isinstance(value, str) and value else None
    out["popularity"] = int(rec.item_counts[i]) if i < len(rec.item_counts) else 0
    return out
