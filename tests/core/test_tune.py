"""``movierec tune``: trials train on a validation split of the training data, the best config
is written as YAML that ``movierec train --config`` loads, the trial table as CSV beside it."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from movierec.config import load_config
from movierec.data import Dataset, load_dataset
from movierec.synthetic import SynthSpec, write_synthetic
from movierec.tune import METRIC, apply, tune


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tune-data")
    write_synthetic(root, SynthSpec(n_users=80, n_items=60, n_ratings=1500, seed=3))
    return root


def _base() -> object:
    # the ranker is the slow stage; it is searched too, but this test keeps trials to seconds
    return load_config(None, {"retrieval.epochs": 1, "retrieval.hidden": 16, "content.dim": 8, "ranking.enabled": False, "trainer.progress": False})


def test_tune_writes_a_loadable_best_config_and_a_trial_table(tiny: Path, tmp_path: Path) -> None:
    ds: Dataset = load_dataset(tiny)
    out = tmp_path / "best.yaml"
    result = tune(ds, 2, out, base=_base(), trial_epochs=(1, 1), show_progress=False, workdir=tmp_path)
    trials = pd.read_csv(tmp_path / "best.csv")
    assert len(trials) == 2 and set(trials["state"]) == {"COMPLETE"}
    assert result.best_value == pytest.approx(trials[METRIC].max()) and 0.0 <= result.best_value <= 1.0
    loaded = load_config(out)  # exactly what `movierec train --config best.yaml` reads
    assert loaded == result.best_config
    for key, value in result.best_params.items():
        section, name = key.split(".")
        assert getattr(getattr(loaded, section), name) == pytest.approx(value)
    # the capped trial epochs are a budget, not a result: the written config keeps the base's
    assert loaded.retrieval.epochs == 1 and loaded.ranking.enabled is False
    assert not any(p.name.startswith("movierec-tune-") for p in tmp_path.iterdir())  # trial bundles cleaned up
    assert apply(loaded, {"retrieval.dim": 32}).retrieval.dim == 32


def test_tune_cli_reports_usage_errors(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from movierec.cli import main

    for args, message in (
        (["tune", "--out", str(tmp_path / "b.yaml"), "--trials", "1"], "give either --data"),
        (["tune", "--out", str(tmp_path / "b.yaml"), "--data", str(tiny), "--trials", "0"], "trials"),
    ):
        monkeypatch.setattr(sys, "argv", ["movierec", *args])
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == 2 and message in capsys.readouterr().err
