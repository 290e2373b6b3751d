"""``movierec compare``: the baselines and the hybrid fitted on one training set and scored on
one test file with one protocol.

Protocol: full ranking over the whole catalogue, the items each user rated in training
excluded; every test row whose user and item the training data knows counts as relevant (the
rest are counted and skipped). Recall@10, NDCG@10 and coverage@10 come from each model's top 10,
Recall@100 from its top 100 (:func:`movierec.core.metrics.topn_metrics`).

``movierec`` trains the whole pipeline (:func:`movierec.pipeline.train`) into a temporary
folder and ranks with the loaded bundle; ``two-tower`` is the same bundle's retrieval order
(``--no-rank``), so both report the one pipeline's fit time.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from movierec.core.config import Config
from movierec.core.data import Dataset, DataError
from movierec.evaluation import _to_index
from movierec.core.metrics import topn_metrics

log = logging.getLogger(__name__)

MODELS = ("popular", "ease", "itemknn", "rp3beta", "svd", "two-tower", "movierec")
"""Names ``compare`` accepts, in the default order."""
BASELINE_NAMES = {"popular": "popular", "ease": "ease", "itemknn": "item-knn", "rp3beta": "rp3beta", "svd": "svd"}
"""compare's name -> :func:`movierec.core.baselines.make_baseline` name."""
KEYS = ("recall@10", "ndcg@10", "recall@100", "coverage@10", "fit_s")
KMAX = 100

TopK = Callable[[np.ndarray, int], np.ndarray]
"""(n,) train user_idx, k -> (n, k) train item_idx, best first, -1 for empty slots."""


def parse_models(text: str | None) -> list[str]:
    """``"popular,ease"`` -> ``["popular", "ease"]``; every name checked, order kept, no repeats."""
    if text is None:
        return list(MODELS)
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("--models names no model")
    bad = [n for n in names if n not in MODELS]
    if bad:
        raise ValueError(f"unknown model {bad[0]!r}; choose from {', '.join(MODELS)}")
    return list(dict.fromkeys(names))


def relevant_matrix(train: Dataset, test: pd.DataFrame) -> tuple[sp.csr_matrix, int]:
    """(n_users, n_items) 0/1 matrix of the test rows, in ``train``'s index space, and the number
    of rows skipped because training never saw the user or the catalogue lacks the item."""
    users = _to_index(test["user_id"], pd.Index(train.user_ids))
    items = _to_index(test["item_id"], pd.Index(train.item_ids))
    known = (users >= 0) & (items >= 0)
    if not known.any():
        raise DataError("no test row names a user and a movie of the training data")
    rel = sp.csr_matrix(
        (np.ones(int(known.sum()), np.float32), (users[known], items[known])), shape=(train.n_users, train.n_items)
    )
    rel.sum_duplicates()
    rel.data[:] = 1.0
    return rel, int((~known).sum())


def protocol_line(train: Dataset, test: pd.DataFrame, config: Config, models: Sequence[str]) -> str | None:
    """A line on the test file's protocol (next movies or a random share, from its timestamps
    against each user's training ratings) and, when ``movierec`` is compared, whether its ranker
    trains for that protocol with ``config`` (:func:`movierec.core.splits.protocol_note`)."""
    from movierec.core.splits import last_rating_times, protocol_note, split_protocol

    if "timestamp" not in test.columns:
        return None
    users = _to_index(test["user_id"], pd.Index(train.user_ids))
    times = pd.to_numeric(test["timestamp"], errors="coerce").to_numpy(np.float64)
    trained_for = None
    if "movierec" in models and config.ranking.enabled:
        from ranking.lists import resolve_holdout

        trained_for = resolve_holdout(train, config.ranking.holdout)[0]
    return protocol_note(split_protocol(users, times, last_rating_times(train)), trained_for)


def score_lists(top: TopK, users: np.ndarray, relevant: sp.csr_matrix, n_items: int, batch: int = 1024) -> dict[str, float]:
    """The compare metrics of one model's top-100 lists."""
    recs = np.full((len(users), KMAX), -1, dtype=np.int64)
    for s in range(0, len(users), batch):
        ids = top(users[s : s + batch], KMAX)
        recs[s : s + len(ids), : ids.shape[1]] = ids
    rel = relevant[users]
    m10 = topn_metrics(recs, rel, 10, n_items=n_items)
    m100 = topn_metrics(recs, rel, KMAX)
    return {"recall@10": m10["recall@10"], "ndcg@10": m10["ndcg@10"], "recall@100": m100["recall@100"], "coverage@10": m10["coverage@10"]}


def _baseline_top(model: Any, seen: sp.csr_matrix) -> TopK:
    def top(users: np.ndarray, k: int) -> np.ndarray:
        return model.recommend(users, k, exclude=seen)[0]

    return top


def _bundle_top(model: Any, train: Dataset, rank: bool) -> TopK:
    """Top-k of a loaded bundle, translated between its id maps and the training data's."""
    bundle_user = _to_index(pd.Series(train.user_ids), pd.Index(model.user_ids))
    train_item = _to_index(pd.Series(model.items["item_id"].to_numpy()), pd.Index(train.item_ids))

    def top(users: np.ndarray, k: int) -> np.ndarray:
        ids, _ = model.recommend_batch(bundle_user[users], k, rank=rank)
        return np.where(ids >= 0, train_item[np.maximum(ids, 0)], -1)

    return top


def compare(
    train: Dataset,
    test: pd.DataFrame,
    models: Sequence[str] = MODELS,
    config: Config | None = None,
    show_progress: bool = True,
    workdir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Fit every model on ``train`` and score it on ``test`` (outside ids).

    Returns:
        One dict per model, in the order asked: ``model`` plus :data:`KEYS`.
    Raises:
        DataError: no test row the training data knows.
        ValueError: an unknown model name.
    """
    from tqdm.auto import tqdm

    from movierec.core.baselines import make_baseline

    models = parse_models(",".join(models))
    relevant, skipped = relevant_matrix(train, test)
    if skipped:
        log.warning("compare: %d test rows name users or movies the training data lacks; skipped", skipped)
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    seen = train.to_csr().tocsr()
    rows: dict[str, dict[str, Any]] = {}
    bar = tqdm(models, desc="compare", unit="model", disable=not show_progress, leave=False)
    with tempfile.TemporaryDirectory(prefix="movierec-compare-", dir=workdir) as tmp:
        bundle: Any = None
        bundle_fit = 0.0
        for name in bar:
            bar.set_postfix_str(name)
            if name in BASELINE_NAMES:
                t = time.perf_counter()
                model = make_baseline(BASELINE_NAMES[name]).fit(train)
                fit_s = time.perf_counter() - t
                top = _baseline_top(model, seen)
            else:
                if bundle is None:
                    bundle, bundle_fit = _train_bundle(train, Path(tmp) / "bundle", config)
                fit_s = bundle_fit
                top = _bundle_top(bundle, train, rank=name == "movierec")
            metrics = score_lists(top, users, relevant, train.n_items)
            rows[name] = {"model": name, **metrics, "fit_s": round(fit_s, 2)}
            log.debug("compare %s: %s", name, rows[name])
    return [rows[n] for n in models]


def _train_bundle(train: Dataset, path: Path, config: Config | None) -> tuple[Any, float]:
    from movierec.pipeline import train as train_pipeline
    from recommender import HybridRecommender

    cfg = (config or Config()).model_copy(deep=True)
    cfg.trainer.progress = False  # compare's own bar is the one progress display
    t = time.perf_counter()
    train_pipeline(train, path, cfg)
    fit_s = time.perf_counter() - t
    return HybridRecommender.load(path), fit_s


def format_table(rows: list[dict[str, Any]], test_users: int | None = None) -> str:
    """One fixed-width table: model, Recall@10, NDCG@10, Recall@100, coverage@10, fit seconds."""
    head = f"{'model':<12}{'Recall@10':>11}{'NDCG@10':>10}{'Recall@100':>12}{'Coverage@10':>13}{'fit s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<12}{r['recall@10']:>11.4f}{r['ndcg@10']:>10.4f}{r['recall@100']:>12.4f}"
            f"{r['coverage@10']:>13.4f}{r['fit_s']:>9.1f}"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """A PNG of grouped bars (Recall@10, NDCG@10, Recall@100, coverage@10) per model."""
    from matplotlib.figure import Figure

    metrics = ("recall@10", "ndcg@10", "recall@100", "coverage@10")
    fig = Figure(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.0), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(metrics)
    x = np.arange(len(rows))
    for j, m in enumerate(metrics):
        ax.bar(x + (j - (len(metrics) - 1) / 2) * width, [r[m] for r in rows], width, label=m)
    ax.set_xticks(x, [r["model"] for r in rows])
    ax.set_ylabel("score")
    ax.set_title("movierec compare: full ranking, training items excluded")
    ax.legend(ncols=len(metrics), fontsize="small", loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
