"""The dedicated rating model (ranking/rating.py): planted ratings, scale, fallbacks, persistence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from movierec.core.artifacts import BundleWriter, load_bundle
from movierec.core.baselines import BiasBaseline
from movierec.core.config import RatingConfig
from movierec.core.data import Dataset
from movierec.core.metrics import rmse
from movierec.core.splits import holdout_per_user
from ranking.rating import BackgroundRatingFit, RatingModel, fit_rating_model, knn_residual, load_rating_model

ROOT = Path(__file__).resolve().parents[2]


def planted(scale: tuple[float, float] = (1.0, 5.0), n_users: int = 220, n_items: int = 160, density: float = 0.25,
            seed: int = 0) -> Dataset:
    """Ratings = biases + a rank-3 interaction + a little noise, rounded to the half-steps of ``scale``.

    The interaction carries most of the variance, so a model that only learns biases is clearly beaten.
    """
    rng = np.random.default_rng(seed)
    p, q = rng.normal(size=(n_users, 3)), rng.normal(size=(n_items, 3))
    bu, bi = rng.normal(0, 0.3, n_users), rng.normal(0, 0.3, n_items)
    z = 3.0 + bu[:, None] + bi[None, :] + 0.6 * p @ q.T + rng.normal(0, 0.2, (n_users, n_items))
    z = np.clip(np.round(z * 2) / 2, 1.0, 5.0)
    lo, hi = scale
    r = lo + (z - 1.0) / 4.0 * (hi - lo)
    u, i = np.nonzero(rng.random((n_users, n_items)) < density)
    ratings = pd.DataFrame({"user_id": u, "item_id": i, "rating": r[u, i], "timestamp": np.arange(len(u))})
    return Dataset(ratings, pd.DataFrame({"item_id": np.arange(n_items), "title": [f"m{j}" for j in range(n_items)]}))


def small(**changes: object) -> RatingConfig:
    base = dict(autorec_hidden=48, autorec_epochs=60, autorec_lr=3e-3, autorec_reg=10.0, mf_dim=8, mf_epochs=30,
                mf_lr=1e-2, mf_reg=0.02, knn_k=20, knn_keep=50, knn_shrinkage=10.0, patience=5)
    return RatingConfig(**{**base, **changes})


def _score(model: object, test: Dataset) -> float:
    r = test.ratings
    return rmse(r["rating"].to_numpy(), model.predict(r["user_idx"].to_numpy(), r["item_idx"].to_numpy()))


@pytest.fixture(scope="module")
def fitted() -> tuple[Dataset, Dataset, object]:
    train, test = holdout_per_user(planted(), 0.2, seed=42)
    return train, test, fit_rating_model(train, small(), seed=7)


def test_recovers_planted_ratings_better_than_bias_baseline(fitted: tuple) -> None:
    train, test, fit = fitted
    bias = _score(BiasBaseline().fit(train), test)
    ours = _score(fit.model, test)
    assert ours < bias - 0.1, (ours, bias)
    # the blend is no worse than its best component on the stacker's validation ratings
    val = fit.metrics["val_rmse"]
    assert val["blend"] <= min(v for k, v in val.items() if k != "blend") + 1e-3, val


def test_validation_loss_goes_down(fitted: tuple) -> None:
    train_record = fitted[2].metrics["train"]
    for name in ("mf", "autorec"):
        hist = train_record[name]["history"]
        assert len(hist) >= 2, name
        assert min(hist) < hist[0] - 0.05, (name, hist[:5])
        assert train_record[name]["val_rmse"] == pytest.approx(min(hist))


def test_other_rating_scale_is_read_and_clipped() -> None:
    train, test = holdout_per_user(planted(scale=(-10.0, 10.0), seed=1), 0.2, seed=42)
    fit = fit_rating_model(train, small(refit=False), seed=0)
    assert (fit.model.rating_min, fit.model.rating_max) == (-10.0, 10.0)
    r = test.ratings
    pred = fit.model.predict(r["user_idx"].to_numpy(), r["item_idx"].to_numpy())
    assert pred.min() >= -10.0 and pred.max() <= 10.0
    assert _score(fit.model, test) < _score(BiasBaseline().fit(train), test) - 0.4  # 5x the 1..5 margin
    # a stacker pushed far off the scale is clipped to its ends
    weights = np.zeros_like(fit.model.weights)
    weights[len(fit.model.components) * (3 if fit.model.meta["stack_support"] else 1)] = 1e6  # the constant gate
    model = RatingModel({**fit.model.meta, "weights": weights.tolist()}, fit.model.arrays)
    assert np.all(model.predict(r["user_idx"].to_numpy()[:20], r["item_idx"].to_numpy()[:20]) == 10.0)


def test_unknown_users_and_items_fall_back_to_biases(fitted: tuple) -> None:
    train, _, fit = fitted
    m = fit.model
    a = m.arrays
    out = m.predict(np.array([-1, m.n_users + 5, 3, 3, -1]), np.array([4, 4, -1, m.n_items + 2, m.n_items + 9]))
    expect = np.array([m.mu + a["b_item"][4], m.mu + a["b_item"][4], m.mu + a["b_user"][3], m.mu + a["b_user"][3], m.mu])
    np.testing.assert_allclose(out, np.clip(expect, m.rating_min, m.rating_max), rtol=1e-6)
    assert np.isfinite(out).all()
    # a user in the id map without training ratings (all held out) is unknown as well
    r = train.ratings
    ds = train.with_ratings(r[r["user_idx"] != 0])
    fit0 = fit_rating_model(ds, small(refit=False, autorec_epochs=3, mf_epochs=3), seed=0)
    assert fit0.model.predict(np.array([0]), np.array([4]))[0] == pytest.approx(
        np.clip(fit0.model.mu + fit0.model.arrays["b_item"][4], 1, 5), rel=1e-6)


def test_bad_input_is_refused_with_the_parameter_named(fitted: tuple) -> None:
    m = fitted[2].model
    with pytest.raises(ValueError, match="user_idx"):
        m.predict(np.array([0.5]), np.array([1]))
    with pytest.raises(ValueError, match="differ in shape"):
        m.predict(np.array([0, 1]), np.array([1]))
    with pytest.raises(ValueError, match="without ratings"):
        fit_rating_model(fitted[0].with_ratings(fitted[0].ratings.iloc[:0]), small())


def test_save_load_round_trip_is_bit_identical(fitted: tuple, tmp_path: Path) -> None:
    _, test, fit = fitted
    with BundleWriter(tmp_path / "b") as w:
        fit.model.save(w)
    loaded = load_rating_model(load_bundle(tmp_path / "b"))
    assert sorted(loaded.arrays) == sorted(fit.model.arrays)
    for name, arr in fit.model.arrays.items():
        assert loaded.arrays[name].dtype == arr.dtype and np.array_equal(loaded.arrays[name], arr), name
    r = test.ratings
    u, i = r["user_idx"].to_numpy(), r["item_idx"].to_numpy()
    assert np.array_equal(loaded.predict(u, i), fit.model.predict(u, i))


def test_training_is_deterministic(fitted: tuple) -> None:
    train, test, fit = fitted
    again = fit_rating_model(train, small(), seed=7)
    r = test.ratings
    u, i = r["user_idx"].to_numpy(), r["item_idx"].to_numpy()
    assert np.array_equal(again.model.predict(u, i), fit.model.predict(u, i))


def test_background_fit_equals_the_in_process_fit(fitted: tuple) -> None:
    train, test, fit = fitted
    again = BackgroundRatingFit(train, small(), seed=7).result()
    r = test.ratings
    u, i = r["user_idx"].to_numpy(), r["item_idx"].to_numpy()
    assert np.array_equal(again.model.predict(u, i), fit.model.predict(u, i))


def test_background_fit_reports_the_childs_error() -> None:
    empty = planted()
    empty = Dataset(empty.ratings.iloc[:0].copy(), empty.items)
    with pytest.raises(RuntimeError, match="cannot fit on a dataset without ratings"):
        BackgroundRatingFit(empty, small(), seed=7).result()


def test_pipeline_stops_the_background_fit_when_training_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    import ranking.background
    import ranking.rating
    import retrieval.two_tower
    from movierec.core.config import Config
    from movierec.pipeline import train as train_pipeline

    started: list[BackgroundRatingFit] = []

    class Recorded(BackgroundRatingFit):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("two-tower failed")

    monkeypatch.setattr(ranking.background, "MIN_RATINGS", 0)
    monkeypatch.setattr(ranking.rating, "BackgroundRatingFit", Recorded)
    monkeypatch.setattr(retrieval.two_tower, "fit_two_tower", broken)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    out = tmp_path / "bundle"
    with pytest.raises(RuntimeError, match="two-tower failed"):
        train_pipeline(planted(), out, Config())
    assert len(started) == 1, "the rating model should have started in the background"
    assert not multiprocessing.active_children(), "the background process outlived the failed training"
    assert not out.exists()


def test_the_pipeline_can_start_its_second_process_before_importing_lightning() -> None:
    """Both processes import torch and Lightning at the same time only if the
    pipeline reaches the spawn (rank check and sizing included) without importing them."""
    code = (
        "import sys, movierec.pipeline, movierec.core.sizing, content.tfidf, ranking.rating; from retrieval.distributed import is_global_zero; "
        "is_global_zero(); bad = [m for m in ('lightning', 'torch') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("ranking", "external", "kept"), [(True, False, True), (False, False, False), (True, True, False)])
def test_the_early_second_process_is_stopped_without_a_ranker_or_under_an_external_launcher(
    monkeypatch: pytest.MonkeyPatch, ranking: bool, external: bool, kept: bool
) -> None:
    import retrieval.distributed
    from movierec.pipeline import _keep_rating_fit

    class Worker:
        closed = False

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(retrieval.distributed, "launched_externally", lambda: external)
    worker = Worker()
    assert (_keep_rating_fit(worker, ranking) is worker) == kept
    assert worker.closed == (not kept)


def test_knn_residual_matches_a_hand_computation() -> None:
    import scipy.sparse as sp

    # item 0's neighbours: item 1 (0.9), item 2 (0.5), item 3 (0.1); user 0 rated items 1 and 3, user 1 none
    sim = sp.csr_matrix(np.array([[0, 0.9, 0.5, 0.1], [0.9, 0, 0, 0], [0.5, 0, 0, 0], [0.1, 0, 0, 0]], np.float32))
    res = sp.csr_matrix(np.array([[0, 1.0, 0, -2.0], [0, 0, 0, 0]], np.float32))
    out = knn_residual(sim, res, np.array([0, 0, 1]), np.array([0, 0, 0]), k=2)
    assert out[0] == pytest.approx((0.9 * 1.0 + 0.1 * -2.0) / 1.0)
    out1 = knn_residual(sim, res, np.array([0]), np.array([0]), k=1)
    assert out1[0] == pytest.approx(1.0)
    assert out[2] == 0.0


def test_loading_side_does_not_import_lightning_or_torch() -> None:
    code = "import sys, ranking.rating; bad = [m for m in ('lightning', 'torch') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_pipeline_bundle_carries_the_rating_model(trained: object) -> None:
    from movierec.evaluation import evaluate_model

    model = trained.model
    assert model.rating_model is not None
    assert trained.bundle.joinpath("rating", "meta.json").is_file()
    r = trained.test.ratings
    pred = model.predict_ratings(r["user_idx"].to_numpy(), r["item_idx"].to_numpy())
    assert np.array_equal(pred, model.rating_model.predict(r["user_idx"].to_numpy(), r["item_idx"].to_numpy()))
    frame = pd.DataFrame({"user_id": r["user_id"].astype(str), "item_id": r["item_id"].astype(str), "rating": r["rating"]})
    result = evaluate_model(model, frame, k=10)
    assert result["rating"]["rmse"] == pytest.approx(rmse(r["rating"].to_numpy(), pred), rel=1e-6)


def test_cli_evaluate_prints_rmse_of_the_rating_model(trained: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from cli_helpers import run_cli

    r = trained.test.ratings
    csv = tmp_path / "test.csv"
    pd.DataFrame({"user_id": r["user_id"], "item_id": r["item_id"], "rating": r["rating"]}).to_csv(csv, index=False)
    code, out, err = run_cli(monkeypatch, capsys, "evaluate", "--model", str(trained.bundle), "--test", str(csv))
    assert code == 0, err
    expect = rmse(r["rating"].to_numpy(), trained.model.rating_model.predict(r["user_idx"].to_numpy(), r["item_idx"].to_numpy()))
    line = next(x for x in out.splitlines() if "rmse:" in x)
    assert float(line.split("rmse:")[1].split()[0]) == pytest.approx(expect, abs=1e-4)


def test_sparse_mf_learns_the_planted_ratings_like_the_dense_form() -> None:
    """``mf_sparse`` (chosen by movierec/core/sizing.py for large tables): lazy Adam on the batch's rows
    recovers the planted interaction as the dense form does, and its global mean stays fixed."""
    from ranking._rating_train import SparseMFModule, fit_mf
    from ranking.rating import _triples

    train, test = holdout_per_user(planted(), 0.2, seed=42)
    cfg = small(mf_sparse=True)
    data = _triples(train)
    out = fit_mf(data, _triples(test), train.n_users, train.n_items, cfg, cfg.mf_epochs, 3, None)
    dense = fit_mf(data, _triples(test), train.n_users, train.n_items, small(), cfg.mf_epochs, 3, None)
    assert out["mu"] == pytest.approx(float(np.mean(data[2])), abs=1e-6)
    assert out["history"][-1] < out["history"][0] - 0.05, out["history"][:5]
    bias = _score(BiasBaseline().fit(train), test)
    assert out["val_rmse"] < bias - 0.1, (out["val_rmse"], bias)
    assert out["val_rmse"] < dense["val_rmse"] + 0.05, (out["val_rmse"], dense["val_rmse"])
    module = SparseMFModule(4, 3, 2, 3.0, 1e-2, 0.0)
    assert all(e.sparse for e in (module.net.user, module.net.item, module.net.user_bias, module.net.item_bias))


def test_mf_epochs_stop_at_their_step_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """``mf_max_steps_per_epoch`` (chosen by movierec/core/sizing.py past ~4.6M ratings): every MF
    epoch trains that many batches, not a full pass."""
    import ranking._rating_train as T
    from ranking.rating import _triples

    trainers = []
    make = T._trainer
    monkeypatch.setattr(T, "_trainer", lambda *a, **k: trainers.append(make(*a, **k)) or trainers[-1])
    train, test = holdout_per_user(planted(), 0.2, seed=42)
    data = _triples(train)
    full_pass = -(-len(data[0]) // 1024)
    assert full_pass > 3
    cfg = small(mf_sparse=True, mf_max_steps_per_epoch=2, patience=50)
    T.fit_mf(data, _triples(test), train.n_users, train.n_items, cfg, 4, 3, None)
    assert trainers[-1].global_step == 4 * 2


def test_implicit_feedback_trains_without_a_rating_model(tmp_path: Path) -> None:
    """Every rating the same value (clicks, watches): the pipeline says it leaves the rating model
    out, writes a bundle without one, and still ranks."""
    import json

    from movierec.core.loaders import load_dataset
    from movierec.pipeline import train as train_pipeline
    from movierec.core.synthetic import SynthSpec, write_synthetic
    from recommender import HybridRecommender
    from tests.ranking.conftest import small_config

    write_synthetic(tmp_path / "data", SynthSpec(n_users=150, n_items=200, n_ratings=6_000, seed=4))
    rated = load_dataset(tmp_path / "data")
    clicks = rated.with_ratings(rated.ratings.assign(rating=1.0), name="clicks")
    bundle = train_pipeline(clicks, tmp_path / "bundle", small_config())
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert any(s.startswith("ranking.rating.enabled=False (every rating is 1") for s in manifest["sizing"])
    assert not (bundle / "rating").exists()
    model = HybridRecommender.load(bundle)
    assert model.rating_model is None and model.ranker is not None
    recs = model.recommend_user(model.user_ids[0], 10)
    assert len(recs.item_idx) == 10 and np.isfinite(recs.scores).all()
