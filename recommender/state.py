"""Online state: the live ratings acknowledged since a bundle was trained.

The durable side of ``POST /users/{id}/ratings`` (:class:`FeedbackLog`), reading it back
(:func:`read_feedback`) and folding it into a data set for ``movierec train --feedback``
(:func:`fold_feedback`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from movierec.data import Dataset

log = logging.getLogger(__name__)


class FeedbackLog:
    """Append-only JSON-lines log of live ratings: the durable side of ``POST /users/{id}/ratings``.

    One line per rating: ``{"ts", "user_id", "item_id", "rating", "model_version"}``. A request's
    lines go out in one ``write`` on a file opened with ``O_APPEND``, then ``flush`` and
    ``fsync`` before the request is answered, so an acknowledged rating survives a crash or
    power loss. Earlier lines are never rewritten; a crash mid-write can at worst leave one
    torn last line, which the next append starts after (a newline first) and
    :func:`read_feedback` skips. An ``flock`` serialises writers across worker processes.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, user_id: Any, item_ids: list[Any], ratings: list[float], model_version: str | None = None) -> int:
        """Durably append one line per rating; returns the number of lines written."""
        import fcntl

        now = time.time()
        lines = "".join(
            json.dumps({"ts": now, "user_id": user_id, "item_id": i, "rating": float(r), "model_version": model_version}) + "\n"
            for i, r in zip(item_ids, ratings)
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)  # read: torn-line check
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
                    lines = "\n" + lines  # a torn last line from a crash: never glue onto it
                data = lines.encode()
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            finally:
                os.close(fd)  # also releases the flock
        return len(item_ids)


def read_feedback(path: Path) -> pd.DataFrame:
    """The ratings of a feedback log as ``user_id, item_id, rating, timestamp`` (int seconds).

    Lines that do not parse or lack a field (a torn last line after a crash) are skipped with
    a warning naming the line.

    Raises:
        FileNotFoundError: no log at ``path``.
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rating = float(rec["rating"])
                if not math.isfinite(rating):
                    raise ValueError("rating is not finite")
                rows.append((rec["user_id"], rec["item_id"], rating, int(rec.get("ts") or 0)))
            except (ValueError, KeyError, TypeError) as e:
                log.warning("%s line %d: skipped (%s)", path, n, e)
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


def fold_feedback(ds: Dataset, path: Path) -> Dataset:
    """``ds`` plus the ratings of a feedback log, for ``movierec train --feedback``.

    Feedback lines become ratings with their log timestamps; a (user, item) pair rated both in
    the data and in the log (or several times in the log) keeps the latest rating. New users
    get new ids; ratings of movies the catalogue lacks (e.g. added at run time through
    ``POST /items``) are skipped with a warning, since training has no content for them.
    """
    fb = read_feedback(path)
    if fb.empty:
        log.warning("%s: no feedback ratings", path)
        return ds
    for col, ids in (("user_id", ds.user_ids), ("item_id", ds.item_ids)):
        if pd.api.types.is_integer_dtype(np.asarray(ids).dtype):
            fb[col] = pd.to_numeric(fb[col], errors="coerce")
            bad = fb[col].isna()
            if bad.any():
                log.warning("%s: %d feedback ratings skipped: %s is not an integer id", path, int(bad.sum()), col)
                fb = fb[~bad]
            fb[col] = fb[col].astype(np.asarray(ids).dtype)
        else:
            fb[col] = fb[col].astype(str)
    known = fb["item_id"].isin(ds.item_ids)
    if not known.all():
        log.warning("%s: %d feedback ratings skipped: movies not in the catalogue", path, int((~known).sum()))
        fb = fb[known]
    base = ds.ratings[["user_id", "item_id", "rating", "timestamp"]]
    both = pd.concat([base, fb], ignore_index=True)
    # keep the latest rating of each (user, item): log lines come after the data on equal times
    both = both.iloc[np.lexsort((np.arange(len(both)), both["timestamp"].to_numpy()))]
    both = both.drop_duplicates(["user_id", "item_id"], keep="last").sort_index()
    log.info("folded %d feedback ratings from %s (%d ratings after de-duplication)", len(fb), path, len(both))
    return Dataset(both.reset_index(drop=True), ds.items, users=ds.users, name=f"{ds.name}+feedback")
