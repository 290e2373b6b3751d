"""Evaluating a trained model (a loaded bundle) on a held-out test file.

The model is a :class:`RankedModel`: a loaded bundle (``recommender.HybridRecommender``, whose
``recommend_batch`` is the one query path) or a baseline that answers the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from movierec.core.data import DataError
from movierec.core.metrics import mae, rmse, topn_metrics
from movierec.core.splits import split_protocol

if TYPE_CHECKING:
    from ranking.runtime import Ranker
    from ranking.rating import RatingModel

log = logging.getLogger(__name__)


class RankedModel(Protocol):
    """What evaluation asks of a model (a loaded bundle, or the report's most-popular baseline)."""

    @property
    def user_ids(self) -> np.ndarray: ...

    @property
    def items(self) -> pd.DataFrame: ...

    @property
    def n_items(self) -> int: ...

    @property
    def ranker(self) -> Ranker | None: ...

    @property
    def rating_model(self) -> RatingModel | None: ...

    def recommend_batch(self, users: np.ndarray, k: int, rank: bool = True) -> tuple[np.ndarray, np.ndarray]: ...


MOVIELENS_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]


def _is_movielens_fold(path: Path) -> bool:
    """MovieLens 100K's own ``u1.test``..``u5.test``, ``ua.test``/``ub.test`` (and ``u.data``):
    tab-separated ``user item rating timestamp`` without a header."""
    try:
        with path.open("rb") as f:
            first = f.readline(4096).decode("utf-8", errors="replace").strip()
    except OSError:
        return False
    fields = first.split("\t")
    return len(fields) == 4 and all(x.strip().lstrip("-").replace(".", "", 1).isdigit() for x in fields)


def read_test_file(path: str | Path) -> pd.DataFrame:
    """``user_id,item_id[,rating]`` CSV (header required), or a MovieLens 100K fold file
    (``u1.test``..``u5.test``, ``ua.test``, ``ub.test``: tab-separated, no header)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    movielens = _is_movielens_fold(path)
    try:
        if movielens:
            frame = pd.read_csv(path, sep="\t", header=None, names=MOVIELENS_COLUMNS, dtype=str, keep_default_na=False)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"cannot parse test file ({str(e).splitlines()[0]})", path=path) from None
    frame.columns = [c.strip() for c in frame.columns]
    for col in ("user_id", "item_id"):
        if col not in frame.columns:
            raise DataError("required column is missing", path=path, column=col)
    if len(frame) == 0:
        raise DataError("test file has no rows", path=path)
    if "rating" in frame.columns:
        rating = pd.to_numeric(frame["rating"], errors="coerce")
        bad = rating.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            line = row + (1 if movielens else 2)
            raise DataError(f"value {frame['rating'].iloc[row]!r} is not a number", path=path, line=line, column="rating")
        frame["rating"] = rating
    return frame


def _to_index(ids: pd.Series, index: pd.Index) -> np.ndarray:
    values = ids.to_numpy()
    if pd.api.types.is_integer_dtype(index.dtype):
        values = pd.to_numeric(ids, errors="coerce").to_numpy()
    return index.get_indexer(values)


def evaluate_model(model: RankedModel, test: pd.DataFrame, k: int = 10, rank: bool = True, batch_size: int = 1024) -> dict[str, Any]:
    """Top-k metrics of ``model`` against every test (user, item) pair it knows, and RMSE/MAE
    (``"rating"``) when the file has ratings and the bundle has a rating model.

    Test rows with users or items the model never saw are counted and skipped. Items the user
    rated in training are excluded from their ranking (full-ranking protocol).
    """
    users = _to_index(test["user_id"], pd.Index(model.user_ids))
    items = _to_index(test["item_id"], pd.Index(model.items["item_id"].to_numpy()))
    known = (users >= 0) & (items >= 0)
    skipped = int((~known).sum())
    if skipped:
        log.warning("evaluate: %d test rows name users or items the model does not know; skipped", skipped)
    if not known.any():
        raise DataError("no test row names a user and item the model knows")
    users, items = users[known], items[known]
    relevant = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(len(model.user_ids), model.n_items))
    relevant.sum_duplicates()
    test_users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    recs = np.full((len(test_users), k), -1, dtype=np.int64)
    for s in range(0, len(test_users), batch_size):
        ids, _ = model.recommend_batch(test_users[s : s + batch_size], k, rank=rank)
        recs[s : s + len(ids), : ids.shape[1]] = ids
    metrics = topn_metrics(recs, relevant[test_users], k, n_items=model.n_items)
    rating = None
    rating_model = model.rating_model  # the bundle's P1 model (ranking/rating.py)
    if "rating" in test.columns and rating_model is not None:
        pred = rating_model.predict(users, items)
        y = test["rating"].to_numpy(np.float64)[known]
        rating = {"rmse": rmse(y, pred), "mae": mae(y, pred), "pairs": int(len(y))}
    return {
        "k": k,
        "protocol": _protocols(model, test, users, known),
        "metrics": {name.split("@")[0]: value for name, value in metrics.items()},
        "users": int(len(test_users)),
        "pairs": int(known.sum()),
        "skipped_rows": skipped,
        "ranked": bool(rank and model.ranker is not None),
        "rating": rating,
    }


SECONDS_PER_DAY = 86_400.0


def _protocols(model: RankedModel, test: pd.DataFrame, users: np.ndarray, known: np.ndarray) -> dict[str, str | None]:
    """``{"test", "trained_for"}``: the protocol the test file follows (its timestamps against
    each user's latest training day, which a ranker trained with timestamps keeps) and the one
    the bundle's ranker was trained for; None where the file or the bundle cannot tell."""
    ranker = model.ranker
    meta = ranker.meta if ranker is not None else {}
    trained_for = meta.get("holdout") if meta.get("holdout") in ("temporal", "random") else None
    last_day = ranker.arrays.get("user_last_day") if ranker is not None else None
    test_kind = None
    if last_day is not None and "timestamp" in test.columns:
        times = pd.to_numeric(test["timestamp"], errors="coerce").to_numpy(np.float64)[known] / SECONDS_PER_DAY
        # the same float division the ranker stored its days with, so equal times compare equal
        test_kind = split_protocol(users, times, np.asarray(last_day, dtype=np.float64))
    return {"test": test_kind, "trained_for": trained_for}
