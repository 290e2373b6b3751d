"""P1 rating model: choose settings on u1's training side, then report u1..u5.

    python benchmarks/rating_quality.py --data ../shared/data/ml-100k --validate   # grid on validation
    python benchmarks/rating_quality.py --data ../shared/data/ml-100k --p1         # five official folds

``--validate`` fits on ``validation_split(u1.base, 0.2, seed=0)`` (the test file u1.test is never
read) and scores each setting of the grid by validation RMSE. ``--p1`` trains the rating model
(``ranking.rating.fit_rating_model``, config defaults plus ``--set`` overrides) on each official
fold and reports RMSE/MAE of the bias and MF baselines, of each component and of the blend.
Results go to ``benchmarks/out/rating_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from movierec.core.baselines import make_baseline  # noqa: E402
from movierec.core.config import RatingConfig  # noqa: E402
from movierec.core.data import Dataset  # noqa: E402
from movierec.core.loaders import load_dataset  # noqa: E402
from movierec.core.metrics import mae, rmse  # noqa: E402
from movierec.core.splits import ml100k_fold, validation_split  # noqa: E402
from ranking.rating import fit_rating_model  # noqa: E402

FOLDS = ("u1", "u2", "u3", "u4", "u5")


def _quiet() -> None:
    os.environ.setdefault("MOVIEREC_PROGRESS", "0")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def score(model: Any, test: Dataset) -> dict[str, float]:
    r = test.ratings
    pred = model.predict(r["user_idx"].to_numpy(), r["item_idx"].to_numpy())
    y = r["rating"].to_numpy()
    return {"rmse": rmse(y, pred), "mae": mae(y, pred)}


def components(model: Any, test: Dataset) -> dict[str, dict[str, float]]:
    """Each component alone on the test pairs (bias fallback for unknown pairs, clipped)."""
    r = test.ratings
    u, i, y = r["user_idx"].to_numpy(), r["item_idx"].to_numpy(), r["rating"].to_numpy()
    ku, ki = model._known(u, i)
    both = ku & ki
    fallback = model.predict(u, i)  # only its unknown rows are used below
    comp = model.component_predictions(u[both], i[both])
    out = {}
    for j, name in enumerate(model.components):
        pred = fallback.astype(np.float64).copy()
        pred[both] = np.clip(comp[:, j], model.rating_min, model.rating_max)
        out[name] = {"rmse": rmse(y, pred), "mae": mae(y, pred)}
    return out


def run_validate(ds: Dataset, data: Path, grid: list[dict[str, Any]], base: dict[str, Any]) -> list[dict[str, Any]]:
    train, _ = ml100k_fold(ds, data, "u1")
    fit, val = validation_split(train, 0.2, seed=0)
    out = []
    for change in grid:
        cfg = RatingConfig(**{**base, **change})
        t = time.perf_counter()
        res = fit_rating_model(fit, cfg, seed=42)
        secs = time.perf_counter() - t
        row = {"change": change, "blend": score(res.model, val), "components": components(res.model, val),
               "weights": res.metrics.get("weights"), "inner_val_rmse": res.metrics.get("val_rmse"), "seconds": secs,
               "epochs": {k: v.get("epochs") for k, v in res.metrics.get("train", {}).items()}}
        out.append(row)
        comp = " ".join(f"{k} {v['rmse']:.4f}" for k, v in row["components"].items())
        print(f"  {change}: blend {row['blend']['rmse']:.4f} | {comp} | epochs {row['epochs']} | {secs:.0f}s", flush=True)
    return out


def run_p1(ds: Dataset, data: Path, cfg: RatingConfig) -> dict[str, Any]:
    rows: dict[str, list[dict[str, float]]] = {}
    secs: dict[str, list[float]] = {}
    for fold in FOLDS:
        train, test = ml100k_fold(ds, data, fold)
        for name in ("bias", "mf"):
            t = time.perf_counter()
            m = make_baseline(name).fit(train)
            secs.setdefault(name, []).append(time.perf_counter() - t)
            rows.setdefault(name, []).append(score(m, test))
        t = time.perf_counter()
        res = fit_rating_model(train, cfg, seed=42)
        secs.setdefault("rating model (blend)", []).append(time.perf_counter() - t)
        for cname, s in components(res.model, test).items():
            rows.setdefault(f"rating model: {cname} alone", []).append(s)
        rows.setdefault("rating model (blend)", []).append(score(res.model, test))
        print(f"  {fold}: " + " ".join(f"{k} {v[-1]['rmse']:.4f}" for k, v in rows.items())
              + f" | fit {secs['rating model (blend)'][-1]:.0f}s, inner val blend {res.metrics['val_rmse']['blend']:.4f}", flush=True)
    out: dict[str, Any] = {}
    print("\n| model | " + " | ".join(FOLDS) + " | mean RMSE | mean MAE | fit s/fold (median) |")
    print("|---|" + "---:|" * (len(FOLDS) + 3))
    for name, folds in rows.items():
        rm = [f["rmse"] for f in folds]
        ma = [f["mae"] for f in folds]
        out[name] = {"rmse": float(np.mean(rm)), "mae": float(np.mean(ma)), "folds_rmse": rm, "folds_mae": ma,
                     "fit_seconds": float(np.median(secs[name])) if name in secs else None}
        fs = f"{out[name]['fit_seconds']:.1f}" if name in secs else "(same fit)"
        cells = " | ".join(f"{a:.4f} / {b:.4f}" for a, b in zip(rm, ma))
        print(f"| {name} | {cells} | {np.mean(rm):.4f} | {np.mean(ma):.4f} | {fs} |")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ml-100k")
    p.add_argument("--validate", action="store_true")
    p.add_argument("--grid", type=str, default=None, help="JSON list of RatingConfig changes for --validate")
    p.add_argument("--p1", action="store_true")
    p.add_argument("--set", nargs="*", default=[], help="RatingConfig overrides key=value (JSON values)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "rating_quality.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    _quiet()
    torch.set_num_threads(1)
    base = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    ds = load_dataset(args.data)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.validate:
        grid = json.loads(args.grid) if args.grid else [{}]
        results.setdefault("validate", []).extend(run_validate(ds, args.data, grid, base))
    if args.p1:
        cfg = RatingConfig(**base)
        results["P1"] = {"config": cfg.model_dump(), **run_p1(ds, args.data, cfg)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
