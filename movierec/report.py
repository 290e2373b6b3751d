"""A self-contained HTML report on one trained bundle: data, training, quality, movie map, samples.

People judge a recommender by looking at it, so this module turns a bundle into one HTML file a
person can open anywhere (every image inline as base64 PNG, no scripts, no external files):

1. **The data**: the rating histogram, ratings per user and per movie on log axes (the long
   tail), and the sparsity of the user x movie matrix.
2. **Training**: the curves from the Lightning CSV logs each stage writes into ``logs/``.
3. **Quality**: a quality table against baselines (from the demo or ``movierec evaluate --json``)
   as a bar chart, when one is given.
4. **The map of movies**: PCA of the two-tower item vectors coloured by main genre, k-means
   clusters of the same vectors and each cluster's most typical titles.
5. **Sample recommendations** for a few users with a reason for each ("because you rated X").

It reads the bundle's plain arrays directly (fast, no model code) and loads the runtime model
lazily only for the sample recommendations, as :mod:`movierec.pipeline` imports the stages.
Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never through
``pyplot``, so rendering needs no display, keeps no global state and is safe inside a server.

This module holds the entry points, the quality and sample sections; the page and figure helpers
are in :mod:`movierec.report_page`, the data and training sections in :mod:`movierec.report_data`
and the map in :mod:`movierec.report_map`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from movierec.core.artifacts import Bundle, atomic_write_bytes, load_bundle
from movierec.core.data import to_plain
from movierec.core.popularity import most_popular
from movierec.report_data import _section_data, _section_summary, _section_training
from movierec.report_map import _section_map
from movierec.report_page import _MAX_WIDTH, _TAB10, _esc, _figure, _page, _png, _Section, _table

log = logging.getLogger(__name__)

QualityTable = dict[str, dict[str, float]]

# the P2 protocol's metrics first (DESIGN.md), then whatever else a table carries
_METRIC_ORDER = ("recall@10", "ndcg@10", "recall@50", "coverage@10")
_MAX_CHART_METRICS = 4
_N_SAMPLE_USERS = 3
_N_SAMPLE_RECS = 5


class ReportError(ValueError):
    """Input the report cannot use (an unreadable quality table); reported as one line."""


# ---- public API -------------------------------------------------------------------------------------


def write_report(
    model_dir: str | Path, out_html: str | Path, quality: dict[str, Any] | None = None, note: str | None = None
) -> Path:
    """Render the HTML report for a bundle and write it atomically (temp file + rename).

    Args:
        model_dir: bundle directory written by :func:`movierec.pipeline.train`.
        out_html: the HTML file to write; its folder is created when missing.
        quality: optional quality table against baselines, either ``{model: {metric: value}}``
            (what ``movierec demo`` computes) or the JSON of ``movierec evaluate --json``. Without
            it the quality section says that no evaluation was given.
        note: a line for the quality section (the test split's protocol, :func:`quality_from_test`).

    Returns:
        The path of the written report.

    Raises:
        movierec.core.artifacts.BundleError: ``model_dir`` is not a valid bundle.
        ReportError: ``quality`` has a shape this module does not understand.
    """
    t0 = time.perf_counter()
    bundle = load_bundle(model_dir)
    table = normalize_quality(quality) if quality is not None else None
    sections = [
        _section_summary(bundle),
        _section_data(bundle),
        _section_training(bundle),
        _section_quality(table, note),
        _section_map(bundle),
        _section_samples(bundle),
    ]
    page = _page(bundle, sections)
    out = Path(out_html)
    atomic_write_bytes(out, page.encode("utf-8"))
    log.info("report for %s written to %s in %.1fs", bundle.path, out, time.perf_counter() - t0)
    return out


def normalize_quality(obj: Any) -> QualityTable:
    """Bring a quality table into the ``{model: {metric@k: value}}`` shape.

    Accepts the demo's table (``{model: {metric: value}}``; non-metric entries such as ``users``
    are dropped) and the output of ``movierec evaluate --json`` (``{"k", "metrics", "ranked", ...}``),
    which becomes one row named after the evaluated model.

    Raises:
        ReportError: anything else, naming what was found.
    """
    if not isinstance(obj, dict) or not obj:
        raise ReportError(f"quality table must be a non-empty JSON object, got {type(obj).__name__}")
    if isinstance(obj.get("metrics"), dict) and "k" in obj:  # movierec evaluate --json
        k = obj["k"]
        name = "movierec (ranked)" if obj.get("ranked", True) else "movierec (retrieval order)"
        rows = {name: {(m if "@" in m else f"{m}@{k}"): v for m, v in obj["metrics"].items()}}
    else:
        rows = obj
    table: QualityTable = {}
    for name, metrics in rows.items():
        if not isinstance(metrics, dict):
            raise ReportError(f"quality table: row {name!r} is not an object of metric values")
        clean = {
            str(m): float(v)
            for m, v in metrics.items()
            if "@" in str(m) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        }
        if clean:
            table[str(name)] = clean
    if not table:
        raise ReportError("quality table has no metric@k values (expected e.g. {'ease': {'recall@10': 0.2}})")
    return table


def read_quality(path: str | Path) -> QualityTable:
    """Read a quality table JSON file (see :func:`normalize_quality` for the shapes accepted)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: no such quality file") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: not valid JSON ({e})") from None
    try:
        return normalize_quality(obj)
    except ReportError as e:
        raise ReportError(f"{path}: {e}") from None


def quality_from_test(model_dir: str | Path, test_csv: str | Path, k: int = 10) -> tuple[QualityTable, str | None]:
    """A small quality table computed on a held-out test file, for when no table was given, and
    a line on the test split's protocol (:func:`movierec.core.splits.protocol_note`; None when the
    file or the bundle cannot tell).

    Compares the ranked model, the two-tower retrieval order alone and a most-popular baseline
    (built from the bundle's own item counts, so no training data is needed) with
    :func:`movierec.evaluation.evaluate_model`: full ranking, items rated in training excluded.
    """
    from movierec.core.splits import protocol_note

    from movierec.evaluation import evaluate_model, read_test_file
    from recommender import HybridRecommender

    model = HybridRecommender.load(model_dir)
    frame = read_test_file(test_csv)
    rows: QualityTable = {}
    note = None
    for name, source, rank in (
        ("most popular", _MostPopular(model), False),
        ("two-tower (retrieval order)", model, False),
        ("movierec (ranked)", model, True),
    ):
        if rank and model.ranker is None:
            continue
        result = evaluate_model(source, frame, k=k, rank=rank)
        rows[name] = {f"{m}@{k}": float(v) for m, v in result["metrics"].items()}
        if rank:
            note = protocol_note(result["protocol"]["test"], result["protocol"]["trained_for"])
    return rows, note


class _MostPopular:
    """Most-rated movies first, each user's rated movies excluded: a
    :class:`movierec.evaluation.RankedModel` without a ranker or a rating model."""

    ranker = None
    rating_model = None

    def __init__(self, model: Any) -> None:
        self.user_ids = model.user_ids
        self.items = model.items
        self.n_items = model.n_items
        self._histories = model.histories
        self._counts = model.item_counts

    def recommend_batch(self, users: np.ndarray, k: int, rank: bool = False) -> tuple[np.ndarray, np.ndarray]:
        out = np.full((len(users), k), -1, dtype=np.int64)
        for row, u in enumerate(np.asarray(users)):
            picked, _ = most_popular(self._counts, self.n_items, k, self._histories.of(int(u)))
            out[row, : len(picked)] = picked
        return out, np.where(out >= 0, 1.0, -np.inf).astype(np.float32)


# ---- quality ------------------------------------------------------------------------------------------------


def _chart_metrics(table: QualityTable) -> list[str]:
    shared = set.intersection(*(set(m) for m in table.values()))
    ordered = [m for m in _METRIC_ORDER if m in shared]
    ordered += sorted(m for m in shared if m not in ordered)
    return ordered[:_MAX_CHART_METRICS]


def _section_quality(table: QualityTable | None, note: str | None = None) -> _Section:
    s = _Section("quality", "Quality against baselines")
    if note is not None:
        s.note(_esc(note[0].upper() + note[1:] + "."))
    if table is None:
        s.note(
            "No evaluation was given, so there is no quality comparison. Pass a table with "
            "<code>movierec report --quality FILE.json</code> (from <code>movierec evaluate --json</code> "
            "or the demo) or a held-out test file with <code>--test CSV</code>."
        )
        return s
    s.p(
        "Top-N quality on held-out ratings: every movie a user rated in the test part counts as relevant, "
        "movies rated in training are excluded from their ranking, and the whole catalogue is ranked."
    )
    metrics = _chart_metrics(table)
    if metrics:
        s.figure(_fig_quality(table, metrics), "quality bar chart", "Higher is better in every panel; the best model per metric is outlined.")
    else:
        s.note("The rows of the quality table share no metric, so there is no chart; the table follows.")
    all_metrics = [m for m in _METRIC_ORDER if any(m in r for r in table.values())]
    all_metrics += sorted({m for r in table.values() for m in r} - set(all_metrics))
    names = list(table)
    bold = set()
    for j, m in enumerate(all_metrics, start=1):
        vals = [table[n].get(m, -np.inf) for n in names]
        if len(names) > 1:
            bold.add((int(np.argmax(vals)), j))
    rows = [[_esc(n)] + [f"{table[n][m]:.4f}" if m in table[n] else "–" for m in all_metrics] for n in names]
    s.body.append(_table(["model"] + all_metrics, rows, numeric=set(range(1, len(all_metrics) + 1)), bold=bold))
    return s


def _fig_quality(table: QualityTable, metrics: list[str]) -> bytes:
    names = list(table)
    colours = {n: _TAB10[i % len(_TAB10)] for i, n in enumerate(names)}
    fig = _figure(min(2.4 * len(metrics) + 2.5, _MAX_WIDTH), 0.45 * len(names) + 1.6)
    axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True))
    y = np.arange(len(names))[::-1]  # first model on top
    for ax, m in zip(axes, metrics):
        vals = np.array([table[n][m] for n in names])
        best = int(np.argmax(vals))
        bars = ax.barh(y, vals, color=[colours[n] for n in names], height=0.7,
                       edgecolor=["black" if i == best else "none" for i in range(len(names))], linewidth=1.4)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in vals], fontsize=8, padding=3)
        ax.set_xlim(0, max(float(vals.max()), 1e-9) * 1.3)
        ax.set_title(m, fontsize=11)
        ax.set_xlabel("score")
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(True, axis="x", alpha=0.25)
        ax.set_axisbelow(True)
    axes[0].set_yticks(y, names)
    fig.suptitle("Quality against baselines (higher is better)", fontsize=12, fontweight="bold")
    return _png(fig)


# ---- sample recommendations ------------------------------------------------------------------------------------


def _sample_users(lengths: np.ndarray, n: int) -> np.ndarray:
    """Users at evenly spaced quantiles of activity (light to heavy raters), deterministically."""
    active = np.flatnonzero(lengths > 0)
    if not len(active):
        return active
    by_len = active[np.argsort(lengths[active], kind="stable")]
    picks = np.unique(np.round(np.linspace(0.25, 0.9, n) * (len(by_len) - 1)).astype(int))
    return by_len[picks]


def _section_samples(bundle: Bundle, model_loader: Callable[[Path], Any] | None = None) -> _Section:
    s = _Section("samples", "Sample recommendations")
    try:
        if model_loader is None:
            from recommender import HybridRecommender

            model_loader = HybridRecommender.load
        model = model_loader(bundle.path)
    except Exception as e:  # a report on a half-working bundle still shows everything else
        log.warning("report: cannot load the model for sample recommendations: %s", e)
        s.note(f"The model could not be loaded for sample recommendations ({_esc(e)}).")
        return s
    from recommender.explain import explain

    hist = model.histories
    users = _sample_users(np.diff(hist.indptr), _N_SAMPLE_USERS)
    if not len(users):
        s.note("No user has ratings in training, so there is nobody to recommend for.")
        return s
    s.p(
        f"For {len(users)} users from light to heavy raters: what they rated most recently and the top "
        f"{_N_SAMPLE_RECS} recommendations{' after the ranker' if model.ranker is not None else ''}, movies they "
        "rated excluded. The reason is the movie they rated that is most like the recommended one "
        "(the explanations the service gives: two-tower taste and content together)."
    )
    ratings = bundle.array("hist_ratings.npy") if bundle.has("hist_ratings.npy") else np.ones(len(hist.items))
    items = model.items
    titles = items["title"].astype(str).to_numpy()

    def label(i: int) -> str:
        year = items["year"].iloc[i]
        return _esc(titles[i]) + (f" ({int(year)})" if pd.notna(year) and f"({int(year)})" not in titles[i] else "")

    for u in users:
        user_id = model.user_ids[u]
        h = hist.of(int(u))
        r = ratings[hist.indptr[u] : hist.indptr[u + 1]].astype(np.float64)
        recs = model.recommend_user(user_id, _N_SAMPLE_RECS)
        s.body.append(f"<h3>User {_esc(to_plain(user_id))} <span class=\"why\">({len(h):,} ratings, average {r.mean():.2f})</span></h3>")
        recent = ", ".join(f"{label(i)} <span class=\"why\">{v:g}</span>" for i, v in zip(h[::-1][:5], r[::-1][:5]))
        s.p(f"Recently rated: {recent}")
        if not len(recs.item_idx):
            s.note("No recommendation came back for this user.")
            continue
        why = [model.item_idx(b[0]["item_id"]) for b in explain(model, h, r, recs.item_idx, top=1)]
        rating_of = dict(zip(h.tolist(), r.tolist()))
        rows = [
            [
                str(rank),
                f"{label(i)}<br><span class=\"why\">{_esc(', '.join(items['genres'].iloc[i]) or 'no genre')}</span>",
                f"{score:.3f}",
                f"because you rated <b>{label(b)}</b> ({rating_of[int(b)]:g})",
            ]
            for rank, (i, score, b) in enumerate(zip(recs.item_idx, recs.scores, why), start=1)
        ]
        s.body.append(_table(["#", "recommended", "score", "reason"], rows, numeric={0, 2}))
    return s
