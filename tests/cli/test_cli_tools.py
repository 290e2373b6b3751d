"""The CLI's tools around training: split, compare, evaluate on MovieLens fold files,
--version, ``python -m movierec`` = ``movierec``, and quiet, JSON-able output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli_helpers import run_cli
from movierec.core.loaders import load_csv, load_dataset
from movierec.core.synthetic import SynthSpec, write_synthetic

REPO = Path(__file__).resolve().parents[2]
MOVIEREC = Path(sys.executable).parent / "movierec"
TINY = ["--set", "retrieval.epochs=1", "--set", "retrieval.dim=16", "--set", "retrieval.hidden=32", "--set", "content.dim=16",
        "--set", "ranking.epochs=1", "--set", "ranking.candidates=30", "--set", "ranking.rating.enabled=false"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MOVIEREC_PROGRESS": "0", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-tools") / "data"
    write_synthetic(root, SynthSpec(n_users=120, n_items=90, n_ratings=3000, seed=5))
    return root


@pytest.mark.parametrize("protocol", ["holdout", "temporal", "cold-items"])
def test_split_writes_files_that_train_evaluate_and_compare_read(data: Path, tmp_path: Path, protocol: str, monkeypatch, capsys) -> None:
    out = tmp_path / "split"
    code, stdout, err = run_cli(monkeypatch, capsys, "split", "--data", str(data), "--out", str(out), "--protocol", protocol,
                                "--test-size", "0.25", "--seed", "3", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    train, test = pd.read_csv(out / "train.csv"), pd.read_csv(out / "test.csv")
    assert list(train.columns) == list(test.columns) == ["user_id", "item_id", "rating", "timestamp"]
    full = load_dataset(data)
    assert len(train) + len(test) == len(full.ratings) == summary["train_ratings"] + summary["test_ratings"]
    assert 0.15 < len(test) / len(full.ratings) < 0.3
    assert not set(zip(train.user_id, train.item_id)) & set(zip(test.user_id, test.item_id))
    back = load_csv(out / "train.csv", out / "items.csv")  # what train --ratings/--items read
    assert back.n_items == full.n_items
    assert sorted(back.items["title"]) == sorted(full.items["title"])
    if protocol == "cold-items":
        assert not set(test.item_id) & set(train.item_id)
    if protocol == "temporal":
        last_train = train.groupby("user_id").timestamp.max()
        first_test = test.groupby("user_id").timestamp.min()
        assert (last_train.reindex(first_test.index) <= first_test).all()
    again = tmp_path / "again"
    run_cli(monkeypatch, capsys, "split", "--data", str(data), "--out", str(again), "--protocol", protocol, "--test-size", "0.25", "--seed", "3")
    assert (again / "test.csv").read_bytes() == (out / "test.csv").read_bytes()  # seeded


@pytest.mark.parametrize("args, message", [
    (["--protocol", "kfold"], "--protocol must be one of"),
    (["--test-size", "1.5"], "--test-size must be between"),
])
def test_split_rejects_bad_options(data: Path, tmp_path: Path, args: list[str], message: str, monkeypatch, capsys) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "split", "--data", str(data), "--out", str(tmp_path / "s"), *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_evaluate_reads_movielens_fold_files(tmp_path: Path) -> None:
    from movierec.evaluation import read_test_file

    path = tmp_path / "u1.test"
    path.write_text("1\t6\t5\t887431973\n1\t10\t3\t875693118\n2\t1\t4\t888550871\n")
    frame = read_test_file(path)
    assert list(frame["user_id"]) == ["1", "1", "2"] and list(frame["item_id"]) == ["6", "10", "1"]
    assert list(frame["rating"]) == [5.0, 3.0, 4.0]
    csv = tmp_path / "test.csv"
    csv.write_text("user_id,item_id,rating\n1,6,5\n")
    assert list(read_test_file(csv)["item_id"]) == ["6"]


def test_evaluate_cli_on_the_real_u1_test(ml100k_path: Path, tmp_path: Path) -> None:
    """`train` on u1.base, `evaluate --test u1.test` as shipped by GroupLens (tab-separated, no header)."""
    base = pd.read_csv(ml100k_path / "u1.base", sep="\t", names=["user_id", "item_id", "rating", "timestamp"])
    base.to_csv(tmp_path / "u1.base.csv", index=False)
    from movierec.core.splits import write_items_csv

    write_items_csv(load_dataset(ml100k_path), tmp_path / "items.csv")
    model = tmp_path / "model"
    subprocess.run([str(MOVIEREC), "train", "--ratings", str(tmp_path / "u1.base.csv"), "--items", str(tmp_path / "items.csv"), "--out", str(model), *TINY,
                    "--set", "trainer.progress=false"], check=True, env=env(), capture_output=True, timeout=600)
    r = subprocess.run([str(MOVIEREC), "evaluate", "--model", str(model), "--test", str(ml100k_path / "u1.test"), "--json"],
                       env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["pairs"] + result["skipped_rows"] == 20_000 and result["metrics"]["recall"] > 0


def test_compare_prints_one_row_per_model_as_json_and_table(data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "split"
    run_cli(monkeypatch, capsys, "split", "--data", str(data), "--out", str(out))
    args = ["compare", "--train", str(out / "train.csv"), "--items", str(out / "items.csv"), "--test", str(out / "test.csv"), *TINY]
    code, stdout, err = run_cli(monkeypatch, capsys, *args, "--json", "--plot", str(tmp_path / "cmp.png"))
    assert code == 0, err
    rows = json.loads(stdout)
    assert [r["model"] for r in rows] == ["popular", "ease", "itemknn", "rp3beta", "svd", "two-tower", "movierec"]
    for r in rows:
        assert set(r) == {"model", "recall@10", "ndcg@10", "recall@100", "coverage@10", "fit_s"}
        assert 0 <= r["recall@10"] <= r["recall@100"] <= 1 and 0 < r["coverage@10"] <= 1 and r["fit_s"] >= 0
    by = {r["model"]: r for r in rows}
    assert by["ease"]["ndcg@10"] > by["popular"]["ndcg@10"]
    assert by["two-tower"]["fit_s"] == by["movierec"]["fit_s"]  # one pipeline, two orders
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    code, stdout, _ = run_cli(monkeypatch, capsys, *args, "--models", "popular,ease")
    assert code == 0
    lines = stdout.strip().splitlines()
    assert "Recall@10" in lines[0] and "NDCG@10" in lines[0] and "Recall@100" in lines[0] and "fit s" in lines[0]
    assert [ln.split()[0] for ln in lines[2:4]] == ["popular", "ease"]
    assert lines[4:] == ["test split: a random share of each user's ratings held out (P2)"]  # the split's protocol, last


def test_compare_rejects_unknown_models(data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "compare", "--train", str(data / "ratings.csv"), "--test", str(data / "ratings.csv"),
                           "--models", "popular,deepfm")
    assert code == 2 and "unknown model 'deepfm'" in err


def test_version_and_python_m_behave_like_the_console_script(tmp_path: Path) -> None:
    from movierec import __version__

    for cmd in ([str(MOVIEREC)], [sys.executable, "-m", "movierec"]):
        r = subprocess.run([*cmd, "--version"], env=env(), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.strip() == f"movierec {__version__}"
        bad = subprocess.run([*cmd, "train", "--out", str(tmp_path / "m"), "--ratings", str(tmp_path / "missing.csv")],
                             env=env(), capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.startswith("error:")
        usage = subprocess.run([*cmd, "split", "--nope"], env=env(), capture_output=True, text=True, timeout=120)
        assert usage.returncode == 2 and "Traceback" not in usage.stderr


def test_train_and_candidates_are_quiet_and_speak_json(data: Path, tmp_path: Path) -> None:
    """No Lightning banner, tip or warning on the console; -v shows them at DEBUG."""
    model = tmp_path / "model"
    r = subprocess.run([str(MOVIEREC), "train", "--data", str(data), "--out", str(model), *TINY, "--json"],
                       env={**env(), "MOVIEREC_PROGRESS": "1"}, capture_output=True, text=True, timeout=600)  # bars allowed: --json keeps stdout clean
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["bundle"] == str(model) and summary["model_version"] and "two_tower" in summary["metrics"]
    for chatter in ("GPU available", "TPU available", "Tip:", "litlogger", "Warning", "deprecated", "val_dataloader"):
        assert chatter not in r.stderr, (chatter, r.stderr)
    cand = subprocess.run([str(MOVIEREC), "candidates", "--model", str(model), "--out", str(tmp_path / "c.parquet"), "--k", "5", "--json"],
                          env=env(), capture_output=True, text=True, timeout=300)
    assert cand.returncode == 0, cand.stderr
    summary = json.loads(cand.stdout)
    assert summary["users"] == 120 and 0 < summary["rows"] <= 5 * 120 and summary["out"] == str(tmp_path / "c.parquet")
    assert "Warning" not in cand.stderr and "GPU" not in cand.stderr
    loud = subprocess.run([str(MOVIEREC), "-v", "train", "--data", str(data), "--out", str(tmp_path / "m2"), *TINY],
                          env=env(), capture_output=True, text=True, timeout=600)
    assert loud.returncode == 0, loud.stderr
    assert "DEBUG lightning" in loud.stderr and "GPU available" in loud.stderr


def test_a_negative_rating_scale_trains_and_predicts_on_its_scale(tmp_path: Path, monkeypatch, capsys) -> None:
    """-10..10 ratings (a joke- or like/dislike-style source) go through split, train (rating model
    on) and evaluate: the bundle keeps the scale and its predictions beat the training mean."""
    data = tmp_path / "data"
    write_synthetic(data, SynthSpec(n_users=120, n_items=90, n_ratings=3000, seed=5, rating_min=-10, rating_max=10, rating_step=1))
    assert load_dataset(data).ratings["rating"].min() < 0
    code, _, err = run_cli(monkeypatch, capsys, "split", "--data", str(data), "--out", str(tmp_path / "split"), "--seed", "1")
    assert code == 0, err
    split, model = tmp_path / "split", tmp_path / "model"
    assert TINY[-2:] == ["--set", "ranking.rating.enabled=false"]
    # TINY with the rating model on, and few epochs of it
    fast = [*TINY[:-2], "--set", "ranking.rating.mf_epochs=5", "--set", "ranking.rating.autorec_epochs=5", "--set", "ranking.rating.knn_k=10"]
    r = subprocess.run([str(MOVIEREC), "train", "--ratings", str(split / "train.csv"), "--items", str(split / "items.csv"), "--out", str(model),
                        *fast], env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((model / "manifest.json").read_text())
    train, test = pd.read_csv(split / "train.csv"), pd.read_csv(split / "test.csv")
    assert manifest["dataset"]["rating_scale"] == [train.rating.min(), train.rating.max()] and train.rating.min() < 0
    r = subprocess.run([str(MOVIEREC), "evaluate", "--model", str(model), "--test", str(split / "test.csv"), "--json"],
                       env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    mean_rmse = float(np.sqrt(((test.rating - train.rating.mean()) ** 2).mean()))
    assert result["rating"]["rmse"] < mean_rmse and result["metrics"]["recall"] > 0, (result, mean_rmse)


def test_a_ratings_file_alone_trains_without_content(data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """No item file: every movie has the same (empty) content, the item tower keeps its ids, and
    the bundle answers candidates and similar-movie queries from the collaborative stages."""
    code, _, err = run_cli(monkeypatch, capsys, "split", "--data", str(data), "--out", str(tmp_path / "split"), "--seed", "1")
    assert code == 0, err
    model = tmp_path / "model"
    r = subprocess.run([str(MOVIEREC), "train", "--ratings", str(tmp_path / "split" / "train.csv"), "--out", str(model), *TINY],
                       env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "has a title word, genre, year, tag or description; every movie gets the same content vector" in r.stderr, r.stderr
    manifest = json.loads((model / "manifest.json").read_text())
    assert any(c.startswith("retrieval.id_dropout=0.0") for c in manifest["sizing"]), manifest["sizing"]
    cand = subprocess.run([str(MOVIEREC), "candidates", "--model", str(model), "--out", str(tmp_path / "c.parquet"), "--k", "5", "--json"],
                          env=env(), capture_output=True, text=True, timeout=300)
    assert cand.returncode == 0, cand.stderr
    items = pd.read_csv(tmp_path / "split" / "train.csv").item_id
    first = str(items.iloc[0])
    sim = subprocess.run([str(MOVIEREC), "similar", "--model", str(model), "--item", first, "--k", "5", "--json"],
                         env=env(), capture_output=True, text=True, timeout=300)
    assert sim.returncode == 0, sim.stderr
    found = [x["item_id"] for x in json.loads(sim.stdout)["items"]]
    assert len(found) == 5 and first not in map(str, found)


def test_split_writes_movielens_official_folds(ml100k_path: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "split", "--data", str(ml100k_path), "--out", str(tmp_path / "u1"), "--protocol", "u1")
    assert code == 0, err
    test = pd.read_csv(tmp_path / "u1" / "test.csv")
    official = pd.read_csv(ml100k_path / "u1.test", sep="\t", names=["user_id", "item_id", "rating", "timestamp"])
    assert len(test) == len(official) == 20_000
    assert set(zip(test.user_id, test.item_id)) == set(zip(official.user_id, official.item_id))
    assert len(pd.read_csv(tmp_path / "u1" / "train.csv")) == 80_000


def test_split_fold_needs_the_movielens_folder(data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "split", "--data", str(data), "--out", str(tmp_path / "s"), "--protocol", "u2")
    assert code == 2 and "MovieLens 100K fold" in err


def test_evaluate_and_compare_say_which_protocol_the_test_file_follows(data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """The defaults train the ranker for each user's next movies when the data has timestamps;
    evaluate and compare read the test file's protocol and say when the ranker was trained for
    the other one."""
    out = tmp_path / "next"
    run_cli(monkeypatch, capsys, "split", "--data", str(data), "--out", str(out), "--protocol", "temporal")
    files = ["--ratings", str(out / "train.csv"), "--items", str(out / "items.csv")]
    code, _, err = run_cli(monkeypatch, capsys, "train", *files, "--out", str(tmp_path / "m"), *TINY)
    assert code == 0, err
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["holdout"]["used"] == "temporal" and "timestamps" in manifest["holdout"]["why"]
    code, stdout, err = run_cli(monkeypatch, capsys, "evaluate", "--model", str(tmp_path / "m"), "--test", str(out / "test.csv"))
    assert code == 0, err
    assert "test split: each user's latest ratings held out" in stdout and "the ranker was trained for it" in stdout
    code, stdout, _ = run_cli(monkeypatch, capsys, "evaluate", "--model", str(tmp_path / "m"), "--test", str(out / "test.csv"), "--json")
    assert json.loads(stdout)["protocol"] == {"test": "temporal", "trained_for": "temporal"}

    rnd = tmp_path / "random"
    run_cli(monkeypatch, capsys, "split", "--data", str(data), "--out", str(rnd), "--protocol", "holdout")
    code, stdout, err = run_cli(monkeypatch, capsys, "evaluate", "--model", str(tmp_path / "m"), "--test", str(rnd / "test.csv"))
    assert code == 0, err
    assert "a random share of each user's ratings held out" in stdout
    assert "trained for the other protocol" in stdout and "--set ranking.holdout=random" in stdout
    code, stdout, err = run_cli(monkeypatch, capsys, "compare", "--train", str(rnd / "train.csv"), "--items", str(rnd / "items.csv"),
                                "--test", str(rnd / "test.csv"), "--models", "popular,ease")
    assert code == 0, err
    assert stdout.strip().splitlines()[-1] == "test split: a random share of each user's ratings held out (P2)"
