"""benchmarks/robust_quality.py end to end on a tiny synthetic set: the CLI pipeline trained in a
subprocess, its candidate lists scored, the baselines tuned and cached, P3 cold items, tables; a
failing training is reported and the run goes on."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from cli_helpers import load_script

from movierec.core.data import Dataset

from movierec.core.loaders import load_dataset
from movierec.core.synthetic import SynthSpec, write_synthetic

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "retrieval.epochs=2", "retrieval.dim=16", "retrieval.hidden=32", "content.dim=16", "trainer.progress=false",
    "ranking.epochs=1", "ranking.candidates=30", "ranking.collab_candidates=10", "ranking.rating.enabled=false",
]


@pytest.fixture(scope="module")
def rq() -> ModuleType:
    return load_script(REPO / "benchmarks" / "robust_quality.py")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    out = tmp_path_factory.mktemp("tiny") / "data"
    write_synthetic(out, SynthSpec(n_users=150, n_items=120, n_ratings=6_000, seed=5))
    return load_dataset(out)


def test_whole_pipeline_is_scored_and_baselines_are_cached(rq: ModuleType, tiny: Dataset, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(rq.DATASETS, "tiny", rq.DataSpec("tiny", lambda work, exe: tiny, [3], cold=True))
    monkeypatch.setattr(rq, "EASE_GRID", [50.0, 500.0])
    monkeypatch.setattr(rq, "RP3_GRID", [{"alpha": 1.0, "beta": 0.5}])
    opts = rq.Options(workdir=tmp_path, mode="validation", sets=TINY, cold=True)
    doc = rq.run([("tiny", [3])], opts)
    (run,) = doc["runs"]
    assert "errors" not in run, run.get("errors")
    models = run["models"]
    for row in ("popular", "ease", "rp3beta", "item-knn", "two-tower", "ranked"):
        for metric in rq.METRICS:
            assert 0.0 <= models[row][metric] <= 1.0, (row, metric)
    # the learnt rows are real lists, not empty ones: they beat popularity at Recall@100
    assert models["ranked"]["recall@100"] > 0.5 * models["popular"]["recall@100"] > 0
    assert models["ease"]["params"]["lam"] in (50.0, 500.0)
    assert run["ranked/ease"] == pytest.approx(models["ranked"]["ndcg@10"] / models["ease"]["ndcg@10"])
    assert run["train_seconds"] > 0
    # validation mode scores a split carved from the training side: never a test rating
    train, test = rq.holdout_per_user(tiny, 0.2, 3)
    fit, val = rq.scoring_split(tiny, 3, "validation")
    assert run["scored_ratings"] == len(val.ratings) and run["train_ratings"] == len(fit.ratings)
    assert len(fit.ratings) + len(val.ratings) == len(train.ratings)
    cold = run["cold"]
    assert "error" not in cold, cold.get("error")
    assert cold["users"] > 0 and 0 <= cold["ranked"]["ndcg@10"] <= 1 and 0 <= cold["tf-idf alone"]["ndcg@10"] <= 1
    text = rq.markdown(doc)
    assert "| tiny | 3 |" in text and "Mean ± sd" in text and "Cold items" in text
    cache = tmp_path / "cache" / "tiny-3-validation-baselines.json"
    assert json.loads(cache.read_text())["ease"]["ndcg@10"] == models["ease"]["ndcg@10"]


def test_failed_training_is_reported_and_the_run_goes_on(rq: ModuleType, tiny: Dataset, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(rq.DATASETS, "tiny", rq.DataSpec("tiny", lambda work, exe: tiny, [1, 2]))
    monkeypatch.setattr(rq, "EASE_GRID", [100.0])
    monkeypatch.setattr(rq, "RP3_GRID", [{"alpha": 1.0, "beta": 0.5}])
    opts = rq.Options(workdir=tmp_path, sets=["ranking.no_such_key=1"])
    doc = rq.run(rq.parse_datasets("tiny:1,2"), opts)
    assert [r["seed"] for r in doc["runs"]] == [1, 2]
    for run in doc["runs"]:
        assert "no_such_key" in run["errors"]["pipeline"]  # the stderr tail names the bad key
        assert "ranked" not in run["models"] and np.isfinite(run["models"]["ease"]["ndcg@10"])
    out = capsys.readouterr().out
    assert out.count("FAILED") == 2 and "Failed runs" in rq.markdown(doc)


def test_dataset_filter_parses_names_and_seeds(rq: ModuleType) -> None:
    assert rq.parse_datasets("ml100k:1,2 latest synth") == [("ml100k", [1, 2]), ("latest", [1, 2, 3]), ("synth", [1])]
    assert [n for n, _ in rq.parse_datasets(None)] == ["ml100k", "latest", "synth", "zero10"]
    assert rq.parse_datasets("pm10 untitled") == [("pm10", [1]), ("untitled", [1])]  # data-shape checks only when named
    with pytest.raises(SystemExit):
        rq.parse_datasets("ml1m")
