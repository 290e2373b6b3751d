"""Folding the online state into a data set, for ``movierec train --feedback``: every rating and
added movie acknowledged up to now, landed only on the movies they were given for."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from movierec.core.data import Dataset
from recommender.events import Event
from recommender.state import StateStore
from recommender.state_db import safe_url

log = logging.getLogger(__name__)


def fold_state(ds: Dataset, store: StateStore) -> tuple[Dataset, dict[str, Any]]:
    """``ds`` plus every rating and added movie acknowledged up to now, for ``movierec train
    --feedback``; returns it and the manifest's ``"state"`` record: the state's identity, the
    sequence number read up to and that event's time (so serving replays exactly the events
    after it on this state, and all of another), and what was skipped.

    A rating lands only on the movie it was given for: the same id under the same title in
    ``ds`` (a data set that numbers movies differently gives that id to another movie). A
    movie added at run time joins the catalogue under its own id, unless ``ds`` uses that id
    for another title: then it and its ratings are skipped. Skipped events are counted in the
    log and in the record; a (user, item) pair rated several times keeps the latest rating.
    """
    upto = store.last_seq()
    record = store.point(upto)
    where = safe_url(store.url)
    added = [e for e in store.events_after(0, upto) if e.kind == "item"]
    skipped_movies = 0
    if added:
        ds, skipped_movies = _with_items(ds, added, where)
    fb = store.ratings_frame(0, upto)
    skipped_ratings = 0
    if not fb.empty:
        ds, skipped_ratings = _fold(ds, fb[["user_id", "item_id", "rating", "timestamp", "title"]], where)
    record["skipped"] = {"ratings": skipped_ratings, "movies": skipped_movies}
    return ds, record


def _with_items(ds: Dataset, added: list[Event], where: str) -> tuple[Dataset, int]:
    """``ds`` with the movies added at run time appended to its catalogue (text, genres, year),
    so the ratings they received are trained on too; returns it and how many were skipped.

    A movie ``ds`` already holds under the same id and title is that movie (a state folded
    before); one whose id ``ds`` gives to another title, or of the other id type, is skipped:
    merging it would hand its ratings and its id to a different movie."""
    integer = pd.api.types.is_integer_dtype(np.asarray(ds.item_ids).dtype)
    titles = dict(zip(ds.items["item_id"].tolist(), ds.items["title"].tolist()))
    rows = []
    skipped = 0
    for e in added:
        item_id = e.item_id
        rec = e.payload or {}
        title = rec.get("title") or ""
        if integer != (isinstance(item_id, int) and not isinstance(item_id, bool)):
            skipped += 1
            continue
        if item_id in titles:
            if titles[item_id] != title:
                skipped += 1
            continue
        rows.append({"item_id": item_id, "title": title, "year": rec.get("year"),
                     "genres": list(rec.get("genres") or []), "tags": "", "description": rec.get("description") or ""})
        titles[item_id] = title
    if skipped:
        log.warning("%s: %d movies added at run time skipped: the data holds another movie under their id (or ids of another type)",
                    where, skipped)
    if not rows:
        return ds, skipped
    new = pd.DataFrame(rows)
    for col in ds.items.columns:
        if col not in new.columns:
            new[col] = None
    new["year"] = pd.array(new["year"], dtype=ds.items["year"].dtype) if "year" in ds.items else new["year"]
    items = pd.concat([ds.items, new[ds.items.columns].astype({"item_id": ds.items["item_id"].dtype})], ignore_index=True)
    log.info("%s: %d movies added at run time join the catalogue", where, len(rows))
    base = ds.ratings[["user_id", "item_id", "rating", "timestamp"]]
    return Dataset(base.reset_index(drop=True), items, users=ds.users, name=ds.name), skipped


def _fold(ds: Dataset, fb: pd.DataFrame, where: str) -> tuple[Dataset, int]:
    """``ds`` plus the ratings ``fb`` (``user_id, item_id, rating, timestamp, title``) given to
    movies ``ds`` holds under that id and title; returns it and how many were skipped."""
    fb = fb.copy()
    skipped = 0
    for col, ids in (("user_id", ds.user_ids), ("item_id", ds.item_ids)):
        if pd.api.types.is_integer_dtype(np.asarray(ids).dtype):
            fb[col] = pd.to_numeric(fb[col], errors="coerce")
            bad = fb[col].isna()
            if bad.any():
                log.warning("%s: %d feedback ratings skipped: %s is not an integer id", where, int(bad.sum()), col)
                skipped += int(bad.sum())
                fb = fb[~bad]
            fb[col] = fb[col].astype(np.asarray(ids).dtype)
        else:
            fb[col] = fb[col].astype(str)
    held = fb["item_id"].map(pd.Series(ds.items["title"].to_numpy(), index=ds.items["item_id"].to_numpy()))
    # a rating recorded without a title (none is, since titles are stored) can only go by id
    known = held.notna() & (fb["title"].isna() | (held == fb["title"]))
    if not known.all():
        n = int((~known).sum())
        log.warning("%s: %d feedback ratings skipped: their movie is not in the data under the title it was rated under", where, n)
        skipped += n
        fb = fb[known]
    fb = fb.drop(columns="title")
    base = ds.ratings[["user_id", "item_id", "rating", "timestamp"]]
    both = pd.concat([base, fb], ignore_index=True)
    # keep the latest rating of each (user, item): the state's ratings come after the data on equal times
    both = both.iloc[np.lexsort((np.arange(len(both)), both["timestamp"].to_numpy()))]
    both = both.drop_duplicates(["user_id", "item_id"], keep="last").sort_index()
    log.info("folded %d feedback ratings from %s (%d ratings after de-duplication)", len(fb), where, len(both))
    return Dataset(both.reset_index(drop=True), ds.items, users=ds.users, name=f"{ds.name}+feedback"), skipped
