"""Peers on the service's protocol: RecTools' SASRec and implicit's iALS on the temporal validation splits.

The project does not depend on RecTools or implicit: this script runs in a benchmark-only
environment of its own, built with these commands (torch first, so that the CPU wheel is taken and
nothing pulls a CUDA build; ``rectools[torch]`` then keeps that torch and brings pytorch-lightning
2.5.2, and on Python >= 3.10 its ``pm-implicit`` 0.7.3, a wheel build of implicit 0.7.3 that
provides the ``implicit`` module, so ``implicit`` is not installed a second time over it)::

    python3 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install torch==2.13.0
    /tmp/peers-venv/bin/pip install "rectools[torch]==0.19.0"

and is run from the repository root, one thread for torch and BLAS::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 5 \\
        /tmp/peers-venv/bin/python benchmarks/peers_temporal.py --data ml100k latest \\
        --reference LOG_OF_VALIDATION_QUICK

The splits are those of ``benchmarks/validation_quick.py --protocol temporal`` (P5), made by the
project's own modules (they need numpy, pandas and scipy only): ``train = temporal_per_user(ds,
fraction=0.2)[0]`` (its test part is never read), ``fit, val = temporal_per_user(train,
fraction=0.2)``. Every model ranks the whole catalogue for each user with a validation rating,
items rated in ``fit`` excluded, scored by NDCG@10 and Recall@100 on ``val``. Each peer is tuned on
a carve-out of ``fit`` made the same way (``temporal_per_user(fit, fraction=0.2)``) over a small
grid by NDCG@10, then trained on the whole of ``fit`` with the best setting and scored on ``val``.
SASRec trains in chunks of ``--sasrec-step`` epochs (``fit_partial``) and is scored after each
chunk, so the number of epochs is tuned too; the final model is trained with the same chunks.
EASE is computed here as in validation_quick (its best lambda of {100, 300, 500, 1000} chosen on
``val`` itself, a bar that favours EASE); the ratio column is NDCG@10 over that EASE's. The
movierec rows are read from the JSON lines of ``validation_quick.py --protocol temporal`` given by
``--reference`` (ranked NDCG@10; its Recall@100 is the retrieval stage's top 100, from
``tt_recall100_ratio`` times EASE's Recall@100 at the same lambda; fit seconds its training wall).

``--test`` scores the test part once, with every choice made on validation, one level up: the
peers are tuned on ``fit`` / ``val`` (the split above), then trained on the whole of ``train`` with
the chosen setting (and SASRec's chosen epochs) and scored on ``test``; EASE's lambda is chosen on
``val`` and fitted on ``train``, as ``validation_quick.py --test`` does, whose log is then the
``--reference``. ``--sasrec-settings`` replaces SASRec's product grid with a list of settings tried
in that order, ``--sasrec-patience`` stops a setting's chunks after that many chunks without a
better score, and ``--sasrec-budget`` tries no new setting once tuning has taken that many seconds
(the settings left untried are logged).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from movierec.core.data import Dataset  # noqa: E402

from movierec.core.loaders import load_dataset  # noqa: E402
from movierec.core.ease import ease_weights  # noqa: E402
from movierec.core.metrics import topn_metrics  # noqa: E402
from movierec.core.sources import rank_scores  # noqa: E402
from movierec.core.splits import temporal_per_user  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
PATHS = {"ml100k": DATA / "ml-100k", "latest": DATA / "ml-latest-small"}
LAMBDAS = (100, 300, 500, 1000)
IALS_GRID = {"factors": (64, 128), "regularization": (1.0, 10.0, 30.0, 100.0), "alpha": (0.5, 1.0, 4.0), "iterations": (15, 30)}


def splits(ds: Dataset, test: bool = False) -> tuple[Dataset, Dataset, Dataset, Dataset]:
    """(fit, val, tune_fit, tune_val): validation_quick's temporal split and the peers' carve-out;
    with ``test``, (train, test, fit, val): the scored split is the test part and the peers are
    tuned on validation_quick's validation split."""
    train, test_part = temporal_per_user(ds, fraction=0.2)  # the test part is read only with test=True
    fit, val = temporal_per_user(train, fraction=0.2)
    if test:
        return train, test_part, fit, val
    tune_fit, tune_val = temporal_per_user(fit, fraction=0.2)
    return fit, val, tune_fit, tune_val


def scored_users(val: Dataset) -> tuple[np.ndarray, sp.csr_matrix]:
    """(users with a validation rating, the user x item validation matrix)."""
    rel = val.to_csr().tocsr()
    return np.flatnonzero(np.diff(rel.indptr) > 0), rel


def frame_to_ids(recs: pd.DataFrame, users: np.ndarray, k: int) -> np.ndarray:
    """(len(users), k) item_idx from a RecTools recommendation frame (user_id, item_id, rank
    from 1), row i for ``users[i]``; -1 where a user got fewer than k (or none)."""
    out = np.full((len(users), k), -1, dtype=np.int64)
    row = pd.Series(np.arange(len(users)), index=users)
    recs = recs[recs["rank"] <= k]
    r = row.reindex(recs["user_id"].to_numpy()).to_numpy()
    ok = ~np.isnan(r)
    out[r[ok].astype(np.int64), recs["rank"].to_numpy()[ok].astype(np.int64) - 1] = recs["item_id"].to_numpy()[ok]
    return out


def score(ids: np.ndarray, rel: sp.csr_matrix, users: np.ndarray) -> dict[str, float]:
    return {
        "ndcg@10": topn_metrics(ids[:, :10], rel[users], 10)["ndcg@10"],
        "recall@100": topn_metrics(ids, rel[users], 100)["recall@100"],
    }


# ---- EASE, as validation_quick scores it -------------------------------------------------------
def _ease(fit: Dataset, val: Dataset, lambdas: tuple[int, ...]) -> dict:
    """EASE with the best of ``lambdas`` by NDCG@10 on ``val``."""
    users, rel = scored_users(val)
    x = fit.to_csr().tocsr()
    best = None
    for lam in lambdas:
        t = time.perf_counter()
        w = ease_weights(x, lam)
        seconds = time.perf_counter() - t
        ids, _ = rank_scores(np.asarray(x[users] @ w), 100, users, exclude=x)
        m = score(ids, rel, users)
        if best is None or m["ndcg@10"] > best["ndcg@10"]:
            best = dict(m, setting=f"lambda={lam}", lam=lam, fit_seconds=seconds)
    return best


def run_ease(fit: Dataset, val: Dataset, tune: tuple[Dataset, Dataset] | None = None) -> dict:
    """EASE scored on ``val``: its lambda chosen on ``val`` itself (validation_quick's bar, which
    favours EASE), or on the ``tune`` pair when given (the test mode: nothing chosen on test)."""
    if tune is None:
        return _ease(fit, val, LAMBDAS)
    return _ease(fit, val, (_ease(*tune, LAMBDAS)["lam"],))


# ---- implicit's iALS ----------------------------------------------------------------------------
def ials_topk(fit: Dataset, users: np.ndarray, params: dict, seed: int) -> tuple[np.ndarray, float]:
    from implicit.cpu.als import AlternatingLeastSquares

    x = fit.to_csr().tocsr().astype(np.float32)
    model = AlternatingLeastSquares(**params, random_state=seed, num_threads=1, calculate_training_loss=False)
    t = time.perf_counter()
    model.fit(x, show_progress=False)
    seconds = time.perf_counter() - t
    ids, _ = model.recommend(users, x[users], N=100, filter_already_liked_items=True)
    return np.where(ids < 0, -1, ids).astype(np.int64), seconds


def run_ials(fit, val, tune_fit, tune_val, seed: int, log) -> dict:
    t_users, t_rel = scored_users(tune_val)
    best = None
    keys = list(IALS_GRID)
    for values in itertools.product(*IALS_GRID.values()):
        params = dict(zip(keys, values))
        ids, seconds = ials_topk(tune_fit, t_users, params, seed)
        m = score(ids, t_rel, t_users)
        log(dict(model="ials", tune=params, **m, fit_seconds=round(seconds, 1)))
        if best is None or m["ndcg@10"] > best[1]:
            best = (params, m["ndcg@10"])
    users, rel = scored_users(val)
    ids, seconds = ials_topk(fit, users, best[0], seed)
    return dict(score(ids, rel, users), setting=_setting(best[0]), tune_ndcg=best[1], fit_seconds=seconds)


# ---- RecTools' SASRec ---------------------------------------------------------------------------
def _rectools_dataset(fit: Dataset):
    """The fit ratings as RecTools interactions, in the project's row order: RecTools orders each
    user's sequence by a stable sort on the time, so ties fall as temporal_per_user breaks them."""
    from rectools.dataset import Dataset as RTDataset

    r = fit.ratings
    frame = pd.DataFrame({
        "user_id": r["user_idx"].to_numpy(), "item_id": r["item_idx"].to_numpy(), "weight": 1.0,
        "datetime": pd.to_datetime(r["timestamp"].to_numpy(np.int64), unit="s"),
    })
    return RTDataset.construct(frame)


def sasrec_chunks(fit: Dataset, users: np.ndarray, params: dict, step: int, n_chunks: int, seed: int):
    """Yield (epochs so far, (len(users), 100) top ids, training seconds so far) after each chunk."""
    import pytorch_lightning as pl
    from rectools.models import SASRecModel
    from rectools.models.nn.item_net import IdEmbeddingsItemNet

    pl.seed_everything(seed, verbose=False)
    data = _rectools_dataset(fit)
    model = SASRecModel(
        **params, item_net_block_types=(IdEmbeddingsItemNet,), loss="softmax", epochs=step, verbose=0,
        recommend_torch_device="cpu", recommend_n_threads=1,
    )
    seconds = 0.0
    for chunk in range(1, n_chunks + 1):
        t = time.perf_counter()
        model.fit_partial(data, min_epochs=step, max_epochs=step)
        seconds += time.perf_counter() - t
        recs = model.recommend(users=users, dataset=data, k=100, filter_viewed=True, on_unsupported_targets="warn")
        yield chunk * step, frame_to_ids(recs, users, 100), seconds


def run_sasrec(
    fit, val, tune_fit, tune_val, settings: list[dict], seed: int, step: int, n_chunks: int, log,
    patience: int | None = None, budget: float | None = None,
) -> dict:
    """Tune over ``settings`` (in order) and the epochs in chunks, then train the best on ``fit``
    and score it on ``val``. A setting's chunks stop after ``patience`` chunks without a better
    score of that setting; no new setting after the first starts once tuning has taken ``budget``
    seconds."""
    t_users, t_rel = scored_users(tune_val)
    best = None
    start = time.perf_counter()
    for i, params in enumerate(settings):
        if i and budget is not None and time.perf_counter() - start > budget:
            log(dict(model="sasrec", skipped_for_budget=settings[i:]))
            break
        own, stale = -1.0, 0
        for epochs, ids, seconds in sasrec_chunks(tune_fit, t_users, params, step, n_chunks, seed):
            m = score(ids, t_rel, t_users)
            log(dict(model="sasrec", tune=params, epochs=epochs, **m, fit_seconds=round(seconds, 1)))
            if best is None or m["ndcg@10"] > best[2]:
                best = (params, epochs, m["ndcg@10"])
            own, stale = (m["ndcg@10"], 0) if m["ndcg@10"] > own else (own, stale + 1)
            if patience is not None and stale >= patience:
                break
    params, epochs, tune_ndcg = best
    users, rel = scored_users(val)
    *_, (_, ids, seconds) = sasrec_chunks(fit, users, params, step, epochs // step, seed)
    return dict(score(ids, rel, users), setting=_setting({**params, "epochs": epochs}), tune_ndcg=tune_ndcg, fit_seconds=seconds)


def _setting(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def sasrec_settings(factors: list[int], max_lens: list[int], dropouts: list[float], listed: list[str] | None) -> list[dict]:
    """SASRec settings to try, in order: ``listed`` (``FACTORS:MAX_LEN:DROPOUT`` each) or else the
    product of the three lists."""
    keys = ("n_factors", "session_max_len", "dropout_rate")
    if listed:
        return [dict(zip(keys, (int(f), int(m), float(d)))) for f, m, d in (x.split(":") for x in listed)]
    return [dict(zip(keys, v)) for v in itertools.product(factors, max_lens, dropouts)]


def reference_rows(path: Path | None, name: str, ease: dict) -> list[dict]:
    """The movierec row of ``name`` from validation_quick's JSON lines, if the log has one."""
    if path is None:
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and str(r.get("data", "")).split(":")[0] == name and "ranked" in r:
            if abs(r["ease"] - ease["ndcg@10"]) > 5e-4:
                raise SystemExit(f"{path}: EASE NDCG@10 {r['ease']} for {name} differs from this split's "
                                 f"{ease['ndcg@10']:.4f}: not the same split")
            rows.append(dict(model=f"movierec (seed {r['data'].split(':')[1]})", **{"ndcg@10": r["ranked"]},
                             **{"recall@100": r["tt_recall100_ratio"] * ease["recall@100"]},
                             fit_seconds=r["wall"], setting="defaults (ranking.holdout=auto)"))
    return rows


def table(rows: list[dict]) -> str:
    out = ["| data set | model | NDCG@10 | Recall@100 | NDCG@10 / EASE | fit seconds | setting |",
           "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r['data']} | {r['model']} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | "
                   f"{r['ratio']:.3f}x | {r['fit_seconds']:.1f} | {r['setting']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=["ml100k", "latest"], choices=list(PATHS))
    p.add_argument("--models", nargs="+", default=["ials", "sasrec"], choices=["ials", "sasrec"])
    p.add_argument("--seed", type=int, default=1, help="seeds the peers' training")
    p.add_argument("--sasrec-step", type=int, default=10, help="SASRec epochs per chunk")
    p.add_argument("--sasrec-chunks", type=int, default=3, help="SASRec chunks tried per setting")
    p.add_argument("--sasrec-factors", type=int, nargs="+", default=[64])
    p.add_argument("--sasrec-max-len", type=int, nargs="+", default=[50, 100])
    p.add_argument("--sasrec-dropout", type=float, nargs="+", default=[0.2])
    p.add_argument("--sasrec-settings", nargs="+", metavar="FACTORS:MAX_LEN:DROPOUT",
                   help="SASRec settings tried in this order, instead of the product of the three lists above")
    p.add_argument("--sasrec-patience", type=int, help="stop a setting after this many chunks without a better score")
    p.add_argument("--sasrec-budget", type=float, help="seconds of SASRec tuning after which no new setting starts")
    p.add_argument("--test", action="store_true",
                   help="tune on validation_quick's validation split, train on the whole training part, score the test part once")
    p.add_argument("--reference", type=Path,
                   help="JSON lines of validation_quick.py --protocol temporal (with --test: of validation_quick.py --test)")
    p.add_argument("--log", type=Path, help="append every tuning step here as a JSON line")
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    for n in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning.fabric", "rectools"):
        logging.getLogger(n).setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(1)

    def log(row: dict) -> None:
        line = json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
        print(line, file=sys.stderr, flush=True)
        if a.log:
            with a.log.open("a") as f:
                f.write(line + "\n")

    settings = sasrec_settings(a.sasrec_factors, a.sasrec_max_len, a.sasrec_dropout, a.sasrec_settings)
    rows = []
    for name in a.data:
        fit, val, tune_fit, tune_val = splits(load_dataset(PATHS[name]), test=a.test)
        ease = run_ease(fit, val, (tune_fit, tune_val) if a.test else None)
        found = [dict(model="EASE", **ease), *reference_rows(a.reference, name, ease)]
        if "ials" in a.models:
            found.append(dict(model="iALS (implicit 0.7.3)", **run_ials(fit, val, tune_fit, tune_val, a.seed, lambda r: log(dict(data=name, **r)))))
        if "sasrec" in a.models:
            found.append(dict(model="SASRec (RecTools 0.19.0)", **run_sasrec(
                fit, val, tune_fit, tune_val, settings, a.seed, a.sasrec_step, a.sasrec_chunks, lambda r: log(dict(data=name, **r)),
                a.sasrec_patience, a.sasrec_budget)))
        for r in found:
            r.update(data=name, split="test" if a.test else "validation", ratio=r["ndcg@10"] / ease["ndcg@10"])
            log(dict(result=True, **r))
        rows += found
    print(table(rows))


if __name__ == "__main__":
    main()
