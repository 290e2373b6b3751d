"""benchmarks/peers_temporal.py's own logic, which runs without RecTools or implicit: the split
nesting, RecTools' recommendation frames turned into scored id rows, and the guard that refuses
a validation_quick log made on another split."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from cli_helpers import load_script

from movierec.core.loaders import load_dataset
from movierec.core.splits import temporal_per_user
from movierec.core.synthetic import SynthSpec, write_synthetic

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def peers() -> ModuleType:
    return load_script(REPO / "benchmarks" / "peers_temporal.py")


def test_splits_nest_by_time_and_never_touch_the_test_part(peers: ModuleType, tmp_path: Path) -> None:
    write_synthetic(tmp_path / "d", SynthSpec(n_users=60, n_items=80, n_ratings=3_000, seed=3))
    ds = load_dataset(tmp_path / "d")
    fit, val, tune_fit, tune_val = peers.splits(ds)
    key = ["user_idx", "item_idx"]
    # the carve-out partitions fit; fit and val are disjoint and leave out each user's latest 20%
    assert len(tune_fit.ratings) + len(tune_val.ratings) == len(fit.ratings)
    assert len(pd.concat([tune_fit.ratings, tune_val.ratings]).drop_duplicates(key)) == len(fit.ratings)
    for early, late in ((fit, val), (tune_fit, tune_val)):
        last = early.ratings.groupby("user_idx")["timestamp"].max()
        first = late.ratings.groupby("user_idx")["timestamp"].min()
        assert (first >= last.reindex(first.index)).all()
    train, test = temporal_per_user(ds, fraction=0.2)
    seen = pd.concat([fit.ratings, val.ratings])
    assert len(seen.merge(train.ratings, on=key)) == len(train.ratings) == len(seen)
    assert seen.merge(test.ratings, on=key).empty


def test_frame_to_ids_places_items_by_rank_and_pads(peers: ModuleType) -> None:
    recs = pd.DataFrame({
        "user_id": [7, 7, 7, 3, 9],
        "item_id": [11, 12, 13, 21, 99],
        "rank": [2, 1, 3, 1, 1],
    })
    ids = peers.frame_to_ids(recs, np.array([3, 5, 7]), k=2)
    # user 9 is not asked for, user 5 got nothing, user 7's third item is past k
    assert ids.tolist() == [[21, -1], [-1, -1], [12, 11]]


def test_reference_rows_refuse_a_log_of_another_split(peers: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "vq.log"
    log.write_text("\n".join([
        "not json",
        json.dumps({"data": "ml100k:1", "ranked": 0.18, "ease": 0.1612, "tt_recall100_ratio": 0.5, "wall": 100.0}),
        json.dumps({"data": "latest:1", "ranked": 0.13, "ease": 0.1338, "tt_recall100_ratio": 1.0, "wall": 90.0}),
        json.dumps({"tag": "x", "mean_ratio": 1.0}),
    ]))
    ease = {"ndcg@10": 0.1612, "recall@100": 0.56}
    (row,) = peers.reference_rows(log, "ml100k", ease)
    assert row["ndcg@10"] == 0.18 and row["recall@100"] == pytest.approx(0.28) and row["fit_seconds"] == 100.0
    with pytest.raises(SystemExit, match="not the same split"):
        peers.reference_rows(log, "ml100k", {"ndcg@10": 0.15, "recall@100": 0.5})
    assert peers.reference_rows(None, "ml100k", ease) == []


def test_test_mode_tunes_on_validation_and_scores_the_test_part(peers: ModuleType, tmp_path: Path) -> None:
    write_synthetic(tmp_path / "d", SynthSpec(n_users=60, n_items=80, n_ratings=3_000, seed=3))
    ds = load_dataset(tmp_path / "d")
    scored_fit, scored, tune_fit, tune_val = peers.splits(ds, test=True)
    train, test = temporal_per_user(ds, fraction=0.2)
    fit, val = temporal_per_user(train, fraction=0.2)
    for got, want in ((scored_fit, train), (scored, test), (tune_fit, fit), (tune_val, val)):
        pd.testing.assert_frame_equal(got.ratings, want.ratings)
    # EASE's lambda comes from the tuning pair: only that lambda is fitted on the scored pair
    chosen = peers._ease(fit, val, peers.LAMBDAS)["lam"]
    row = peers.run_ease(train, test, (fit, val))
    assert row["lam"] == chosen
    assert row["ndcg@10"] == pytest.approx(peers._ease(train, test, (chosen,))["ndcg@10"])


def test_sasrec_settings_listed_in_order_or_as_a_product(peers: ModuleType) -> None:
    assert peers.sasrec_settings([64], [50], [0.2], ["128:200:0.1", "64:50:0.3"]) == [
        {"n_factors": 128, "session_max_len": 200, "dropout_rate": 0.1},
        {"n_factors": 64, "session_max_len": 50, "dropout_rate": 0.3},
    ]
    assert len(peers.sasrec_settings([64, 128], [50, 100, 200], [0.1, 0.2, 0.3], None)) == 18


def test_sasrec_tuning_stops_a_stale_setting_and_keeps_to_its_budget(peers: ModuleType, monkeypatch) -> None:
    """Chunks stop after ``patience`` chunks without a better score of that setting; the best
    (setting, epochs) is trained again for exactly its epochs and scored on the scored pair."""
    curves = {1: [0.1, 0.3, 0.2, 0.25, 0.9], 2: [0.2, 0.1, 0.05]}
    calls = []

    def chunks(data, users, params, step, n_chunks, seed):
        calls.append((data, params["n_factors"], n_chunks))
        for c in range(n_chunks):
            yield (c + 1) * step, np.array([[int(curves[params["n_factors"]][c] * 10)]]), 1.0

    monkeypatch.setattr(peers, "sasrec_chunks", chunks)
    monkeypatch.setattr(peers, "scored_users", lambda val: (np.array([0]), None))
    monkeypatch.setattr(peers, "score", lambda ids, rel, users: {"ndcg@10": ids[0, 0] / 10, "recall@100": 0.0})
    logged = []
    settings = [{"n_factors": 1}, {"n_factors": 2}]
    out = peers.run_sasrec("fit", "val", "tune_fit", "tune_val", settings, 1, 10, 5, logged.append, patience=2)
    assert [c for c in calls if c[0] == "tune_fit"] == [("tune_fit", 1, 5), ("tune_fit", 2, 5)]
    assert len([r for r in logged if r.get("tune") == {"n_factors": 1}]) == 4  # 0.2 and 0.25 are below 0.3
    assert len([r for r in logged if r.get("tune") == {"n_factors": 2}]) == 3
    assert calls[-1] == ("fit", 1, 2) and out["tune_ndcg"] == pytest.approx(0.3) and "epochs=20" in out["setting"]
    calls.clear()
    logged.clear()
    peers.run_sasrec("fit", "val", "tune_fit", "tune_val", settings, 1, 10, 5, logged.append, budget=0.0)
    assert [c[1] for c in calls if c[0] == "tune_fit"] == [1]  # the first setting always runs
    assert logged[-1] == {"model": "sasrec", "skipped_for_budget": [{"n_factors": 2}]}
