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
