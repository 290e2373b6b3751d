"""One contract suite for every baseline, a known-answer block case, and a quality floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from movierec.core.baselines import BASELINES, NotFittedError, make_baseline
from movierec.core.data import Dataset
from movierec.core.loaders import load_dataset
from movierec.core.metrics import evaluate_topn, rmse
from movierec.core.sources import CandidateSource
from movierec.core.splits import holdout_per_user
from movierec.core.synthetic import SynthSpec, write_synthetic

# Fewer epochs than the defaults keep the module quick; the quality checks reuse these fits.
FAST = {"mf": {"epochs": 8}, "mf-bpr": {"epochs": 8}}
RATING_MODELS = ("mf", "svd-rating", "bias", "global-mean")
NO_SIMILARITY = ("popular", "bias", "global-mean")


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Dataset]:
    out = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic(out, SynthSpec(n_users=500, n_items=400, n_ratings=25_000, seed=3))
    return holdout_per_user(load_dataset(out), 0.2, seed=42)


@pytest.fixture(scope="module")
def fitted(split: tuple[Dataset, Dataset]) -> dict:
    train, _ = split
    return {name: make_baseline(name, **FAST.get(name, {})).fit(train) for name in BASELINES}


@pytest.mark.parametrize("name", BASELINES)
def test_scores_have_one_row_per_user_and_are_finite(name: str, fitted: dict, split) -> None:
    model, train = fitted[name], split[0]
    assert isinstance(model, CandidateSource)
    s = model.score_users(np.array([0, 5, 7]))
    assert s.shape == (3, train.n_items) and np.isfinite(s).all()


@pytest.mark.parametrize("name", BASELINES)
def test_recommend_is_sorted_excludes_and_batch_matches_single(name: str, fitted: dict, split) -> None:
    model, train = fitted[name], split[0]
    seen = train.to_csr()
    users = np.array([0, 3, 9, 42])
    ids, scores = model.recommend(users, 15, exclude=seen)
    assert ids.shape == scores.shape == (4, 15)
    assert np.all(np.diff(scores, axis=1) <= 0)
    for row, u in enumerate(users):
        assert not set(ids[row]) & set(seen[u].indices)
        one_ids, one_scores = model.recommend(int(u), 15, exclude=seen)
        assert one_ids.shape == (15,)
        np.testing.assert_array_equal(one_ids, ids[row])
        np.testing.assert_allclose(one_scores, scores[row], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", BASELINES)
def test_similar_items_or_a_clear_refusal(name: str, fitted: dict) -> None:
    model = fitted[name]
    if name in NO_SIMILARITY:
        with pytest.raises(NotImplementedError):
            model.similar_items(0, 5)
        return
    ids, scores = model.similar_items(np.array([1, 2]), 5)
    assert ids.shape == (2, 5)
    assert 1 not in ids[0] and 2 not in ids[1]
    assert np.all(np.diff(scores, axis=1) <= 0)
    np.testing.assert_array_equal(model.similar_items(1, 5)[0], ids[0])


@pytest.mark.parametrize("name", BASELINES)
def test_bad_input_is_refused(name: str, fitted: dict, split) -> None:
    model, train = fitted[name], split[0]
    with pytest.raises(IndexError):
        model.score_users(np.array([train.n_users]))
    with pytest.raises(IndexError):
        model.recommend(-1, 5)
    with pytest.raises(ValueError):
        model.recommend(0, 0)
    with pytest.raises(ValueError):
        model.score_users(np.array([0.5]))
    with pytest.raises(NotFittedError):
        make_baseline(name).score_users(np.array([0]))


@pytest.mark.parametrize("name", RATING_MODELS)
def test_predictions_stay_on_the_rating_scale(name: str, fitted: dict, split) -> None:
    model, test = fitted[name], split[1]
    r = test.ratings
    pred = model.predict(r["user_idx"].to_numpy(), r["item_idx"].to_numpy())
    lo, hi = split[0].rating_scale
    assert pred.shape == (len(r),) and pred.min() >= lo and pred.max() <= hi
    with pytest.raises(ValueError):
        model.predict(np.array([0, 1]), np.array([0]))


def test_factory_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("nope")
    with pytest.raises(ValueError, match="ease"):
        make_baseline("ease", not_a_param=1)
    with pytest.raises(ValueError):
        make_baseline("ease", lam=0)


def _blocks() -> Dataset:
    """Users 0-9 like items 0-4, users 10-19 like items 5-9; user 0 has not seen item 4 yet."""
    rows = [(u, i) for u in range(10) for i in range(5) if (u, i) != (0, 4)]
    rows += [(u, i) for u in range(10, 20) for i in range(5, 10)]
    r = pd.DataFrame(rows, columns=["user_id", "item_id"]).assign(rating=4.0)
    return Dataset(r, pd.DataFrame({"item_id": range(10), "title": [f"m{i}" for i in range(10)]}))


@pytest.mark.parametrize("name", ["item-knn", "rp3beta", "ease", "svd", "mf-bpr"])
def test_block_structure_brings_the_missing_item_back_first(name: str) -> None:
    ds = _blocks()
    params = {"svd": {"n_components": 2}, "mf-bpr": {"dim": 4, "epochs": 25, "lr": 0.05, "val_fraction": 0,
                                                     "reg": 0.0, "batch_size": 64}}.get(name, {})
    model = make_baseline(name, **params).fit(ds)
    ids, _ = model.recommend(0, 1, exclude=ds.to_csr())
    assert ids[0] == 4


def test_learned_baselines_beat_popularity(split, fitted: dict) -> None:
    train, test = split
    pop = evaluate_topn(fitted["popular"].score_users, train, test, ks=(10,))["ndcg@10"]
    for name in ("svd", "item-knn", "rp3beta", "ease", "mf-bpr"):
        score = evaluate_topn(fitted[name].score_users, train, test, ks=(10,))["ndcg@10"]
        assert score > 1.2 * pop, (name, score, pop)


def test_rating_models_beat_the_global_mean(split, fitted: dict) -> None:
    train, test = split
    r = test.ratings
    u, i, y = r["user_idx"].to_numpy(), r["item_idx"].to_numpy(), r["rating"].to_numpy()
    base = rmse(y, fitted["global-mean"].predict(u, i))
    bias = rmse(y, fitted["bias"].predict(u, i))
    mf = rmse(y, fitted["mf"].predict(u, i))
    assert bias < base and mf < bias - 0.02, (base, bias, mf)
