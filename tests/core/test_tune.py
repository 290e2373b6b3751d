"""``movierec tune``: trials train on a validation split of the training data, the best config
is written as YAML that ``movierec train --config`` loads, the trial table as CSV beside it."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from movierec.core.config import load_config
from movierec.core.data import Dataset
from movierec.core.loaders import load_dataset
from movierec.core.synthetic import SynthSpec, write_synthetic
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


def test_tune_keeps_its_study_in_sqlite_and_resumes(tiny: Path, tmp_path: Path) -> None:
    import optuna

    ds: Dataset = load_dataset(tiny)
    out = tmp_path / "best.yaml"
    first = tune(ds, 2, out, base=_base(), trial_epochs=(1, 1), show_progress=False, workdir=tmp_path)
    db = tmp_path / "best.db"
    stored = optuna.load_study(study_name="movierec-tune", storage=f"sqlite:///{db}")
    assert len(stored.trials) == 2
    again = tune(ds, 3, out, base=_base(), trial_epochs=(1, 1), show_progress=False, workdir=tmp_path)
    trials = optuna.load_study(study_name="movierec-tune", storage=f"sqlite:///{db}").trials
    assert [t.number for t in trials] == [0, 1, 2]  # two resumed, one new
    assert again.best_value >= first.best_value
    assert len(pd.read_csv(tmp_path / "best.csv")) == 3
    tune(ds, 3, out, base=_base(), trial_epochs=(1, 1), show_progress=False, workdir=tmp_path)  # nothing left to run
    assert len(optuna.load_study(study_name="movierec-tune", storage=f"sqlite:///{db}").trials) == 3
    other = load_dataset(tiny).with_ratings(ds.ratings.iloc[: len(ds.ratings) // 2])
    with pytest.raises(ValueError, match="other data"):
        tune(other, 4, out, base=_base(), trial_epochs=(1, 1), show_progress=False, workdir=tmp_path)


def test_tune_reruns_a_trial_cut_off_by_a_kill(tiny: Path, tmp_path: Path) -> None:
    import optuna

    ds: Dataset = load_dataset(tiny)
    out = tmp_path / "best.yaml"
    tune(ds, 1, out, base=_base(), trial_epochs=(1, 1), show_progress=False, workdir=tmp_path)
    study = optuna.load_study(study_name="movierec-tune", storage=f"sqlite:///{tmp_path / 'best.db'}")
    study.ask()  # a trial left RUNNING, as by a killed run
    tune(ds, 2, out, base=_base(), trial_epochs=(1, 1), show_progress=False, workdir=tmp_path)
    states = [t.state.name for t in optuna.load_study(study_name="movierec-tune", storage=f"sqlite:///{tmp_path / 'best.db'}").trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]


def test_tune_prunes_trials_whose_retrieval_is_below_the_median(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the ranker on, a trial reports its retrieval-only score first; a bad one stops there
    and never trains the ranker."""
    import movierec.tune as T

    scores = iter([0.30, 0.32, 0.31, 0.33, 0.05, 0.34, 0.33])  # trial 2 (third) is bad at the early step
    ranked: list[bool] = []

    def fake_ndcg(bundle: Path, val: Dataset, k: int = 10, rank: bool = True) -> float:
        ranked.append(rank)
        return next(scores)

    monkeypatch.setattr(T, "validation_ndcg", fake_ndcg)
    ds: Dataset = load_dataset(tiny)
    base = load_config(None, {"retrieval.epochs": 1, "retrieval.hidden": 16, "content.dim": 8, "ranking.epochs": 1,
                              "ranking.candidates": 20, "trainer.progress": False})
    tune(ds, 3, tmp_path / "best.yaml", base=base, trial_epochs=(1, 1), show_progress=False, workdir=tmp_path)
    trials = pd.read_csv(tmp_path / "best.csv")
    assert list(trials["state"]) == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert ranked == [False, True, False, True, False]  # the pruned trial never ranked
