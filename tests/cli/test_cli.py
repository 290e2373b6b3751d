"""movierec recommend / similar / serve: JSON shapes from DESIGN.md, exit code 2 for unknown ids,
and a real ``movierec serve`` process queried over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from recommender import HybridRecommender
from tests.serving.conftest import free_port, wait_ready
from cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]




def test_recommend_json_matches_the_model(bundle_path: Path, monkeypatch, capsys) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "recommend", "--model", str(bundle_path), "--user", "7", "--k", "5", "--json")
    assert code == 0
    body = json.loads(out)
    model = HybridRecommender.load(bundle_path)
    expected = model.recommend_user(7, 5)
    assert body["user_id"] == 7
    assert [i["item_id"] for i in body["items"]] == model.items["item_id"].to_numpy()[expected.item_idx].tolist()
    assert all(set(i) == {"item_id", "title", "score"} for i in body["items"])


def test_recommend_k_may_exceed_the_api_cap(bundle_path: Path, monkeypatch, capsys) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "recommend", "--model", str(bundle_path), "--user", "7", "--k", "5000", "--json")
    assert code == 0 and 0 < len(json.loads(out)["items"]) <= 150


def test_similar_json_and_text(bundle_path: Path, monkeypatch, capsys) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "similar", "--model", str(bundle_path), "--item", "3", "--k", "4", "--by", "content", "--json")
    assert code == 0
    body = json.loads(out)
    assert body["item_id"] == 3 and len(body["items"]) == 4 and 3 not in [i["item_id"] for i in body["items"]]
    code, out, _ = run_cli(monkeypatch, capsys, "similar", "--model", str(bundle_path), "--item", "3", "--k", "2")
    assert code == 0 and "movies like" in out and out.count("score=") == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["recommend", "--user", "999999"], "unknown user_id"),
        (["similar", "--item", "999999"], "unknown item_id"),
        (["similar", "--item", "1", "--by", "vibes"], "--by must be"),
        # a text id where ids are integers: one line too, not a traceback
        (["recommend", "--user", "abc"], "user_ids are integers"),
        (["similar", "--item", "abc"], "item_ids are integers"),
    ],
)
def test_unknown_ids_exit_2_with_one_line(bundle_path: Path, monkeypatch, capsys, args: list[str], message: str) -> None:
    code, out, err = run_cli(monkeypatch, capsys, args[0], "--model", str(bundle_path), *args[1:])
    assert code == 2 and out == ""
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err


def test_missing_model_exits_2(tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "recommend", "--model", str(tmp_path / "nope"), "--user", "1")
    assert code == 2 and "not a model bundle" in err


def test_movierec_serve_answers_over_http(bundle_path: Path) -> None:
    """A real ``movierec serve`` process on a free port: ready, recommendations, page; always killed."""
    port = free_port()
    env = {**os.environ, "MOVIEREC_API_KEY": "k"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "movierec.cli", "serve", "--model", str(bundle_path), "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        with httpx.Client(base_url=base, timeout=10) as http:
            r = http.get("/users/1/recommendations", params={"k": 3})
            assert r.status_code == 200 and len(r.json()["items"]) == 3
            assert http.post("/recommendations", json={"liked_items": [1, 2]}).json()["user_id"] is None
            assert http.post("/admin/reload", headers={"X-API-Key": "k"}).json()["status"] == "unchanged"
            assert http.post("/admin/reload").status_code == 401
            assert "search-input" in http.get("/").text
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_serve_starts_one_worker_per_core_unless_told(bundle_path: Path, monkeypatch, capsys) -> None:
    import serving.launcher

    started: list[int] = []
    monkeypatch.setattr(serving.launcher, "run_server", lambda model, host, port, workers: started.append(workers))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert run_cli(monkeypatch, capsys, "serve", "--model", str(bundle_path))[0] == 0
    assert run_cli(monkeypatch, capsys, "serve", "--model", str(bundle_path), "--workers", "1")[0] == 0
    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    assert run_cli(monkeypatch, capsys, "serve", "--model", str(bundle_path))[0] == 0
    assert started == [2, 1, 8]


def test_train_out_through_a_current_link_replaces_the_bundle_behind_it(bundle_path: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """``ln -s m1 current; movierec train --out current``: m1 is replaced by the new bundle whole,
    manifest included (a write through the link must not lose it), the link stays, nothing is
    left beside them."""
    import shutil

    from movierec.core.artifacts import load_bundle

    shutil.copytree(bundle_path, tmp_path / "m1")
    (tmp_path / "current").symlink_to("m1")
    old = load_bundle(tmp_path / "m1").model_version
    tiny = ["--set", "retrieval.epochs=1", "--set", "retrieval.dim=8", "--set", "retrieval.hidden=16", "--set", "content.dim=8",
            "--set", "ranking.enabled=false", "--set", "ranking.rating.enabled=false"]
    code, _, err = run_cli(monkeypatch, capsys, "train", "--data", str(bundle_path.parent / "data"), "--out", str(tmp_path / "current"), "--json", *tiny)
    assert code == 0, err
    new = load_bundle(tmp_path / "m1")  # verified: every file and the manifest
    assert new.model_version != old and (tmp_path / "current").is_symlink() and os.readlink(tmp_path / "current") == "m1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "m1"]
