"""Training, reordering, fallbacks and bundle round trip of the ranker (one trained bundle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from movierec.core.artifacts import BundleWriter, load_bundle
from ranking.runtime import Ranker, load_ranker
from tests.ranking.conftest import Trained, ndcg10


@pytest.fixture(scope="module")
def refit(trained: Trained):
    """A ranker trained in this process (the bundle's was trained inside the pipeline)."""
    from ranking.ranker import refit_ranker

    return refit_ranker(trained.model, trained.train, trained.config.ranking, trained.config.trainer, seed=trained.config.seed)


def test_pipeline_bundle_has_a_ranker(trained: Trained) -> None:
    assert isinstance(trained.model.ranker, Ranker)
    meta = load_bundle(trained.bundle).manifest["metrics"]["ranker"]
    assert meta["lists"] > 100 and min(meta["epochs"]) >= 1 and meta["members"] == len(meta["epochs"])


def test_training_lowers_validation_loss(refit) -> None:
    m = refit.metrics
    assert np.isfinite(m["val_loss_untrained"]) and np.isfinite(m["val_loss"])
    assert m["val_loss"] < 0.95 * m["val_loss_untrained"]


def test_ranker_reorders_and_beats_retrieval_order_on_planted_tastes(trained: Trained) -> None:
    model = trained.model
    rel = trained.test.to_csr().tocsr()
    users = np.flatnonzero(np.diff(rel.indptr) > 0)
    retrieval_ids, _ = model.recommend_batch(users, 10, rank=False)
    ranked_ids, ranked_scores = model.recommend_batch(users, 10, rank=True)
    assert (ranked_ids != retrieval_ids).any(axis=1).mean() > 0.5  # it actually reorders
    assert np.all(np.diff(ranked_scores, axis=1) <= 0)
    assert ndcg10(ranked_ids, trained.test, users) > ndcg10(retrieval_ids, trained.test, users) + 0.01


def test_rating_head_predicts_on_the_data_scale_better_than_the_mean(trained: Trained) -> None:
    r = trained.test.ratings
    pred = trained.model.ranker.predict_ratings(trained.model, r["user_idx"].to_numpy(), r["item_idx"].to_numpy())
    lo, hi = trained.ds.rating_scale
    assert pred.shape == (len(r),) and (pred >= lo).all() and (pred <= hi).all()
    truth = r["rating"].to_numpy()
    mean_rmse = np.sqrt(np.mean((truth - trained.train.ratings["rating"].mean()) ** 2))
    assert np.sqrt(np.mean((truth - pred) ** 2)) < 0.97 * mean_rmse


def test_bundle_round_trip_gives_identical_scores(trained: Trained, refit, tmp_path) -> None:
    with BundleWriter(tmp_path / "b") as w:
        refit.ranker.save(w)
    loaded = load_ranker(load_bundle(tmp_path / "b"))
    for name in ("item_first_day", "user_first_day", "user_last_day"):  # the timeline features' arrays
        np.testing.assert_array_equal(loaded.arrays[name], refit.ranker.arrays[name])
    assert loaded.meta["ref_day"] == refit.ranker.meta["ref_day"] > 0
    assert loaded.adjacent is not None and refit.ranker.adjacent is not None and loaded.adjacent.nnz > 0
    assert (loaded.adjacent != refit.ranker.adjacent).nnz == 0
    model = trained.model
    users = np.arange(20)
    hists = [model.retrieval.histories.of(u) for u in users]
    ids, scores = model.retrieval.search(model.retrieval.user_vectors[users], 40, hists)
    a = refit.ranker.rerank(model, users, hists, ids, scores)
    b = loaded.rerank(model, users, hists, ids, scores)
    np.testing.assert_array_equal(a, b)
    r = trained.test.ratings.head(50)
    np.testing.assert_array_equal(
        refit.ranker.predict_ratings(model, r["user_idx"].to_numpy(), r["item_idx"].to_numpy()),
        loaded.predict_ratings(model, r["user_idx"].to_numpy(), r["item_idx"].to_numpy()),
    )


def test_a_user_who_rated_since_training_counts_as_active_now(trained: Trained) -> None:
    model, ranker = trained.model, trained.model.ranker
    u = int(np.argmin(ranker.arrays["user_last_day"]))  # the user whose ratings end earliest
    assert ranker.arrays["user_last_day"][u] < ranker.meta["ref_day"]
    hist = model.retrieval.histories.of(u)
    unseen = np.setdiff1d(np.arange(model.retrieval.n_items), hist)[:1]
    users = np.array([u, u, -1])
    known, stored = ranker._stored(users, [hist, np.concatenate([hist, unseen]), unseen])
    assert (known & ~stored).tolist() == [False, True, False]  # rated since training
    cand = np.setdiff1d(np.arange(model.retrieval.n_items), np.concatenate([hist, unseen]))[None, :30].repeat(2, 0)
    x = ranker.features(model, users[:2], [hist, np.concatenate([hist, unseen])], cand, np.zeros(cand.shape, np.float32))
    since = ranker.meta["feature_names"].index("since_last")
    # the newest day is at or after the user's stored last day, so every gap shrinks or stays
    assert (x[1, :, since] <= x[0, :, since] + 1e-6).all() and (x[1, :, since] < x[0, :, since]).any()


# ---- fallbacks ------------------------------------------------------------------------------------
def _cands(model, users, k=30):
    hists = [model.retrieval.histories.of(u) for u in users]
    ids, s = model.retrieval.search(model.retrieval.user_vectors[users], k, hists)
    return hists, ids, s


def test_new_user_without_history_gets_popularity_order(trained: Trained) -> None:
    model = trained.model
    ranker = model.ranker
    _, ids, s = _cands(model, np.array([0]))
    out = ranker.rerank(model, np.array([-1]), [np.zeros(0, np.int64)], ids, s)
    assert np.isfinite(out).all()
    counts = ranker.arrays["item_counts"][ids[0]]
    assert np.all(np.diff(counts[np.argsort(-out[0], kind="stable")]) <= 0)


def test_all_candidates_filtered_out_and_empty_batches(trained: Trained) -> None:
    model = trained.model
    out = model.ranker.rerank(model, np.array([0, 1]), [np.array([1]), np.array([2])], np.full((2, 5), -1), np.full((2, 5), -np.inf))
    assert out.shape == (2, 5) and np.isneginf(out).all()
    assert model.ranker.rerank(model, np.zeros(0, np.int64), [], np.zeros((0, 5), np.int64), np.zeros((0, 5))).shape == (0, 5)
    assert model.ranker.predict_ratings(model, np.zeros(0, np.int64), np.zeros(0, np.int64)).shape == (0,)
    # a filter nothing passes: the recommender answers with an empty list, not an error
    from recommender import Filters

    recs = model.recommend_user(trained.train.user_ids[0], k=5, filters=Filters(year_min=3000))
    assert len(recs.item_idx) == 0


def test_nan_features_and_nan_net_fall_back_without_crashing(trained: Trained, monkeypatch) -> None:
    model = trained.model
    ranker = model.ranker
    users = np.array([0, 1, 2])
    hists, ids, s = _cands(model, users)
    s_nan = s.copy()
    s_nan[0, :5] = np.nan
    out = ranker.rerank(model, users, hists, ids, s_nan)
    assert np.isfinite(out).all()  # NaN features are replaced by the training mean
    # a broken net (NaN weights) falls back to popularity order, two-tower score breaking ties
    broken = Ranker(ranker.net, ranker.meta, ranker.arrays, ranker.collab)
    import copy

    broken.net = copy.deepcopy(ranker.net)
    broken.net.alpha = 0.5  # the nets count whatever weight training chose
    with torch.no_grad():
        for net in broken.net.nets:
            net.score_head.weight.fill_(float("nan"))
    out = broken.rerank(model, users, hists, ids, s)
    assert np.isfinite(out).all()
    counts = ranker.arrays["item_counts"][ids[1]]
    assert np.all(np.diff(counts[np.argsort(-out[1], kind="stable")]) <= 0)


def test_items_added_at_run_time_and_new_users_are_ranked(trained: Trained) -> None:
    from recommender import HybridRecommender

    model = HybridRecommender.load(trained.bundle)  # a private copy: add_item mutates it
    genres = list(model.items["genres"].iloc[0])
    rec = model.add_item("A Brand New Film", genres, description="space adventure", year=2020)
    new_idx = model.item_idx(rec["item_id"])
    users = np.array([0, 1])
    hists = [model.retrieval.histories.of(u) for u in users]
    cand = np.array([[new_idx, 0, 1], [2, new_idx, -1]])
    out = model.ranker.rerank(model, users, hists, cand, np.array([[0.5, 0.4, 0.3], [0.2, 0.1, 0.0]], np.float32))
    assert np.isfinite(out[:, :2]).all() and np.isneginf(out[1, 2])
    liked = list(trained.train.items["item_id"].iloc[:3])
    recs = model.recommend_from_items(liked, k=5)
    assert len(recs.item_idx) == 5 and np.isfinite(recs.scores).all()


def test_bundle_from_another_feature_layout_is_refused(trained: Trained, tmp_path) -> None:
    ranker = trained.model.ranker
    meta = dict(ranker.meta, feature_names=list(reversed(ranker.meta["feature_names"])))
    with BundleWriter(tmp_path / "b") as w:
        Ranker(ranker.net, meta, ranker.arrays, ranker.collab).save(w)
    with pytest.raises(ValueError, match="retrain the bundle"):
        load_ranker(load_bundle(tmp_path / "b"))


@pytest.mark.parametrize("hidden,cross,emb", [([], 0, 0), ([8], 0, 0), ([8, 4], 2, 4)])
def test_net_shapes_from_config_rebuild_from_saved_kwargs(hidden, cross, emb) -> None:
    """The saved net kwargs rebuild exactly the trained net (the bug guarded against: an empty
    MLP rebuilt with the default widths, so the bundle's weights did not load)."""
    from ranking.net import RankerNet
    from ranking.member import RankerModule

    module = RankerModule(n_dense=5, n_users=3, n_items=4, emb_dim=emb, hidden=hidden, cross_layers=cross)
    rebuilt = RankerNet(**module.net_kwargs())
    rebuilt.load_state_dict(module.net.state_dict())  # strict: same layers, same shapes
    assert len([m for m in rebuilt.mlp if isinstance(m, torch.nn.Linear)]) == len(hidden)


@pytest.mark.parametrize("hidden,cross,emb,base", [([16, 8], 2, 4, -1), ([16, 8], 2, 4, 2), ([16, 8], 0, 0, -1), ([], 0, 0, -1), ([8], 1, 0, 3)])
def test_net_score_fast_path_matches_forward(hidden, cross, emb, base) -> None:
    """``RankerNet.score`` (the request path, no module calls) gives ``forward``'s scores for
    every net form the config can ask for (DCN, plain MLP, linear; with or without ids)."""
    from ranking.net import RankerNet

    torch.manual_seed(0)
    net = RankerNet(n_dense=7, n_users=5, n_items=9, emb_dim=emb, hidden=hidden, cross_layers=cross, base_column=base)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    net.eval()
    dense = torch.randn(3, 6, 7)
    users = torch.tensor([0, 4, -1])
    items = torch.tensor([[0, 1, 8, 9, -1, 3]] * 3)
    with torch.no_grad():
        ref, _ = net(dense, users, items)
    torch.testing.assert_close(net.score(dense, users, items), ref, rtol=1e-6, atol=1e-6)


def test_validation_metrics_are_synced_across_ranks_under_ddp() -> None:
    """Each DDP rank validates its own shard of the lists, so every validation value must be
    averaged across ranks (``sync_dist``) for early stopping and checkpointing to agree; in one
    process nothing is synced."""
    from types import SimpleNamespace

    from ranking.member import RankerModule

    module = RankerModule(n_dense=3, n_users=5, n_items=7, emb_dim=4, hidden=[8])
    calls: dict[str, bool] = {}
    module.log = lambda name, value, **kw: calls.__setitem__(name, kw.get("sync_dist", False))  # type: ignore[method-assign]
    g = torch.Generator().manual_seed(0)
    batch = [
        torch.randn(2, 4, 3, generator=g), torch.tensor([0, 1]), torch.tensor([[0, 1, 2, 3], [4, 5, 6, -1]]),
        torch.tensor([[True, True, True, True], [True, True, True, False]]),
        torch.tensor([[True, False, False, False], [False, True, False, False]]),
        torch.tensor([[4.0, float("nan"), float("nan"), float("nan")], [float("nan"), 3.0, float("nan"), float("nan")]]),
    ]
    for world, expected in ((2, True), (1, False)):
        module._trainer = SimpleNamespace(world_size=world)  # type: ignore[assignment]
        calls.clear()
        module.validation_step(batch, 0)
        assert set(calls) == {"val/loss", "val/rank_loss", "val/rmse", "val/ndcg@10"}
        assert all(v is expected for v in calls.values()), (world, calls)


def test_item_item_model_is_skipped_when_nothing_reads_it(trained: Trained) -> None:
    """With the collab features excluded and no collab candidates, the snapshot carries an empty
    item-item matrix (the quadratic step is skipped); otherwise a real one."""
    from ranking.lists import snapshot

    ds = trained.train
    content = np.zeros((ds.n_items, 4), np.float32)
    genres = np.zeros((ds.n_items, 2), np.float32)
    feats = np.zeros((ds.n_users, 1), np.float32)
    base = trained.config.ranking.model_copy(update={"collab_lambda": 300.0})  # as resolve_collab_lambda leaves it
    skip = snapshot(ds, content, genres, feats, base.model_copy(update={"exclude": ["collab"], "collab_candidates": 0}))
    assert skip.ctx.collab.shape == (0, 0)  # no item has item-item rows: features score 0 at once
    keep = snapshot(ds, content, genres, feats, base.model_copy(update={"exclude": ["collab"], "collab_candidates": 5}))
    assert keep.ctx.collab.nnz > 0


def test_bundle_without_item_item_model_trains_loads_and_ranks(trained: Trained, tmp_path) -> None:
    """The big-data setting (collab excluded, no collab candidates) end to end: the bundle keeps
    a 0 x 0 item-item model, loads, and the ranker still reorders every user's list."""
    from movierec.pipeline import train as train_pipeline
    from recommender import HybridRecommender
    from tests.ranking.conftest import small_config

    config = small_config()
    config.ranking.exclude = ["collab"]
    config.ranking.collab_candidates = 0
    config.ranking.epochs = 2
    model = HybridRecommender.load(train_pipeline(trained.train, tmp_path / "b", config))
    assert model.ranker is not None and model.ranker.collab.shape == (0, 0)
    users = np.arange(20)
    ids, scores = model.recommend_batch(users, 10, rank=True)
    retrieval_ids, _ = model.recommend_batch(users, 10, rank=False)
    assert (ids >= 0).all() and np.isfinite(scores).all()
    assert (ids != retrieval_ids).any()


def test_cross_fitted_lists_never_see_their_own_fold(trained: Trained, monkeypatch) -> None:
    """Every rating is a label exactly once; the snapshot a fold's features come from (history,
    item statistics, item-item model) holds exactly the other folds' ratings, and so does the
    two-tower model that scores it."""
    import ranking.lists as rr

    seen = []
    real = rr.list_features
    monkeypatch.setattr(rr, "list_features", lambda snap, lists: seen.append((snap, lists)) or real(snap, lists))
    towers = []
    rng = np.random.default_rng(0)

    def fit_tower(ds):
        towers.append(pairs(ds.ratings["user_idx"], ds.ratings["item_idx"]))
        return rng.normal(size=(ds.n_users, 4)).astype(np.float32), rng.normal(size=(ds.n_items, 4)).astype(np.float32)

    def pairs(users, items) -> set[tuple[int, int]]:
        return set(zip(np.asarray(users).tolist(), np.asarray(items).tolist()))

    def labelled(part: rr.Lists) -> set[tuple[int, int]]:
        rows, cols = np.nonzero(part.label)
        return pairs(part.users[rows], part.cand[rows, cols])

    full = trained.train
    config = trained.config.ranking.model_copy(update={"folds": 3, "collab_lambda": 300.0})
    past, held_out = rr.split_for_ranker(full, config, seed=0)
    arrays = (np.zeros((full.n_items, 4), np.float32), np.zeros((full.n_items, 2), np.float32), np.zeros((full.n_users, 1), np.float32))
    user_vectors, item_vectors = fit_tower(past)
    lists, raw = rr.cross_fitted_lists(full, past, held_out, arrays, user_vectors, item_vectors, fit_tower, config, seed=0)

    everything = pairs(full.ratings["user_idx"], full.ratings["item_idx"])
    assert len(seen) == 3 and len(towers) == 3 and raw.shape[:2] == lists.cand.shape
    assert int(lists.label.sum()) == len(everything) and labelled(lists) == everything
    assert labelled(seen[0][1]) == pairs(held_out.ratings["user_idx"], held_out.ratings["item_idx"])
    for (snap, part), tower in zip(seen, towers):
        users = np.repeat(np.arange(len(snap.hist_indptr) - 1), np.diff(snap.hist_indptr))
        assert pairs(users, snap.hist_items) == everything - labelled(part) == tower
        assert snap.item_counts.sum() == len(everything) - len(labelled(part))


def test_ranker_trains_on_cross_fitted_folds_and_needs_a_tower_trainer(trained: Trained) -> None:
    from movierec.pipeline import tower_trainer
    from ranking.ranker import refit_ranker

    config = trained.config.ranking.model_copy(update={"folds": 2, "epochs": 2})
    with pytest.raises(ValueError, match="fit_tower"):
        refit_ranker(trained.model, trained.train, config, trained.config.trainer, seed=trained.config.seed)
    fit_tower = tower_trainer(trained.model.retrieval.item_content[: trained.train.n_items], trained.config)
    result = refit_ranker(trained.model, trained.train, config, trained.config.trainer, seed=trained.config.seed, fit_tower=fit_tower)
    single = trained.model.bundle.manifest["metrics"]["ranker"]["lists"]
    assert result.metrics["lists"] > 1.5 * single
    model, users = trained.model, np.arange(20)
    ids, tt_scores = model.recommend_batch(users, 50, rank=False)
    scores = result.ranker.rerank(model, users, [model.retrieval.histories.of(u) for u in users], ids, tt_scores)
    assert np.isfinite(scores[ids >= 0]).all() and "tt_score" in result.ranker.meta["feature_names"]


def test_auto_holdout_follows_the_data_and_the_bundle_says_which_and_why(trained: Trained) -> None:
    from movierec.core.data import Dataset
    from ranking.lists import resolve_holdout

    assert resolve_holdout(trained.train, "auto")[0] == "temporal"  # the generated ratings have timestamps
    untimed = Dataset(trained.train.ratings[["user_id", "item_id", "rating"]].assign(timestamp=0), trained.train.items)
    used, why = resolve_holdout(untimed, "auto")
    assert used == "random" and "no timestamps" in why
    assert resolve_holdout(trained.train, "random")[0] == "random" and resolve_holdout(untimed, "temporal")[0] == "temporal"
    manifest = load_bundle(trained.bundle).manifest  # trained with ranking.holdout=random (small_config)
    assert manifest["holdout"] == {"used": "random", "why": "ranking.holdout=random in the config"}
    assert trained.model.ranker.meta["holdout"] == "random"
