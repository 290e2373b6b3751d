"""Splits: P2 fractions, disjointness, determinism, cold items, temporal order, ML-100K folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from movierec.core.data import Dataset
from movierec.core.splits import cold_items, holdout_per_user, ml100k_fold, temporal_per_user, validation_split


@pytest.fixture(scope="module")
def ds() -> Dataset:
    rng = np.random.default_rng(3)
    rows = []
    for u in range(60):
        n = int(rng.integers(1, 40))
        for i in rng.choice(80, size=n, replace=False):
            rows.append((u, int(i), float(rng.integers(1, 6)), int(rng.integers(0, 10_000))))
    r = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame({"item_id": np.arange(90), "title": [f"m{i}" for i in range(90)]})
    return Dataset(r, items)


def _pairs(d: Dataset) -> set[tuple[int, int]]:
    return set(zip(d.ratings["user_idx"], d.ratings["item_idx"]))


def test_holdout_fractions_and_at_least_one(ds: Dataset) -> None:
    train, test = holdout_per_user(ds, 0.2, seed=42)
    counts = ds.ratings.groupby("user_idx").size()
    n_test = test.ratings.groupby("user_idx").size().reindex(counts.index, fill_value=0)
    expected = np.where(counts >= 2, np.maximum(1, np.round(counts * 0.2)), 0)
    np.testing.assert_array_equal(n_test.to_numpy(), expected)
    assert (train.ratings.groupby("user_idx").size().reindex(counts.index, fill_value=0) >= 1).all()


def test_holdout_is_a_disjoint_partition_with_shared_id_maps(ds: Dataset) -> None:
    train, test = holdout_per_user(ds, 0.3, seed=1)
    assert not _pairs(train) & _pairs(test)
    assert _pairs(train) | _pairs(test) == _pairs(ds)
    assert train.n_users == test.n_users == ds.n_users and train.n_items == ds.n_items


def test_holdout_is_deterministic_for_a_seed(ds: Dataset) -> None:
    a = holdout_per_user(ds, 0.2, seed=7)[1]
    b = holdout_per_user(ds, 0.2, seed=7)[1]
    c = holdout_per_user(ds, 0.2, seed=8)[1]
    assert _pairs(a) == _pairs(b)
    assert _pairs(a) != _pairs(c)


def test_holdout_rejects_bad_fraction(ds: Dataset) -> None:
    with pytest.raises(ValueError):
        holdout_per_user(ds, 1.0)


def test_validation_split_comes_from_train_only(ds: Dataset) -> None:
    train, test = holdout_per_user(ds, 0.2, seed=42)
    fit, val = validation_split(train, 0.1, seed=0)
    assert _pairs(fit) | _pairs(val) == _pairs(train)
    assert not (_pairs(val) & _pairs(test))


def test_cold_items_have_no_training_ratings(ds: Dataset) -> None:
    train, test, cold = cold_items(ds, 0.2, seed=42)
    rated = np.unique(ds.ratings["item_idx"])
    assert len(cold) == round(len(rated) * 0.2)
    assert not np.isin(train.ratings["item_idx"], cold).any()
    assert np.isin(test.ratings["item_idx"], cold).all()
    # every rating of a cold item went to test
    assert len(test.ratings) == np.isin(ds.ratings["item_idx"], cold).sum()
    assert np.array_equal(cold, cold_items(ds, 0.2, seed=42)[2])


def test_temporal_split_puts_later_ratings_in_test(ds: Dataset) -> None:
    train, test = temporal_per_user(ds, n=2)
    last_train = train.ratings.groupby("user_idx")["timestamp"].max()
    first_test = test.ratings.groupby("user_idx")["timestamp"].min()
    both = first_test.index
    assert (first_test[both] >= last_train[both]).all()
    counts = ds.ratings.groupby("user_idx").size()
    n_test = test.ratings.groupby("user_idx").size().reindex(counts.index, fill_value=0)
    np.testing.assert_array_equal(n_test.to_numpy(), np.clip(counts.to_numpy() - 1, 0, 2))
    with pytest.raises(ValueError):
        temporal_per_user(ds)


def test_temporal_fraction(ds: Dataset) -> None:
    train, test = temporal_per_user(ds, fraction=0.5)
    assert not _pairs(train) & _pairs(test)
    assert len(test.ratings) == sum(min(c // 2, c - 1) for c in ds.ratings.groupby("user_idx").size())


@pytest.mark.mldata
def test_ml100k_fold_u1_sizes(ml100k_path) -> None:
    from movierec.core.loaders import load_dataset

    full = load_dataset(ml100k_path)
    train, test = ml100k_fold(full, ml100k_path, "u1")
    assert len(train.ratings) == 80_000 and len(test.ratings) == 20_000
    official = pd.read_csv(ml100k_path / "u1.test", sep="\t", header=None, names=["u", "i", "r", "t"])
    assert set(zip(test.ratings["user_id"], test.ratings["item_id"])) == set(zip(official["u"], official["i"]))


@pytest.mark.mldata
def test_p2_on_ml100k_holds_out_for_every_user(ml100k_path) -> None:
    from movierec.core.loaders import load_dataset

    train, test = holdout_per_user(load_dataset(ml100k_path), 0.2, seed=42)
    assert test.ratings["user_idx"].nunique() == 943
    assert 0.19 < len(test.ratings) / 100_000 < 0.21


def test_split_protocol_tells_next_movies_from_a_random_share(ds: Dataset) -> None:
    from movierec.core.splits import last_rating_times, split_protocol

    for (train, test), expected in ((temporal_per_user(ds, fraction=0.25), "temporal"), (holdout_per_user(ds, 0.25, seed=1), "random")):
        r = test.ratings
        assert split_protocol(r["user_idx"].to_numpy(), r["timestamp"].to_numpy(), last_rating_times(train)) == expected
    # no timestamps (the loaders write 0 throughout): nothing to tell from
    flat = Dataset(ds.ratings[["user_id", "item_id", "rating"]].assign(timestamp=0), ds.items)
    train, test = holdout_per_user(flat, 0.25, seed=1)
    assert np.isnan(last_rating_times(train)).all()
    assert split_protocol(test.ratings["user_idx"].to_numpy(), test.ratings["timestamp"].to_numpy(), last_rating_times(train)) is None
    # users the training side never saw do not count either way
    assert split_protocol(np.array([-1, -1]), np.array([5.0, 9.0]), np.array([1.0])) is None
