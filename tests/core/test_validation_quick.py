"""benchmarks/validation_quick.py's test mode: what it fits on, what it scores, and that EASE's
lambda comes from the validation split, never from the test part."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from cli_helpers import load_script

from movierec.core.baselines import make_baseline
from movierec.core.loaders import load_dataset
from movierec.core.metrics import topn_metrics
from movierec.core.splits import temporal_per_user
from movierec.core.synthetic import SynthSpec, write_synthetic

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vq() -> ModuleType:
    return load_script(REPO / "benchmarks" / "validation_quick.py")


def test_test_mode_fits_on_the_whole_training_part_with_the_validation_lambda(vq: ModuleType, tmp_path: Path, monkeypatch) -> None:
    write_synthetic(tmp_path / "d", SynthSpec(n_users=60, n_items=80, n_ratings=3_000, seed=3))
    monkeypatch.setitem(vq.PATHS, "synth", tmp_path / "d")
    monkeypatch.setattr(vq, "CACHE", tmp_path / "cache")
    ds = load_dataset(tmp_path / "d")
    train, test = temporal_per_user(ds, fraction=0.2)

    fit, _rel, _users, ease, lam, config = vq._validation("synth:2", [], protocol="temporal")
    t_fit, t_rel, t_users, t_ease, t_lam, t_config = vq._validation("synth:2", [], protocol="temporal", test=True)
    assert t_lam == lam == max(vq.LAMBDAS, key=lambda x: ease[str(x)])
    assert set(t_ease) == {str(lam), f"recall@100 {lam}"}  # no other lambda is scored on test
    pd.testing.assert_frame_equal(t_fit.ratings, train.ratings)
    assert (t_rel != test.to_csr().tocsr()).nnz == 0
    assert t_users.tolist() == np.flatnonzero(np.diff(test.to_csr().tocsr().indptr) > 0).tolist()
    assert t_config.seed == config.seed == 2 and t_config.ranking.holdout == config.ranking.holdout
    x = train.to_csr().tocsr()
    ids, _ = make_baseline("ease", lam=lam).fit(train).recommend(t_users, 100, exclude=x)
    assert t_ease[str(lam)] == pytest.approx(topn_metrics(ids[:, :10], t_rel[t_users], 10)["ndcg@10"])
    assert len(fit.ratings) < len(train.ratings)


def test_test_mode_refuses_a_fraction(vq: ModuleType) -> None:
    with pytest.raises(SystemExit):
        vq.main(["--test", "--fraction", "0.5"])
