"""Robust quality: the whole CLI pipeline over many splits and data sets, one protocol.

    python benchmarks/robust_quality.py --validation --workdir /tmp/rq        # choose settings
    python benchmarks/robust_quality.py --datasets "ml100k:1,2 latest:1 synth zero10" --set ranking.folds=5
    python benchmarks/robust_quality.py --test ...                            # touches test: once per configuration

Protocol (P2 of DESIGN.md, the same for every row): each user's ratings are split 80/20 at random
(``movierec.core.splits.holdout_per_user(ds, 0.2, seed)``); every held-out rating is relevant; each
model ranks every movie the user did not rate in training; NDCG@10, Recall@10, Recall@100.

``--validation`` (what engineers use to choose configurations) never looks at the test part: it
carves a validation split from each training split (``holdout_per_user(train, 0.2, 10_000 + seed)``),
trains on the rest and scores on the validation part. ``--test`` scores the test split; RESULTS.md says how many
configurations have seen it.

The pipeline is run exactly as a user runs it: the training split and the item table are written
as plain CSV (``user_id,item_id,rating,timestamp`` and ``item_id,title,genres,year[,tags]
[,description]`` with ``|``-joined genres) and handed to subprocesses of the venv's ``movierec``:
``train --ratings --items --out --seed [--config] [--set ...]``, then ``candidates --k 100`` (ranked
order) and ``candidates --k 100 --no-rank`` (two-tower retrieval order). Model changes merged
later are picked up without touching this script.

Baselines, fitted in-process on the same split: most-popular, EASE (lambda chosen per data set
on a validation split carved from the first seed's training side), RP3beta (alpha, beta chosen
the same way), item-kNN (library defaults). Their results are cached per (data set, seed, mode)
in ``WORKDIR/cache`` so reruns with other pipeline settings retrain only the pipeline.

Data sets (``--datasets`` picks some, optionally with seeds: ``ml100k:1,2,3 latest:1 synth zero10``):
ml100k (seeds 1-5), latest (ml-latest-small, seeds 1-3), synth (``movierec synth`` with the demo's
sizes, seed 1), zero10 (ML-100K with ratings mapped r -> 2.5 (r - 1), 0..10, seed 1). Data-shape
checks, run only when named, each ML-100K changed in one way (seed 1): pm10 (ratings 5 (r - 3),
-10..10), unary (every rating 1: implicit feedback), untimed (every timestamp 0), untitled (every
movie titled "untitled", no genres or year: no content), sparse (a random quarter of the ratings).

``--ablations`` also trains with ``--set ranking.exclude=[content]``, ``[collab]`` and ``[time]``.
``--cold`` adds P3 on ml100k and latest: 20% of the movies lose every training rating
(``movierec.core.splits.cold_items``); ranked among the cold movies only, for users who rated one in
the held-out part and have training ratings: the pipeline's full ranked order (``candidates --k``
the whole catalogue, so the ranker scores every movie) against TF-IDF content profiles alone;
also on synth. ``--cold-only`` runs P3 alone (no baselines, no P2 pipeline).

Prints one line per finished run, then markdown tables (per seed, mean +- sd, ratios); writes
everything per seed to ``--out``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from movierec.core.baselines import make_baseline  # noqa: E402
from movierec.core.data import Dataset  # noqa: E402
from movierec.core.loaders import load_dataset  # noqa: E402
from movierec.core.metrics import evaluate_topn, topn_metrics  # noqa: E402
from movierec.core.splits import cold_items, holdout_per_user  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
if not SHARED.is_dir():  # a worktree next to main: /work/wt-x -> /work/shared
    SHARED = Path("/work/shared/data")
KS = (10, 100)
VAL_OFFSET = 10_000
"""Validation seeds: ``holdout_per_user(train, 0.2, VAL_OFFSET + seed)``."""
TUNE_OFFSET = 20_000
"""Baseline tuning split: ``holdout_per_user(scoring train, 0.2, TUNE_OFFSET + seed)``."""
EASE_GRID = [50.0, 100.0, 200.0, 300.0, 500.0, 1000.0, 2000.0]
RP3_GRID = [{"alpha": a, "beta": b} for a in (0.6, 1.0) for b in (0.3, 0.5, 0.7)]
DEMO_SYNTH = {"users": 2_000, "items": 1_500, "ratings": 100_000, "seed": 42}  # movierec/demo.py's sizes
METRICS = ("ndcg@10", "recall@10", "recall@100")
LABELS = {"ndcg@10": "NDCG@10", "recall@10": "Recall@10", "recall@100": "Recall@100"}
log = logging.getLogger("robust_quality")


# ---- data sets -----------------------------------------------------------------------------------
@dataclass
class DataSpec:
    name: str
    load: Callable[[Path, str], Dataset]
    """(workdir, movierec executable) -> the whole data set."""
    seeds: list[int]
    cold: bool = False
    default: bool = True
    """Run when ``--datasets`` is not given (the data-shape checks run only when named)."""


def _ml100k(work: Path, movierec: str) -> Dataset:
    return load_dataset(SHARED / "ml-100k")


def _latest(work: Path, movierec: str) -> Dataset:
    return load_dataset(SHARED / "ml-latest-small")


def _zero10(work: Path, movierec: str) -> Dataset:
    ds = load_dataset(SHARED / "ml-100k")
    r = ds.ratings.copy()
    r["rating"] = 2.5 * (r["rating"] - 1.0)
    return ds.with_ratings(r, "ml-100k-0to10")


def _ml100k_as(
    name: str,
    ratings: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    items: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> Dataset:
    """ML-100K with its ratings and/or items changed by the given functions (the data-shape
    checks); no user features."""
    ds = load_dataset(SHARED / "ml-100k")
    r = ds.ratings[["user_id", "item_id", "rating", "timestamp"]].copy()
    return Dataset(ratings(r) if ratings else r, items(ds.items) if items else ds.items, None, f"ml-100k-{name}")


def _pm10(work: Path, movierec: str) -> Dataset:
    return _ml100k_as("pm10", ratings=lambda r: r.assign(rating=5.0 * (r["rating"] - 3.0)))  # -10..10


def _unary(work: Path, movierec: str) -> Dataset:
    return _ml100k_as("unary", ratings=lambda r: r.assign(rating=1.0))  # implicit feedback: one value throughout


def _untimed(work: Path, movierec: str) -> Dataset:
    return _ml100k_as("untimed", ratings=lambda r: r.assign(timestamp=0))  # unknown times


def _untitled(work: Path, movierec: str) -> Dataset:
    return _ml100k_as("untitled", items=lambda it: pd.DataFrame({"item_id": it["item_id"], "title": "untitled"}))  # no content at all


def _sparse(work: Path, movierec: str) -> Dataset:
    return _ml100k_as("sparse", ratings=lambda r: r[np.random.default_rng(0).random(len(r)) < 0.25])  # a random quarter of the ratings


def _synth(work: Path, movierec: str) -> Dataset:
    """``movierec synth`` with the demo's sizes, written once into the workdir."""
    out = work / "data" / "synth"
    if not (out / "ratings.csv").is_file():
        args = [movierec, "synth", "--out", str(out)] + [a for k, v in DEMO_SYNTH.items() for a in (f"--{k}", str(v))]
        subprocess.run(args, check=True, env=child_env(), capture_output=True)
    return load_dataset(out)


DATASETS: dict[str, DataSpec] = {
    "ml100k": DataSpec("ml100k", _ml100k, [1, 2, 3, 4, 5], cold=True),
    "latest": DataSpec("latest", _latest, [1, 2, 3], cold=True),
    "synth": DataSpec("synth", _synth, [1], cold=True),
    "zero10": DataSpec("zero10", _zero10, [1]),
    "pm10": DataSpec("pm10", _pm10, [1], default=False),
    "unary": DataSpec("unary", _unary, [1], default=False),
    "untimed": DataSpec("untimed", _untimed, [1], default=False),
    "untitled": DataSpec("untitled", _untitled, [1], default=False),
    "sparse": DataSpec("sparse", _sparse, [1], default=False),
}


def parse_datasets(text: str | None) -> list[tuple[str, list[int]]]:
    """``"ml100k:1,2 latest synth"`` -> [("ml100k", [1, 2]), ("latest", [1, 2, 3]), ("synth", [1])]."""
    if not text:
        return [(n, list(s.seeds)) for n, s in DATASETS.items() if s.default]
    out = []
    for part in text.replace(";", " ").split():
        name, _, seeds = part.partition(":")
        if name not in DATASETS:
            raise SystemExit(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
        out.append((name, [int(s) for s in seeds.split(",") if s] if seeds else list(DATASETS[name].seeds)))
    return out


# ---- splits --------------------------------------------------------------------------------------
def scoring_split(ds: Dataset, seed: int, mode: str) -> tuple[Dataset, Dataset]:
    """(train, scored): test mode scores the 20% hold-out; validation mode carves a 20% validation
    split from the training side and scores that, never reading the test part."""
    train, test = holdout_per_user(ds, 0.2, seed)
    if mode == "test":
        return train, test
    return holdout_per_user(train, 0.2, VAL_OFFSET + seed)


def write_csv(train: Dataset, items: pd.DataFrame, folder: Path) -> tuple[Path, Path]:
    """The training ratings and the item table as the plain CSV ``movierec train`` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    rpath, ipath = folder / "train.csv", folder / "items.csv"
    train.ratings[["user_id", "item_id", "rating", "timestamp"]].to_csv(rpath, index=False)
    if not ipath.is_file():
        it = pd.DataFrame({"item_id": items["item_id"], "title": items["title"].fillna("")})
        it["genres"] = ["|".join(g) for g in items["genres"]]
        it["year"] = items["year"].astype("Int64") if "year" in items else pd.NA
        for col in ("tags", "description"):
            if col in items and items[col].astype(str).str.strip().ne("").any():
                it[col] = items[col].fillna("")
        tmp = ipath.with_suffix(".tmp")
        it.to_csv(tmp, index=False)
        tmp.replace(ipath)
    return rpath, ipath


# ---- the CLI pipeline ----------------------------------------------------------------------------
def default_movierec() -> str:
    exe = Path(sys.executable).parent / "movierec"
    return str(exe) if exe.exists() else "movierec"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MOVIEREC_PROGRESS", "0")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class RunFailed(RuntimeError):
    pass


def _run(args: list[str], timeout: float | None = None) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run(args, env=child_env(), capture_output=True, text=True, timeout=timeout)
    secs = time.perf_counter() - t
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
        raise RunFailed(f"{' '.join(args[:2])} exited {p.returncode}:\n{tail}")
    return secs, p.stdout


def train_pipeline(movierec: str, rpath: Path, ipath: Path, out: Path, seed: int, config: Path | None,
                   sets: list[str]) -> float:
    args = [movierec, "train", "--ratings", str(rpath), "--items", str(ipath), "--out", str(out), "--seed", str(seed)]
    if config is not None:
        args += ["--config", str(config)]
    for s in sets:
        args += ["--set", s]
    secs, _ = _run(args)
    return secs


def candidate_lists(movierec: str, model: Path, out: Path, k: int, rank: bool, chunk_size: int | None = None) -> pd.DataFrame:
    args = [movierec, "candidates", "--model", str(model), "--out", str(out), "--k", str(k)]
    if chunk_size is not None:  # whole-catalogue lists: fewer users per chunk keep memory flat
        args += ["--chunk-size", str(chunk_size)]
    if not rank:
        args.append("--no-rank")
    _run(args)
    return pd.read_parquet(out)


def lists_to_recs(frame: pd.DataFrame, ds: Dataset, users: np.ndarray, k: int) -> np.ndarray:
    """(len(users), k) item_idx of the parquet's lists (best first, -1 where shorter or absent)."""
    f = frame.sort_values(["user_id", "rank"], kind="stable")
    u = ds.user_index(f["user_id"].to_numpy())
    i = ds.item_index(f["item_id"].to_numpy())
    r = f["rank"].to_numpy() - 1
    row_of = np.full(ds.n_users, -1, dtype=np.int64)
    row_of[users] = np.arange(len(users))
    rows = np.where(u >= 0, row_of[np.maximum(u, 0)], -1)
    keep = (rows >= 0) & (i >= 0) & (r < k) & (r >= 0)
    recs = np.full((len(users), k), -1, dtype=np.int64)
    recs[rows[keep], r[keep]] = i[keep]
    return recs


def list_metrics(recs: np.ndarray, relevant: Any, ks: tuple[int, ...] = KS) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        m = topn_metrics(recs, relevant, k)
        out[f"ndcg@{k}"], out[f"recall@{k}"] = m[f"ndcg@{k}"], m[f"recall@{k}"]
    return out


def _keep(m: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in m.items() if k in METRICS or k == "users"}


# ---- baselines -----------------------------------------------------------------------------------
def tune_baselines(train: Dataset, seed: int) -> dict[str, Any]:
    """EASE lambda and RP3beta (alpha, beta) by NDCG@10 on a split carved from ``train``."""
    fit, val = holdout_per_user(train, 0.2, TUNE_OFFSET + seed)
    out: dict[str, Any] = {}
    ease = []
    for lam in EASE_GRID:
        if train.n_items > 30_000:
            break
        m = make_baseline("ease", lam=lam).fit(fit)
        ease.append((lam, evaluate_topn(m.score_users, fit, val, ks=(10,))["ndcg@10"]))
    if ease:
        best = max(ease, key=lambda x: x[1])
        out["ease"] = {"lam": best[0], "grid": ease}
    rp3 = []
    for params in RP3_GRID:
        m = make_baseline("rp3beta", **params).fit(fit)
        rp3.append((params, evaluate_topn(m.score_users, fit, val, ks=(10,))["ndcg@10"]))
    best = max(rp3, key=lambda x: x[1])
    out["rp3beta"] = {**best[0], "grid": rp3}
    return out


def run_baselines(train: Dataset, scored: Dataset, tuned: dict[str, Any]) -> dict[str, dict[str, float]]:
    specs = {
        "popular": ("popular", {}),
        "ease": ("ease", {"lam": tuned["ease"]["lam"]}) if "ease" in tuned else None,
        "rp3beta": ("rp3beta", {k: tuned["rp3beta"][k] for k in ("alpha", "beta")}),
        "item-knn": ("item-knn", {}),
    }
    out: dict[str, dict[str, float]] = {}
    for row, spec in specs.items():
        if spec is None:
            continue
        t = time.perf_counter()
        m = make_baseline(spec[0], **spec[1]).fit(train)
        res = _keep(evaluate_topn(m.score_users, train, scored, ks=KS))
        out[row] = {**res, "fit_seconds": time.perf_counter() - t, "params": spec[1]}  # type: ignore[dict-item]
    return out


# Every split here is a random hold-out (P2), so the ranker trains for it; a --set of the same key,
# later on the command line, wins.
P2_SETS = ["ranking.holdout=random"]


# ---- one run ---------------------------------------------------------------------------------------
@dataclass
class Options:
    workdir: Path
    mode: str = "validation"
    movierec: str = field(default_factory=default_movierec)
    config: Path | None = None
    sets: list[str] = field(default_factory=list)
    ablations: bool = False
    cold: bool = False
    cold_only: bool = False
    keep_bundles: bool = False


def _cache_read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _cache_write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    tmp.replace(path)


def tuned_params(name: str, ds: Dataset, first_seed: int, opts: Options) -> dict[str, Any]:
    """Per data set: chosen on the first default seed's (scoring) training side, cached."""
    path = opts.workdir / "cache" / f"{name}-{opts.mode}-tuned.json"
    grids = {"ease_grid": EASE_GRID, "rp3_grid": RP3_GRID, "tuned_on_seed": first_seed}
    cached = _cache_read(path)
    if cached is not None and all(cached.get(k) == v for k, v in grids.items()):
        return cached
    train, _ = scoring_split(ds, first_seed, opts.mode)
    t = time.perf_counter()
    tuned = {**tune_baselines(train, first_seed), **grids, "seconds": time.perf_counter() - t}
    _cache_write(path, tuned)
    print(f"  tuned {name} ({opts.mode}, seed {first_seed}): EASE lambda {tuned.get('ease', {}).get('lam')}, "
          f"RP3beta alpha {tuned['rp3beta']['alpha']} beta {tuned['rp3beta']['beta']} ({tuned['seconds']:.0f}s)", flush=True)
    return tuned


ABLATED = ("content", "collab", "time")
"""Feature groups ``--ablations`` leaves out, one training each (``ranking.exclude``)."""


def pipeline_variants(opts: Options) -> dict[str, list[str]]:
    variants = {"": []}
    if opts.ablations:
        variants.update({f"no {group}": [f"ranking.exclude=[{group}]"] for group in ABLATED})
    return variants


def run_pipeline(tag: str, rpath: Path, ipath: Path, ds: Dataset, users: np.ndarray, relevant: Any, seed: int,
                 opts: Options, extra: list[str]) -> dict[str, Any]:
    """Train once, write ranked and retrieval lists, score them; errors come back as a dict."""
    folder = opts.workdir / "runs" / tag
    model = folder / "model"
    out: dict[str, Any] = {}
    try:
        out["train_seconds"] = train_pipeline(opts.movierec, rpath, ipath, model, seed, opts.config, opts.sets + extra)
        for name, rank in (("ranked", True), ("two-tower", False)):
            frame = candidate_lists(opts.movierec, model, folder / f"{name}.parquet", max(KS), rank)
            out[name] = list_metrics(lists_to_recs(frame, ds, users, max(KS)), relevant)
            (folder / f"{name}.parquet").unlink(missing_ok=True)
    except (RunFailed, subprocess.SubprocessError, OSError) as e:
        out["error"] = str(e)
        print(f"  FAILED {tag}: {e}", flush=True)
    finally:
        if not opts.keep_bundles:
            _rmtree(model)
    return out


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def run_one(name: str, ds: Dataset, seed: int, first_seed: int, opts: Options) -> dict[str, Any]:
    """Baselines (cached) and the pipeline (and its ablations) on one (data set, seed)."""
    t0 = time.perf_counter()
    train, scored = scoring_split(ds, seed, opts.mode)
    relevant = scored.to_csr().tocsr()
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    rel = relevant[users]
    tuned = tuned_params(name, ds, first_seed, opts)
    cache = opts.workdir / "cache" / f"{name}-{seed}-{opts.mode}-baselines.json"
    base = _cache_read(cache)
    if base is None:
        base = run_baselines(train, scored, tuned)
        _cache_write(cache, base)
    result: dict[str, Any] = {"dataset": name, "seed": seed, "mode": opts.mode, "users": int(len(users)),
                              "train_ratings": int(len(train.ratings)), "scored_ratings": int(len(scored.ratings)),
                              "models": dict(base)}
    rpath, ipath = write_csv(train, ds.items, opts.workdir / "csv" / f"{name}-{seed}-{opts.mode}")
    for label, extra in pipeline_variants(opts).items():
        tag = f"{name}-{seed}-{opts.mode}" + (f"-{label.replace(' ', '-')}" if label else "")
        res = run_pipeline(tag, rpath, ipath, ds, users, rel, seed, opts, extra)
        if "error" in res:
            result.setdefault("errors", {})[label or "pipeline"] = res["error"]
            continue
        if label:
            result["models"][f"ranked, {label}"] = res["ranked"]
            result[f"train_seconds, {label}"] = res["train_seconds"]
        else:
            result["models"]["two-tower"] = res["two-tower"]
            result["models"]["ranked"] = res["ranked"]
            result["train_seconds"] = res["train_seconds"]
    m = result["models"]
    if "ranked" in m and "ease" in m:
        result["ranked/ease"] = m["ranked"]["ndcg@10"] / m["ease"]["ndcg@10"]
    if opts.cold and DATASETS[name].cold:
        result["cold"] = run_cold(name, ds, seed, opts)
    result["seconds"] = time.perf_counter() - t0
    _progress(result)
    return result


def run_cold(name: str, ds: Dataset, seed: int, opts: Options) -> dict[str, Any]:
    """P3: rank among the cold movies only; the pipeline's full ranked order vs TF-IDF alone.

    In validation mode the cold split is taken from the P2 training side (its own cold movies)."""
    from content.similar import ContentSimilarity
    from content.tfidf import ContentModel
    from movierec.core.config import load_config

    base = ds if opts.mode == "test" else holdout_per_user(ds, 0.2, seed)[0]
    train, test, cold = cold_items(base, 0.2, seed)
    mask = np.zeros(ds.n_items, bool)
    mask[cold] = True
    relevant = test.to_csr().tocsr()
    has_train = np.diff(train.to_csr().indptr) > 0
    users = np.flatnonzero((np.diff(relevant.indptr) > 0) & has_train)
    rel = relevant[users]
    out: dict[str, Any] = {"users": int(len(users)), "cold_items": int(len(cold))}
    # TF-IDF content profiles alone, with the content settings the pipeline would use
    cfg = load_config(opts.config, [s for s in opts.sets if s.startswith("content.")])
    content = ContentSimilarity(ContentModel.fit(ds.items, cfg.content, seed=seed)).fit_users(train)
    scores = content.score_users(users)
    scores[:, ~mask] = -np.inf
    k = min(max(KS), len(cold))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out["tf-idf alone"] = list_metrics(order, rel, (10,))
    rpath, ipath = write_csv(train, ds.items, opts.workdir / "csv" / f"{name}-{seed}-{opts.mode}-cold")
    folder = opts.workdir / "runs" / f"{name}-{seed}-{opts.mode}-cold"
    model = folder / "model"
    try:
        out["train_seconds"] = train_pipeline(opts.movierec, rpath, ipath, model, seed, opts.config, opts.sets)
        for label, rank in (("ranked", True), ("two-tower", False)):
            frame = candidate_lists(opts.movierec, model, folder / f"{label}.parquet", ds.n_items, rank, chunk_size=64)
            # the whole catalogue in the pipeline's order, cut down to the cold movies and re-ranked
            frame = frame.sort_values(["user_id", "rank"], kind="stable")
            frame = frame[np.isin(ds.item_index(frame["item_id"].to_numpy()), cold)].copy()
            frame["rank"] = frame.groupby("user_id", sort=False).cumcount() + 1
            out[label] = list_metrics(lists_to_recs(frame, ds, users, k), rel, (10,))
            (folder / f"{label}.parquet").unlink(missing_ok=True)
        out["ranked/tf-idf"] = out["ranked"]["ndcg@10"] / max(out["tf-idf alone"]["ndcg@10"], 1e-12)
    except (RunFailed, subprocess.SubprocessError, OSError) as e:
        out["error"] = str(e)
        print(f"  FAILED cold {name} seed {seed}: {e}", flush=True)
    finally:
        if not opts.keep_bundles:
            _rmtree(model)
    return out


def run_cold_only(name: str, ds: Dataset, seed: int, opts: Options) -> dict[str, Any]:
    """P3 alone on one (data set, seed): what ``--cold-only`` runs."""
    t0 = time.perf_counter()
    result: dict[str, Any] = {"dataset": name, "seed": seed, "mode": opts.mode, "models": {}}
    if DATASETS[name].cold:
        result["cold"] = run_cold(name, ds, seed, opts)
        if "error" in result["cold"]:
            result["errors"] = {"cold": result["cold"]["error"]}
    result["seconds"] = time.perf_counter() - t0
    c = result.get("cold", {})
    ratio = f"{c['ranked/tf-idf']:.2f}" if "ranked/tf-idf" in c else "-"
    print(f"[{time.strftime('%H:%M:%S')}] {name} seed {seed} ({opts.mode}) cold: TF-IDF "
          f"{c.get('tf-idf alone', {}).get('ndcg@10', float('nan')):.4f} two-tower {c.get('two-tower', {}).get('ndcg@10', float('nan')):.4f} "
          f"ranked {c.get('ranked', {}).get('ndcg@10', float('nan')):.4f} -> ranked/TF-IDF {ratio}; run {result['seconds']:.0f}s", flush=True)
    return result


def _progress(r: dict[str, Any]) -> None:
    m = r["models"]

    def g(row: str) -> str:
        return f"{m[row]['ndcg@10']:.4f}" if row in m else "-"

    ratio = f"{r['ranked/ease']:.3f}" if "ranked/ease" in r else "-"
    ablations = "".join(f" {row[8:]} {g(row)}" for row in ABLATIONS if row in m)
    train_s = f"{r['train_seconds']:.0f}s" if "train_seconds" in r else "failed"
    cold = ""
    if "cold" in r and "ranked" in r["cold"]:
        cold = f" cold ranked/tf-idf {r['cold']['ranked/tf-idf']:.2f}"
    print(f"[{time.strftime('%H:%M:%S')}] {r['dataset']} seed {r['seed']} ({r['mode']}): NDCG@10 ranked {g('ranked')} "
          f"two-tower {g('two-tower')} EASE {g('ease')} RP3beta {g('rp3beta')}{ablations} -> ranked/EASE {ratio}; "
          f"train {train_s}, run {r['seconds']:.0f}s{cold}", flush=True)


# ---- the whole benchmark ---------------------------------------------------------------------------
def run(datasets: list[tuple[str, list[int]]], opts: Options, jobs: int = 1) -> dict[str, Any]:
    """Every (data set, seed) in ``datasets``; returns the results document."""
    opts.workdir.mkdir(parents=True, exist_ok=True)
    loaded: dict[str, Dataset] = {}
    for name, _ in datasets:
        if name not in loaded:
            loaded[name] = DATASETS[name].load(opts.workdir, opts.movierec)
    units = [(name, seed) for name, seeds in datasets for seed in seeds]
    results: list[dict[str, Any]] = []

    def one(unit: tuple[str, int]) -> dict[str, Any]:
        name, seed = unit
        if opts.cold_only:
            return run_cold_only(name, loaded[name], seed, opts)
        return run_one(name, loaded[name], seed, DATASETS[name].seeds[0], opts)

    if jobs <= 1:
        results = [one(u) for u in units]
    else:
        with cf.ThreadPoolExecutor(jobs) as pool:
            results = list(pool.map(one, units))
    return {"mode": opts.mode, "config": str(opts.config) if opts.config else None, "sets": opts.sets,
            "ablations": opts.ablations, "cold_only": opts.cold_only, "runs": results}


# ---- tables ------------------------------------------------------------------------------------------
ABLATIONS = tuple(f"ranked, no {group}" for group in ABLATED)
ROWS = ("popular", "ease", "rp3beta", "item-knn", "two-tower", "ranked", *ABLATIONS)


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def markdown(doc: dict[str, Any]) -> str:
    runs = doc["runs"]
    rows = [r for r in ROWS if any(r in x["models"] for x in runs)]
    names = list(dict.fromkeys(x["dataset"] for x in runs))
    lines: list[str] = []
    part = "validation part (carved from each training split)" if doc["mode"] == "validation" else "test part"
    for metric in METRICS if rows else ():
        lines += [f"Per seed, {LABELS[metric]} on the {part}:", "",
                  "| data | seed | " + " | ".join(rows) + " | ranked / EASE | train s |",
                  "|---|---:|" + "---:|" * len(rows) + "---:|---:|"]
        for x in runs:
            cells = [_fmt(x["models"].get(r, {}).get(metric)) for r in rows]
            ratio = x["models"].get("ranked", {}).get(metric), x["models"].get("ease", {}).get(metric)
            rr = ratio[0] / ratio[1] if None not in ratio and ratio[1] else None
            lines.append(f"| {x['dataset']} | {x['seed']} | " + " | ".join(cells)
                         + f" | {_fmt(rr, 3)} | {_fmt(x.get('train_seconds'), 0)} |")
        lines.append("")
    lines += [] if not rows else ["Mean ± sd over seeds:", "", "| data | model | seeds | NDCG@10 | Recall@10 | Recall@100 |",
              "|---|---|---:|---:|---:|---:|"]
    for n in names:
        xs = [x for x in runs if x["dataset"] == n]
        for r in rows:
            vals = [x["models"][r] for x in xs if r in x["models"]]
            if not vals:
                continue
            cells = []
            for metric in METRICS:
                v = np.array([m[metric] for m in vals], float)
                cells.append(f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}")
            lines.append(f"| {n} | {r} | {len(vals)} | " + " | ".join(cells) + " |")
        secs = [x["train_seconds"] for x in xs if "train_seconds" in x]
        if secs:
            lines.append(f"| {n} | train wall s | {len(secs)} | {np.mean(secs):.0f} ± {np.std(secs, ddof=1) if len(secs) > 1 else 0:.0f} | | |")
    lines += [] if not rows else ["", "Ratios per data set (min / mean / max over seeds):", "",
              "| data | ranked / EASE NDCG@10 | ranked / two-tower NDCG@10 | two-tower / EASE Recall@100 | seeds |",
              "|---|---|---|---|---:|"]
    all_ratio: list[float] = []
    for n in names:
        xs = [x["models"] for x in runs if x["dataset"] == n and "ranked" in x["models"] and "ease" in x["models"]]
        if not xs:
            continue
        a = np.array([m["ranked"]["ndcg@10"] / m["ease"]["ndcg@10"] for m in xs])
        b = np.array([m["ranked"]["ndcg@10"] / m["two-tower"]["ndcg@10"] for m in xs])
        c = np.array([m["two-tower"]["recall@100"] / m["ease"]["recall@100"] for m in xs])
        all_ratio += list(a)
        f = lambda v: f"{v.min():.3f} / {v.mean():.3f} / {v.max():.3f}"  # noqa: E731
        lines.append(f"| {n} | {f(a)} | {f(b)} | {f(c)} | {len(xs)} |")
    if all_ratio:
        v = np.array(all_ratio)
        lines.append(f"| all | {v.min():.3f} / {v.mean():.3f} / {v.max():.3f} | | | {len(v)} |")
    cold = [x for x in runs if "cold" in x and "ranked" in x["cold"]]
    if cold:
        lines += ["", "Cold items (P3: ranked among the cold movies only), NDCG@10:", "",
                  "| data | seed | TF-IDF alone | two-tower | ranked | ranked / TF-IDF |", "|---|---:|---:|---:|---:|---:|"]
        for x in cold:
            c = x["cold"]
            lines.append(f"| {x['dataset']} | {x['seed']} | {c['tf-idf alone']['ndcg@10']:.4f} | {c['two-tower']['ndcg@10']:.4f} "
                         f"| {c['ranked']['ndcg@10']:.4f} | {c['ranked/tf-idf']:.2f} |")
        for n in dict.fromkeys(x["dataset"] for x in cold):
            v = np.array([x["cold"]["ranked/tf-idf"] for x in cold if x["dataset"] == n])
            lines.append(f"| {n} | ranked / TF-IDF min / mean / max | | | | {v.min():.2f} / {v.mean():.2f} / {v.max():.2f} |")
    failed = [x for x in runs if x.get("errors")]
    if failed:
        lines += ["", "Failed runs: " + ", ".join(f"{x['dataset']} seed {x['seed']} ({', '.join(x['errors'])})" for x in failed)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--validation", action="store_true", help="score a validation split carved from each training split (default)")
    mode.add_argument("--test", action="store_true", help="score the test splits (once per configuration, after choosing on validation)")
    ap.add_argument("--datasets", default=None, help='e.g. "ml100k:1,2,3 latest:1 synth zero10" (default: all, default seeds)')
    ap.add_argument("--set", dest="sets", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                    help="passed to movierec train as --set (repeatable; lists as ranking.exclude=[content])")
    ap.add_argument("--config", type=Path, default=None, help="passed to movierec train")
    ap.add_argument("--ablations", action="store_true", help="also train with ranking.exclude=[GROUP], GROUP each of " + ", ".join(ABLATED))
    ap.add_argument("--cold", action="store_true", help="P3 cold items on ml100k, latest and synth (one more training each)")
    ap.add_argument("--cold-only", action="store_true", help="P3 alone: no baselines and no P2 pipeline")
    ap.add_argument("--jobs", type=int, default=1, help="(data set, seed) runs at once (default 1: one training at a time)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/movierec-robust"), help="CSV, bundles and the baseline cache")
    ap.add_argument("--out", type=Path, default=Path("robust_results.json"))
    ap.add_argument("--movierec", default=default_movierec(), help="the movierec executable (default: this venv's)")
    ap.add_argument("--keep-bundles", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    opts = Options(workdir=args.workdir.resolve(), mode="test" if args.test else "validation", movierec=args.movierec,
                   config=args.config.resolve() if args.config else None, sets=P2_SETS + args.sets, ablations=args.ablations,
                   cold=args.cold or args.cold_only, cold_only=args.cold_only, keep_bundles=args.keep_bundles)
    t = time.perf_counter()
    doc = run(parse_datasets(args.datasets), opts, jobs=args.jobs)
    doc["command"] = " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if argv is None else " ".join(argv)
    doc["git"] = _git_head()
    doc["seconds"] = time.perf_counter() - t
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=float))
    print()
    print(markdown(doc))
    return 0 if not any(x.get("errors") for x in doc["runs"]) else 1


def _git_head() -> str | None:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
