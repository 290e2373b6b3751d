"""Train/test splits of the evaluation protocols (DESIGN.md P1-P3) plus temporal splits.

Every split returns datasets that share the parent's id maps, so a model trained on one side can
be scored on the other by index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from movierec.core.data import RATING_COLUMNS, Dataset, DataError


def holdout_per_user(ds: Dataset, fraction: float = 0.2, seed: int = 42) -> tuple[Dataset, Dataset]:
    """P2: hold out ``fraction`` of each user's ratings at random (at least one per user).

    A user with a single rating keeps it in train (nothing to learn from otherwise).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    r = ds.ratings
    users = r["user_idx"].to_numpy()
    pos = _shuffled_positions(ds, seed)
    counts = np.bincount(users, minlength=ds.n_users)[users]
    n_test = np.where(counts >= 2, np.maximum(1, np.round(counts * fraction)), 0)
    n_test = np.minimum(n_test, counts - 1)
    is_test = pos < n_test
    return ds.with_ratings(r[~is_test], f"{ds.name}/train"), ds.with_ratings(r[is_test], f"{ds.name}/test")


def user_folds(ds: Dataset, k: int, seed: int) -> np.ndarray:
    """(n_ratings,) fold 0..k-1 of each rating: each user's ratings dealt at random over the folds."""
    return _shuffled_positions(ds, seed) % k


def _shuffled_positions(ds: Dataset, seed: int) -> np.ndarray:
    """(n_ratings,) each rating's 0-based position in a seeded random order of its user's ratings."""
    users = ds.ratings["user_idx"].to_numpy()
    key = np.random.default_rng(seed).random(len(users))
    order = np.lexsort((key, users))
    user_sorted = users[order]
    pos = np.empty(len(users), dtype=np.int64)
    pos[order] = np.arange(len(order)) - np.searchsorted(user_sorted, user_sorted, side="left")
    return pos


def cold_items(ds: Dataset, fraction: float = 0.2, seed: int = 42) -> tuple[Dataset, Dataset, np.ndarray]:
    """P3: a ``fraction`` of the rated items lose all their ratings from training.

    Returns:
        (train, test, cold_item_idx): test holds every rating of the cold items.
    """
    rng = np.random.default_rng(seed)
    rated = np.unique(ds.ratings["item_idx"].to_numpy())
    n_cold = max(1, int(round(len(rated) * fraction)))
    cold = np.sort(rng.choice(rated, size=n_cold, replace=False))
    is_test = np.isin(ds.ratings["item_idx"].to_numpy(), cold)
    r = ds.ratings
    return (
        ds.with_ratings(r[~is_test], f"{ds.name}/warm"),
        ds.with_ratings(r[is_test], f"{ds.name}/cold"),
        cold,
    )


def temporal_per_user(
    ds: Dataset, n: int | None = None, fraction: float | None = None
) -> tuple[Dataset, Dataset]:
    """Leave each user's last ``n`` ratings (or last ``fraction`` of them) out, by timestamp.

    Users keep at least one rating on the train side. Ties in time are broken by row order.
    """
    if (n is None) == (fraction is None):
        raise ValueError("give exactly one of n or fraction")
    r = ds.ratings
    order = np.lexsort((np.arange(len(r)), r["timestamp"].to_numpy(), r["user_idx"].to_numpy()))
    users = r["user_idx"].to_numpy()[order]
    counts = np.bincount(users, minlength=ds.n_users)
    starts = np.searchsorted(users, users, side="left")
    pos = np.arange(len(order)) - starts
    c = counts[users]
    n_test = np.full(len(order), n) if n is not None else np.floor(c * float(fraction)).astype(int)
    n_test = np.clip(n_test, 0, c - 1)
    is_test = np.zeros(len(r), dtype=bool)
    is_test[order] = pos >= c - n_test
    return ds.with_ratings(r[~is_test], f"{ds.name}/past"), ds.with_ratings(r[is_test], f"{ds.name}/future")


def validation_split(train: Dataset, fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
    """A validation split carved from training only (for early stopping and tuning)."""
    return holdout_per_user(train, fraction=fraction, seed=seed)


def ml100k_fold(ds: Dataset, folder: str | Path, fold: str = "u1") -> tuple[Dataset, Dataset]:
    """P1: the official MovieLens 100K fold ``u1``..``u5`` (or ``ua``/``ub``) by its test file."""
    path = Path(folder) / f"{fold}.test"
    if not path.is_file():
        raise DataError("official fold file not found", path=path)
    test = pd.read_csv(path, sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"])
    key = pd.MultiIndex.from_frame(ds.ratings[["user_id", "item_id"]])
    test_key = pd.MultiIndex.from_frame(test[["user_id", "item_id"]])
    is_test = key.isin(test_key)
    r = ds.ratings
    return ds.with_ratings(r[~is_test], f"{ds.name}/{fold}.base"), ds.with_ratings(r[is_test], f"{ds.name}/{fold}.test")


ML100K_FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
PROTOCOLS = ("holdout", "temporal", "cold-items", *ML100K_FOLDS)
"""Protocols of :func:`write_split` (``movierec split --protocol``)."""


def split_dataset(
    ds: Dataset, protocol: str, test_size: float = 0.2, seed: int = 42, folder: str | Path | None = None
) -> tuple[Dataset, Dataset]:
    """(train, test) of ``ds`` by a named protocol: ``holdout`` (random ``test_size`` of each
    user's ratings, P2), ``temporal`` (each user's latest ``test_size``), ``cold-items`` (every
    rating of a random ``test_size`` of the rated items, P3), or one of MovieLens 100K's official
    folds ``u1``..``u5``, ``ua``, ``ub`` (P1; ``folder`` is the ml-100k folder, ``test_size`` and
    ``seed`` do not apply)."""
    if protocol in ML100K_FOLDS:
        if folder is None:
            raise ValueError(f"protocol {protocol} needs the MovieLens 100K folder")
        return ml100k_fold(ds, folder, protocol)
    if not 0 < test_size < 1:
        raise ValueError(f"test size must be in (0, 1), got {test_size}")
    if protocol == "holdout":
        return holdout_per_user(ds, test_size, seed)
    if protocol == "temporal":
        return temporal_per_user(ds, fraction=test_size)
    if protocol == "cold-items":
        train, test, _ = cold_items(ds, test_size, seed)
        return train, test
    raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")



def write_items_csv(ds: Dataset, path: Path) -> None:
    """The catalogue as ``item_id,title,year,genres,tags,description`` ('|'-joined genres), the
    item file that ``load_csv`` (``train --ratings R --items I``) reads back."""
    items = ds.items
    frame = pd.DataFrame(
        {
            "item_id": items["item_id"],
            "title": items["title"],
            "year": items["year"],
            "genres": ["|".join(g) for g in items["genres"]],
            "tags": items["tags"],
            "description": items["description"],
        }
    )
    frame.to_csv(path, index=False)


def write_split(
    ds: Dataset, out: str | Path, protocol: str, test_size: float = 0.2, seed: int = 42, folder: str | Path | None = None
) -> dict[str, object]:
    """Split ``ds`` and write ``out/train.csv``, ``out/test.csv`` (``user_id,item_id,rating,timestamp``)
    and ``out/items.csv`` (the whole catalogue, cold items included). Returns a summary."""
    train, test = split_dataset(ds, protocol, test_size, seed, folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for part, frame in (("train", train.ratings), ("test", test.ratings)):
        frame[RATING_COLUMNS].to_csv(out / f"{part}.csv", index=False)
    write_items_csv(ds, out / "items.csv")
    return {
        "protocol": protocol,
        "test_size": test_size,
        "seed": seed,
        "train_ratings": int(len(train.ratings)),
        "test_ratings": int(len(test.ratings)),
        "test_users": int(test.ratings["user_id"].nunique()),
        "test_items": int(test.ratings["item_id"].nunique()),
        "items": int(ds.n_items),
        "out": str(out),
    }


PROTOCOL_NAMES = {
    "temporal": "each user's latest ratings held out (the next movies, P5)",
    "random": "a random share of each user's ratings held out (P2)",
}
"""How output names the two protocols a ranker can be trained for (``ranking.holdout``)."""


def split_protocol(users: np.ndarray, times: np.ndarray, last_train: np.ndarray) -> str | None:
    """The protocol a test set was split by: ``"temporal"`` when every test rating of every user
    comes at or after that user's latest training rating, ``"random"`` when any comes before;
    None when it cannot be told (no timestamps on either side, no test user with training ratings).

    Args:
        users: (n,) user row of each test rating (negative: a user training never saw).
        times: (n,) their timestamps.
        last_train: (n_users,) each user's latest training timestamp (NaN: no training rating).
    """
    times = np.asarray(times, dtype=np.float64)
    last_train = np.asarray(last_train, dtype=np.float64)
    users = np.asarray(users, dtype=np.int64)
    known = (users >= 0) & (users < len(last_train)) & np.isfinite(times)
    known[known] &= np.isfinite(last_train[users[known]])
    if not known.any() or np.nanmin(times[known]) == np.nanmax(times[known]):
        return None  # one value throughout: the file carries no time
    return "temporal" if bool((times[known] >= last_train[users[known]]).all()) else "random"


def last_rating_times(ds: Dataset) -> np.ndarray:
    """(n_users,) each user's latest rating timestamp in ``ds`` (NaN when the user has none, or
    the data has no timestamps: all one value)."""
    ts = ds.ratings["timestamp"].to_numpy(np.float64)
    out = np.full(ds.n_users, np.nan)
    if len(ts) and ts.min() != ts.max():
        out[:] = -np.inf
        np.maximum.at(out, ds.ratings["user_idx"].to_numpy(), ts)
        out[np.isneginf(out)] = np.nan
    return out


def protocol_note(test: str | None, trained_for: str | None) -> str | None:
    """One line for output: which protocol the test file follows and, when the ranker was
    trained for the other one, how to train it for this one (None when neither is known)."""
    if test is None:
        return None
    line = f"test split: {PROTOCOL_NAMES[test]}"
    if trained_for is None:
        return line
    if trained_for == test:
        return f"{line}; the ranker was trained for it"
    return (
        f"{line}; the ranker was trained for the other protocol ({PROTOCOL_NAMES[trained_for]}): "
        f"train with --set ranking.holdout={test} to rank for this one"
    )
