"""The HTML report: every section and image renders from a small bundle, missing pieces degrade
to a visible note, quality tables in both accepted shapes, and the CLI's error contract."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from movierec.report import (
    ReportError,
    _block_density,
    _Interactions,
    _per_epoch,
    _section_map,
    normalize_quality,
    quality_from_test,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SECTIONS = ["summary", "data", "training", "quality", "map", "samples"]

QUALITY = {
    "popular": {"users": 120.0, "recall@10": 0.05, "ndcg@10": 0.04, "recall@50": 0.2, "coverage@10": 0.05},
    "ease": {"users": 120.0, "recall@10": 0.12, "ndcg@10": 0.10, "recall@50": 0.35, "coverage@10": 0.4},
    "movierec (ranked)": {"users": 120.0, "recall@10": 0.15, "ndcg@10": 0.12, "recall@50": 0.4, "coverage@10": 0.5},
}


class _Page(HTMLParser):
    """Collects section ids, their images and notes from a report."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: dict[str, list[str]] = {}
        self.notes: dict[str, int] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a["id"] or "")
        elif tag == "img" and self.sections:
            self.images.setdefault(self.sections[-1], []).append(a["src"] or "")
        elif tag == "p" and a.get("class") == "note" and self.sections:
            self.notes[self.sections[-1]] = self.notes.get(self.sections[-1], 0) + 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def png_size(src: str) -> tuple[int, int]:
    """Decode an inline image and return its (width, height) from the PNG header."""
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    data = base64.b64decode(src[len(prefix) :], validate=True)
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic bundle with both stages' logs, and a held-out test CSV for it."""
    from movierec.core.config import load_config
    from movierec.core.loaders import load_dataset
    from movierec.pipeline import train
    from movierec.core.splits import holdout_per_user
    from movierec.core.synthetic import SynthSpec, write_synthetic

    root = tmp_path_factory.mktemp("report")
    write_synthetic(root / "data", SynthSpec(n_users=150, n_items=120, n_ratings=4000, seed=1))
    train_ds, test_ds = holdout_per_user(load_dataset(root / "data"), 0.2, seed=42)
    cfg = load_config(None, {
        "retrieval.epochs": 2, "retrieval.dim": 16, "ranking.epochs": 2, "ranking.candidates": 30,
        "trainer.progress": False,
    })
    bundle = train(train_ds, root / "bundle", cfg)
    r = test_ds.ratings
    test_csv = root / "test.csv"
    pd.DataFrame({
        "user_id": test_ds.user_ids[r["user_idx"].to_numpy()],
        "item_id": test_ds.items["item_id"].to_numpy()[r["item_idx"].to_numpy()],
        "rating": r["rating"].to_numpy(),
        "timestamp": r["timestamp"].to_numpy(),
    }).to_csv(test_csv, index=False)
    return {"root": root, "bundle": bundle, "test": test_csv}


@pytest.fixture(scope="module")
def full_report(small: dict[str, Path]) -> Path:
    return write_report(small["bundle"], small["root"] / "out" / "report.html", QUALITY)


def test_full_report_has_every_section_and_decodable_image(full_report: Path) -> None:
    page = parse(full_report)
    assert page.sections == SECTIONS
    # data: ratings, long tail, sparsity; training: two-tower, ranker, rating model (AutoRec, MF); quality chart; map
    assert {k: len(v) for k, v in page.images.items()} == {"data": 3, "training": 4, "quality": 1, "map": 1}
    for src in (s for srcs in page.images.values() for s in srcs):
        w, h = png_size(src)
        assert 300 <= w <= 1600 and 200 <= h <= 1000
    assert page.notes == {}, "a complete bundle with a quality table needs no note"
    text = " ".join(page.text)
    assert text.count("because you rated") >= 3
    assert "movierec (ranked)" in text and "recall@10" in text
    assert "most typical titles" in text
    assert not list(full_report.parent.glob(".*.tmp")), "the atomic write left its temp file"


def test_summary_shows_every_components_validation_numbers_as_a_table(full_report: Path, small: dict[str, Path]) -> None:
    """The rating model's nested numbers (per-component RMSE, per-epoch histories,
    stacker weights) read as rows of a component / measure / value table, never a raw dict."""
    html_text = full_report.read_text()
    summary = html_text[html_text.index('id="summary"'):html_text.index('id="data"')]
    assert "<th>component</th><th>measure</th>" in summary
    manifest = json.loads((small["bundle"] / "manifest.json").read_text())
    for stage in manifest["metrics"]:
        assert f"<td>{stage.replace('_', ' ')}</td>" in summary, stage
    assert "val_rmse · blend" in summary
    assert "{" not in summary.split("<table>", 1)[1] and "[0." not in summary  # no dict or list dumped


def test_report_is_self_contained(full_report: Path) -> None:
    html = full_report.read_text(encoding="utf-8")
    assert "<script" not in html
    assert "http://" not in html and "https://" not in html
    assert 'src="' not in html.replace('src="data:image/png;base64,', "")


def test_sample_reasons_name_a_movie_the_user_rated(small: dict[str, Path], full_report: Path) -> None:
    from recommender import HybridRecommender

    model = HybridRecommender.load(small["bundle"])
    titles = set(model.items["title"])
    html = full_report.read_text(encoding="utf-8")
    reasons = [chunk.split("</b>")[0] for chunk in html.split("because you rated <b>")[1:]]
    assert reasons
    for reason in reasons:
        assert any(reason.startswith(t.replace("&", "&amp;")) for t in titles), reason


def test_missing_logs_and_quality_degrade_to_notes(small: dict[str, Path]) -> None:
    stripped = small["root"] / "no-logs"
    shutil.copytree(small["bundle"], stripped)
    manifest = json.loads((stripped / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("logs/")}
    (stripped / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(stripped / "logs")

    page = parse(write_report(stripped, small["root"] / "degraded.html"))
    assert page.sections == SECTIONS
    assert page.notes == {"training": 1, "quality": 1}
    assert {k: len(v) for k, v in page.images.items()} == {"data": 3, "map": 1}
    text = " ".join(page.text)
    assert "no training logs" in text and "No evaluation was given" in text


def test_quality_from_test_file(small: dict[str, Path]) -> None:
    table, note = quality_from_test(small["bundle"], small["test"], k=10)
    # a random hold-out, and the bundle trained with the defaults on timestamped data: for the next movies
    assert note is not None and "random share" in note and "--set ranking.holdout=random" in note
    text = write_report(small["bundle"], small["root"] / "noted.html", table, note).read_text()
    assert "the ranker was trained for the other protocol" in text
    assert list(table) == ["most popular", "two-tower (retrieval order)", "movierec (ranked)"]
    for metrics in table.values():
        assert {"recall@10", "ndcg@10", "coverage@10"} <= set(metrics)
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    # most popular recommends the same few movies to everyone
    assert table["most popular"]["coverage@10"] < table["two-tower (retrieval order)"]["coverage@10"]


def test_normalize_quality_accepts_demo_and_evaluate_json() -> None:
    demo = normalize_quality(QUALITY)
    assert list(demo) == list(QUALITY) and "users" not in demo["ease"]
    evaluated = normalize_quality({"k": 10, "metrics": {"recall": 0.2, "ndcg": 0.1}, "users": 5, "ranked": False})
    assert evaluated == {"movierec (retrieval order)": {"recall@10": 0.2, "ndcg@10": 0.1}}
    for bad in ([1], {}, {"a": 3}, {"a": {"users": 3}}):
        with pytest.raises(ReportError):
            normalize_quality(bad)


def test_per_epoch_drops_before_and_after_validation() -> None:
    """Ranker logs carry a validation before training (step 0) and one of the restored best
    checkpoint after it; neither is an epoch's end state."""
    frame = pd.DataFrame({
        "epoch": [0, 0, 0, 1, 1, 2],
        "step": [0, 4, 5, 9, 11, 12],
        "train/loss": [np.nan, 4.0, np.nan, 3.0, np.nan, np.nan],
        "val/ndcg@10": [0.1, np.nan, 0.3, np.nan, 0.4, 0.4],
    })
    out = _per_epoch(frame)
    assert list(out.index) == [0, 1]
    assert out["train/loss"].tolist() == [4.0, 3.0]
    assert out["val/ndcg@10"].tolist() == [0.3, 0.4]


def test_block_density_is_a_share_per_block() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 300, 250
    cells = rng.choice(n_users * n_items, 5000, replace=False)
    data = _Interactions(cells // n_items, cells % n_items, np.ones(5000), n_users, n_items)
    per_user, per_item = np.bincount(data.user, minlength=n_users), np.bincount(data.item, minlength=n_items)
    share = _block_density(data, per_user, per_item, max_cells=120)
    assert share.shape == (120, 120)
    assert share.min() >= 0 and share.max() <= 1
    # blocks hold 2-3 x 2-3 cells; weighted by their size the shares give back the density
    assert share[0].mean() > share[-1].mean(), "most active users come first"
    full = _Interactions(np.repeat(np.arange(7), 5), np.tile(np.arange(5), 7), np.ones(35), 7, 5)
    assert np.all(_block_density(full, np.full(7, 5), np.full(5, 7), max_cells=3) == 1.0)


def test_map_is_deterministic(small: dict[str, Path], full_report: Path) -> None:
    from movierec.core.artifacts import load_bundle

    again = _section_map(load_bundle(small["bundle"])).html()
    assert again in full_report.read_text(encoding="utf-8")


def test_cli_missing_model_dir_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from movierec.cli import main

    monkeypatch.setattr(sys, "argv", ["movierec", "report", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'nope'}: no such model directory"]
    assert not (tmp_path / "r.html").exists()


def test_cli_reads_quality_file_and_passes_it_on(
    small: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import movierec.report
    from movierec.cli import main

    calls: list[tuple[Path, Path, object, object]] = []

    def fake_write(model_dir: Path, out_html: Path, quality: object = None, note: object = None) -> Path:
        calls.append((model_dir, out_html, quality, note))  # rendering itself is covered above
        return out_html

    monkeypatch.setattr(movierec.report, "write_report", fake_write)
    qfile = tmp_path / "q.json"
    qfile.write_text(json.dumps({"k": 10, "metrics": {"recall": 0.2, "ndcg": 0.1}, "ranked": True}))
    out = tmp_path / "r.html"
    monkeypatch.setattr(sys, "argv", ["movierec", "report", "--model", str(small["bundle"]), "--out", str(out), "--quality", str(qfile)])
    main()
    assert calls == [(small["bundle"], out, {"movierec (ranked)": {"recall@10": 0.2, "ndcg@10": 0.1}}, None)]
    assert capsys.readouterr().out.strip() == f"report: {out}"

    qfile.write_text("{not json")
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.mldata
@pytest.mark.slow
def test_ml100k_report(ml100k_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The real data: 1,682 movies with real titles and genres, trained briefly."""
    from movierec.core.config import load_config
    from movierec.core.loaders import load_dataset
    from movierec.pipeline import train

    root = tmp_path_factory.mktemp("report-ml100k")
    # the order-free two-tower model: its map puts the most-rated movies near their clusters'
    # centres; the sequential one (the default on timestamped data) lists less-rated titles there
    cfg = load_config(None, {"retrieval.epochs": 1, "ranking.enabled": False, "trainer.progress": False,
                             "retrieval.sequential": False})
    bundle = train(load_dataset(ml100k_path), root / "bundle", cfg)
    page = parse(write_report(bundle, root / "report.html"))
    assert page.sections == SECTIONS
    assert {k: len(v) for k, v in page.images.items()} == {"data": 3, "training": 1, "map": 1}
    text = " ".join(page.text)
    assert "Star Wars (1977)" in text or "Fargo (1996)" in text  # popular titles typify their clusters
    assert "100,000" in text
