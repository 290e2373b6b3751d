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
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from movierec.core.artifacts import Bundle, atomic_write_bytes, load_bundle
from movierec.core.data import to_plain
from movierec.core.popularity import item_popularity, most_popular

log = logging.getLogger(__name__)

QualityTable = dict[str, dict[str, float]]

# the P2 protocol's metrics first (DESIGN.md), then whatever else a table carries
_METRIC_ORDER = ("recall@10", "ndcg@10", "recall@50", "coverage@10")
_MAX_CHART_METRICS = 4
_N_SAMPLE_USERS = 3
_N_SAMPLE_RECS = 5
_N_TYPICAL_TITLES = 5
_MAX_GENRE_COLOURS = 9  # tab10 minus the grey kept for "other"
_DPI = 100
_MAX_WIDTH = 11.0  # inches; at _DPI this fits the page column unscaled, so text keeps its size

# Okabe-Ito-like qualitative palette from tab10; grey is reserved for "other"/"no genre"
_TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
_GREY = "#9a9a9a"


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


# ---- page -------------------------------------------------------------------------------------------


@dataclass
class _Section:
    """One ``<section>``: an id (tests and the table of contents use it), a title and HTML body."""

    key: str
    title: str
    body: list[str] = field(default_factory=list)

    def p(self, text: str, cls: str = "") -> None:
        self.body.append(f'<p class="{cls}">{text}</p>' if cls else f"<p>{text}</p>")

    def note(self, text: str) -> None:
        """A visible remark on something missing, so a degraded report says why."""
        self.p(text, "note")

    def figure(self, png: bytes, alt: str, caption: str = "") -> None:
        data = base64.b64encode(png).decode("ascii")
        cap = f"<figcaption>{caption}</figcaption>" if caption else ""
        self.body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(alt)}">{cap}</figure>')

    def html(self) -> str:
        return f'<section id="{self.key}"><h2>{_esc(self.title)}</h2>\n' + "\n".join(self.body) + "</section>"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{margin:0 0 4px;font-size:28px} h2{margin-top:40px;border-bottom:2px solid #e4e4e4;padding-bottom:4px}
h3{margin:24px 0 8px;font-size:17px}
.sub{color:#666;margin:0 0 12px} .note{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px}
nav a{margin-right:14px} figure{margin:12px 0} img{max-width:100%;height:auto}
figcaption{color:#555;font-size:14px;margin-top:4px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:14px}
th,td{border-bottom:1px solid #e4e4e4;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.best{font-weight:600} .why{color:#555;font-size:13px} .swatch{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:6px}
"""


def _page(bundle: Bundle, sections: list[_Section]) -> str:
    ds = bundle.manifest.get("dataset", {})
    nav = " ".join(f'<a href="#{s.key}">{_esc(s.title)}</a>' for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>movierec report: {_esc(ds.get('name', bundle.path.name))}</title>"
        f"<style>{_CSS}</style></head><body><main>"
        f"<h1>movierec report</h1><p class=\"sub\">model {_esc(bundle.model_version)} · "
        f"data set {_esc(ds.get('name', '?'))} · bundle created {_esc(bundle.manifest.get('created', '?'))} · "
        f"report written {_esc(time.strftime('%Y-%m-%d %H:%M'))}</p><nav>{nav}</nav>\n"
        + "\n".join(s.html() for s in sections)
        + "</main></body></html>\n"
    )


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str] | None, rows: list[list[Any]], numeric: set[int] | None = None, bold: set[tuple[int, int]] | None = None) -> str:
    numeric, bold = numeric or set(), bold or set()

    def cell(tag: str, i: int, j: int, v: Any) -> str:
        cls = " ".join(c for c, on in (("num", j in numeric), ("best", (i, j) in bold)) if on)
        return f'<{tag} class="{cls}">{v}</{tag}>' if cls else f"<{tag}>{v}</{tag}>"

    body = "".join("<tr>" + "".join(cell("td", i, j, v) for j, v in enumerate(r)) + "</tr>" for i, r in enumerate(rows))
    if header is None:  # a key/value table
        return f"<table><tbody>{body}</tbody></table>"
    head = "".join(cell("th", -1, j, _esc(h)) for j, h in enumerate(header))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---- figures ------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    """A fresh Agg-backed figure (no pyplot: no global state, no display needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    return fig


def _png(fig: Any) -> bytes:
    """PNG bytes without the software/date metadata, so the same bundle gives the same image."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None}, facecolor="white")
    return buf.getvalue()


def _style(ax: Any) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, alpha=0.25, linewidth=0.6)
    ax.set_axisbelow(True)


# ---- the data -------------------------------------------------------------------------------------------


@dataclass
class _Interactions:
    """Per-rating arrays reconstructed from the bundle (training ratings only)."""

    user: np.ndarray  # (n_ratings,) user_idx
    item: np.ndarray  # (n_ratings,) item_idx
    rating: np.ndarray  # (n_ratings,) float
    n_users: int
    n_items: int

    @classmethod
    def of(cls, bundle: Bundle) -> "_Interactions":
        indptr = bundle.array("retrieval/hist_indptr.npy")
        items = bundle.array("retrieval/hist_items.npy")
        ratings = bundle.array("hist_ratings.npy") if bundle.has("hist_ratings.npy") else np.ones(len(items), np.float32)
        n_users = len(indptr) - 1
        n_items = len(bundle.array("retrieval/item_vectors.npy"))
        users = np.repeat(np.arange(n_users), np.diff(indptr))
        return cls(users, items.astype(np.int64), ratings.astype(np.float64), n_users, n_items)


def _section_summary(bundle: Bundle) -> _Section:
    s = _Section("summary", "The model at a glance")
    m = bundle.manifest
    ds = m.get("dataset", {})
    scale = ds.get("rating_scale")
    rows = [
        ["data set", _esc(ds.get("name", "?"))],
        ["ratings / users / movies", f"{ds.get('ratings', 0):,} / {ds.get('users', 0):,} / {ds.get('items', 0):,}"],
        ["rating scale", f"{scale[0]:g} to {scale[1]:g}" if scale else "unknown"],
    ]
    timings = m.get("timings") or {}
    if timings:
        rows.append(["training time", ", ".join(f"{_esc(k)} {v:.1f}s" for k, v in timings.items())])
    s.body.append(_table(None, rows))
    stages = [(stage, values) for stage, values in (m.get("metrics") or {}).items() if isinstance(values, dict)]
    if stages:
        from movierec.core.metrics import metric_rows

        s.p("What each component measured while it trained:")
        table: list[list[Any]] = []
        for stage, values in stages:
            for i, (name, shown) in enumerate(metric_rows(values)):
                table.append([_esc(stage.replace("_", " ")) if i == 0 else "", _esc(name), _esc(shown)])
        s.body.append(_table(["component", "measure", "value"], table, numeric={2}))
    s.p(
        "Training metrics are measured on the validation split held out during training; "
        "the quality section below compares against baselines on a separate test set when one is given."
    )
    return s


def _section_data(bundle: Bundle) -> _Section:
    s = _Section("data", "The data")
    data = _Interactions.of(bundle)
    n = len(data.rating)
    if n == 0:
        s.note("The bundle was trained on no ratings; there is nothing to plot.")
        return s
    per_user = np.bincount(data.user, minlength=data.n_users)
    per_item = np.bincount(data.item, minlength=data.n_items)
    density = n / max(data.n_users * data.n_items, 1)
    cold = int((per_item == 0).sum())
    top = np.sort(per_item)[::-1]
    top_share = top[: max(1, data.n_items // 10)].sum() / n
    s.p(
        f"<b>{n:,}</b> ratings by <b>{data.n_users:,}</b> users on <b>{data.n_items:,}</b> movies "
        f"({cold:,} movies without a rating in training). The user x movie matrix is "
        f"<b>{density:.2%}</b> filled, so <b>{1 - density:.2%}</b> sparse. The top 10% of movies hold "
        f"<b>{top_share:.0%}</b> of all ratings; the median user rated {np.median(per_user[per_user > 0]):.0f} movies "
        f"and the median rated movie has {np.median(per_item[per_item > 0]):.0f} ratings."
    )
    s.figure(_fig_ratings(data.rating), "histogram of rating values", "How users rate: the share of each rating value.")
    s.figure(
        _fig_long_tail(per_user, per_item),
        "ratings per user and per movie, log axes",
        "The long tail: users and movies sorted from most to least active, both axes logarithmic. "
        "A few users and movies account for most ratings; most movies have few.",
    )
    s.figure(
        _fig_sparsity(data, per_user, per_item),
        "filled share of the user x movie matrix",
        "Sparsity: the user x movie matrix with users and movies sorted by activity, each cell of the "
        "picture a block of the matrix coloured by the share of it that is rated.",
    )
    return s


def _fig_ratings(ratings: np.ndarray) -> bytes:
    fig = _figure(7.5, 3.4)
    ax = fig.add_subplot()
    values, counts = np.unique(ratings, return_counts=True)
    share = counts / counts.sum()
    if len(values) <= 25:  # a discrete scale (stars): one bar per value
        step = np.min(np.diff(values)) if len(values) > 1 else 1.0
        bars = ax.bar(values, share, width=0.8 * step, color=_TAB10[0])
        texts = ax.bar_label(bars, labels=[f"{v:.0%}" if v >= 0.01 else f"{v:.1%}" for v in share], fontsize=8, padding=2)
        for t in texts:  # the mean line passes behind the labels, not through them
            t.set_bbox({"facecolor": "white", "edgecolor": "none", "pad": 0.5})
            t.set_zorder(4)
        ax.set_xticks(values, [f"{v:g}" for v in values])
    else:  # continuous ratings
        ax.hist(ratings, bins=30, weights=np.full(len(ratings), 1 / len(ratings)), color=_TAB10[0])
    mean = float(ratings.mean())
    ax.axvline(mean, color=_TAB10[3], linestyle="--", linewidth=1.2, label=f"mean {mean:.2f}", zorder=3)
    ax.yaxis.set_major_formatter(_percent())
    ax.set_ylim(0, float(share.max()) * 1.18 if len(values) <= 25 else None)
    ax.set_xlabel("rating")
    ax.set_ylabel("share of ratings")
    ax.set_title("Rating values")
    ax.legend(frameon=False, loc="upper left")
    _style(ax)
    return _png(fig)


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0, decimals=None)


def _fig_long_tail(per_user: np.ndarray, per_item: np.ndarray) -> bytes:
    fig = _figure(10, 3.8)
    axes = fig.subplots(1, 2)
    for ax, counts, who, colour in ((axes[0], per_user, "user", _TAB10[0]), (axes[1], per_item, "movie", _TAB10[1])):
        c = np.sort(counts[counts > 0])[::-1]
        rank = np.arange(1, len(c) + 1)
        ax.plot(rank, c, color=colour, linewidth=2, label=f"ratings per {who}")
        med = float(np.median(c))
        ax.axhline(med, color="#555", linestyle=":", linewidth=1.2, label=f"median {med:.0f}" + (" (of rated)" if who == "movie" else ""))
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.set_xlabel(f"{who}s ranked by number of ratings (log)")
        ax.set_ylabel("ratings (log)")
        zero = int((counts == 0).sum())
        extra = f" ({zero:,} with none)" if zero else ""
        ax.set_title(f"Ratings per {who}: {len(counts):,} {who}s{extra}")
        ax.legend(frameon=False, loc="lower left")
        _style(ax)
    return _png(fig)


def _plain_log_ticks(ax: Any) -> None:
    """Log axes labelled 1, 10, 100 (and 20, 50 between), not 10^1 or 6x10^1."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def _block_density(data: _Interactions, per_user: np.ndarray, per_item: np.ndarray, max_cells: int = 120) -> np.ndarray:
    """Share of rated cells per block of the user x movie matrix, rows and columns sorted by activity.

    Binning to at most ``max_cells`` blocks a side keeps the picture readable at any size.

    Returns:
        (rows, cols) shares in [0, 1]; row 0 holds the most active users, column 0 the most rated movies.
    """
    u_rank = np.empty(data.n_users, np.int64)
    u_rank[np.argsort(-per_user, kind="stable")] = np.arange(data.n_users)
    i_rank = np.empty(data.n_items, np.int64)
    i_rank[np.argsort(-per_item, kind="stable")] = np.arange(data.n_items)
    rows, cols = min(max_cells, data.n_users), min(max_cells, data.n_items)
    # block of each user / movie rank; a block's size is how many ranks fall in it
    r_block = np.arange(data.n_users) * rows // data.n_users
    c_block = np.arange(data.n_items) * cols // data.n_items
    grid = np.zeros((rows, cols))
    np.add.at(grid, (r_block[u_rank[data.user]], c_block[i_rank[data.item]]), 1.0)
    cells = np.outer(np.bincount(r_block, minlength=rows), np.bincount(c_block, minlength=cols))
    return grid / cells


def _fig_sparsity(data: _Interactions, per_user: np.ndarray, per_item: np.ndarray) -> bytes:
    from matplotlib.colors import LogNorm

    share = _block_density(data, per_user, per_item)
    density = len(data.user) / max(data.n_users * data.n_items, 1)
    fig = _figure(7.5, 5.2)
    ax = fig.add_subplot()
    positive = share[share > 0]
    vmin = max(float(positive.min()), 1e-4) if positive.size else 1e-4
    masked = np.ma.masked_less_equal(share, 0)
    img = ax.imshow(
        masked, aspect="auto", interpolation="nearest", cmap="viridis",
        norm=LogNorm(vmin=vmin, vmax=max(float(share.max()), vmin * 1.01)),
        extent=(0, data.n_items, data.n_users, 0),
    )
    ax.set_facecolor("#f0f0f0")  # empty blocks
    bar = fig.colorbar(img, ax=ax, label="share of the block that is rated (log scale)")
    from matplotlib.ticker import LogLocator, NullFormatter

    # labels at 1, 2, 5 per decade only: every minor tick labelled would pile up near a decade
    bar.ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    bar.ax.yaxis.set_major_formatter(_percent())
    bar.ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("movies, most rated first")
    ax.set_ylabel("users, most active first")
    ax.set_title(f"Rated cells of the user x movie matrix: {density:.2%} filled, {1 - density:.2%} sparse", fontsize=11)
    return _png(fig)


# ---- training curves ---------------------------------------------------------------------------------------


def _log_files(bundle: Bundle) -> list[str]:
    """Lightning CSVLogger files in the bundle, two-tower first, then in stage order."""
    names = [n for n in bundle.manifest["files"] if n.startswith("logs/") and n.endswith("/metrics.csv")]
    order = {"two_tower": 0, "ranker": 1}
    return sorted(names, key=lambda n: (order.get(n.split("/")[1], 9), n))


def _section_training(bundle: Bundle) -> _Section:
    s = _Section("training", "Training curves")
    files = _log_files(bundle)
    if not files:
        s.note("This bundle carries no training logs (no <code>logs/*/metrics.csv</code>), so there are no curves to show.")
        return s
    s.p(
        "Per epoch, from the Lightning CSV logs each stage writes: the training loss (averaged over the "
        "epoch) and the validation metrics early stopping watches. The star marks the best epoch, "
        "whose weights the bundle keeps."
    )
    for name in files:
        stage = name.split("/")[1]
        try:
            frame = pd.read_csv(bundle.file(name))
            png = _fig_training(frame, stage)
        except (ValueError, KeyError, pd.errors.ParserError) as e:
            log.warning("report: cannot plot %s: %s", name, e)
            s.note(f"The log <code>{_esc(name)}</code> could not be read ({_esc(e)}).")
            continue
        if png is None:
            s.note(f"The log <code>{_esc(name)}</code> has no epochs to plot.")
            continue
        s.figure(png, f"training curves of {stage}")
    return s


_STAGE_NAMES = {"two_tower": "Two-tower retrieval", "ranker": "Ranker"}


def _per_epoch(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per training epoch: train metrics averaged, validation metrics the epoch's last value.

    Validation rows logged after the last training epoch (a re-validation of the restored best
    checkpoint) and before the first training step of an epoch that has a later one (a "before
    training" baseline) are dropped, so every point is the state at the end of an epoch.
    """
    if "epoch" not in frame.columns:
        raise KeyError("no 'epoch' column")
    train_cols = [c for c in frame.columns if c.startswith("train/")]
    val_cols = [c for c in frame.columns if c.startswith("val/")]
    trained = frame.dropna(subset=train_cols, how="all")["epoch"] if train_cols else frame["epoch"]
    last_epoch = trained.max() if len(trained) else frame["epoch"].max()
    frame = frame[frame["epoch"] <= last_epoch]
    out = pd.DataFrame(index=pd.Index(sorted(frame["epoch"].dropna().unique().astype(int)), name="epoch"))
    for c in train_cols:
        out[c] = frame.groupby("epoch")[c].mean()
    if "step" in frame.columns:
        frame = frame.sort_values(["epoch", "step"], kind="stable")
    for c in val_cols:
        out[c] = frame.dropna(subset=[c]).groupby("epoch")[c].last()
    return out.dropna(how="all")


def _metric_kind(col: str) -> str:
    name = col.split("/", 1)[-1]
    if "loss" in name:
        return "loss"
    if name.startswith(("rmse", "mae")):
        return "error"
    return "quality"


def _fig_training(frame: pd.DataFrame, stage: str) -> bytes | None:
    epochs = _per_epoch(frame)
    if epochs.empty:
        return None
    kinds = [k for k in ("loss", "quality", "error") if any(_metric_kind(c) == k for c in epochs.columns)]
    titles = {"loss": "Loss (lower is better)", "quality": "Validation ranking quality (higher is better)", "error": "Validation rating error (lower is better)"}
    fig = _figure(min(4.5 * len(kinds), _MAX_WIDTH), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(kinds)))
    x = epochs.index.to_numpy() + 1  # humans count epochs from 1
    for ax, kind in zip(axes, kinds):
        cols = [c for c in epochs.columns if _metric_kind(c) == kind]
        for j, c in enumerate(cols):
            y = epochs[c].to_numpy(dtype=float)
            ok = np.isfinite(y)
            style = "-" if c.startswith("train/") else "--"
            colour = _TAB10[j % len(_TAB10)]
            ax.plot(x[ok], y[ok], style, marker="o", markersize=3.5, color=colour, label=c)
            if kind == "quality" and ok.any():  # the metric early stopping keeps the best of
                best = int(np.nanargmax(y))
                ax.plot(x[best], y[best], marker="*", markersize=14, color=colour, markeredgecolor="black",
                        linestyle="none", label=f"best: {y[best]:.3f} (epoch {x[best]})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(kind if kind != "quality" else "metric")
        ax.set_title(titles[kind], fontsize=11)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(frameon=False, fontsize=8)
        _style(ax)
    fig.suptitle(_STAGE_NAMES.get(stage, stage), fontsize=12, fontweight="bold")
    return _png(fig)


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


# ---- map of movies ------------------------------------------------------------------------------------------


def _main_genres(items: pd.DataFrame) -> np.ndarray:
    """The first listed genre of each movie ("(none)" without genres): the data's own primary label."""
    return np.array([(list(g)[0] if g is not None and len(g) else "(none)") for g in items["genres"]], dtype=object)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _section_map(bundle: Bundle) -> _Section:
    s = _Section("map", "The map of movies")
    vectors = _unit(bundle.array("retrieval/item_vectors.npy").astype(np.float64))
    items = bundle.frame("items.parquet")
    counts = item_popularity(bundle.array("item_counts.npy"), np.arange(len(items))).astype(np.float64)
    if len(vectors) < 3:
        s.note("Fewer than three movies: too few for a map.")
        return s
    xy, explained = _pca2(vectors)
    n_clusters = int(min(8, max(2, len(vectors) // 5)))
    labels, centroids = _kmeans(vectors, n_clusters)
    s.p(
        "Each point is a movie placed by the two-tower model's item vector (cosine geometry, projected to "
        f"two dimensions by PCA, which keeps {explained:.0%} of the variance). Movies close together are "
        "recommended to the same people. Point size grows with the number of ratings. On the right the "
        f"same map shows {n_clusters} k-means clusters found in the full vectors; the table lists each "
        "cluster's most typical titles (closest to its centre, popular ones first)."
    )
    s.figure(_fig_map(xy, _main_genres(items), counts, labels), "PCA map of movie vectors by genre and cluster")
    s.body.append(_cluster_table(vectors, items, counts, labels, centroids))
    return s


def _pca2(vectors: np.ndarray) -> tuple[np.ndarray, float]:
    """2-D PCA with a fixed sign per axis (deterministic across runs and BLAS builds)."""
    centred = vectors - vectors.mean(axis=0)
    u, sv, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt[:2]
    signs = np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])
    vt = vt * signs[:, None]
    total = float((sv**2).sum())
    explained = float((sv[:2] ** 2).sum() / total) if total > 0 else 0.0
    xy = centred @ vt.T
    if xy.shape[1] < 2:
        xy = np.column_stack([xy, np.zeros(len(xy))])
    return xy, explained


def _kmeans(vectors: np.ndarray, n_clusters: int, max_fit: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """k-means on unit vectors (spherical in effect); fitted on a seeded sample for huge catalogues.

    Clusters are renumbered by size, largest first, so cluster 1 is always the biggest.
    """
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    fit_rows = np.sort(rng.choice(len(vectors), max_fit, replace=False)) if len(vectors) > max_fit else slice(None)
    km = KMeans(n_clusters=n_clusters, n_init=4, random_state=0).fit(vectors[fit_rows])
    labels = km.predict(vectors)
    order = np.argsort(-np.bincount(labels, minlength=n_clusters), kind="stable")
    remap = np.empty(n_clusters, np.int64)
    remap[order] = np.arange(n_clusters)
    return remap[labels], _unit(km.cluster_centers_[order])


def _fig_map(xy: np.ndarray, genres: np.ndarray, counts: np.ndarray, labels: np.ndarray) -> bytes:
    import matplotlib.patheffects as pe

    size = 6 + 60 * np.sqrt(counts / max(float(counts.max()), 1.0))
    # popular movies on top, so the big points are not hidden under small ones
    order = np.argsort(counts, kind="stable")
    fig = _figure(_MAX_WIDTH, 5.6)
    left, right = fig.subplots(1, 2)
    ranked = [g for g, _ in Counter(genres.tolist()).most_common() if g != "(none)"]
    shown = ranked[:_MAX_GENRE_COLOURS]
    colour_of = {g: _TAB10[i] for i, g in enumerate(shown)}
    colours = np.array([colour_of.get(g, _GREY) for g in genres], dtype=object)
    left.scatter(xy[order, 0], xy[order, 1], s=size[order], c=colours[order].tolist(), alpha=0.7, linewidths=0.3, edgecolors="white")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="none", color=colour_of[g], label=g) for g in shown]
    if len(ranked) > len(shown) or "(none)" in genres:
        handles.append(Line2D([], [], marker="o", linestyle="none", color=_GREY, label="other"))
    left.legend(handles=handles, title="main genre", frameon=False, fontsize=8, title_fontsize=9,
                loc="upper left", bbox_to_anchor=(1.0, 1.0))
    left.set_title("Coloured by main genre (first listed)")
    n_clusters = int(labels.max()) + 1
    cmap = [_TAB10[i % len(_TAB10)] for i in range(n_clusters)]
    ccol = np.array([cmap[c] for c in labels], dtype=object)
    right.scatter(xy[order, 0], xy[order, 1], s=size[order], c=ccol[order].tolist(), alpha=0.7, linewidths=0.3, edgecolors="white")
    for c in range(n_clusters):
        pts = xy[labels == c]
        if len(pts):
            cx, cy = np.median(pts, axis=0)
            right.text(cx, cy, str(c + 1), fontsize=15, fontweight="bold", ha="center", va="center", color=cmap[c],
                       path_effects=[pe.withStroke(linewidth=4, foreground="white")])
    chandles = [Line2D([], [], marker="o", linestyle="none", color=cmap[c], label=f"cluster {c + 1}") for c in range(n_clusters)]
    right.legend(handles=chandles, title="k-means", frameon=False, fontsize=8, title_fontsize=9,
                 loc="upper left", bbox_to_anchor=(1.0, 1.0))
    right.set_title("Coloured by k-means cluster (numbers at cluster medians)")
    for ax in (left, right):
        ax.set_xlabel("first principal component")
        ax.set_ylabel("second principal component")
        _style(ax)
    fig.suptitle("Movies by their two-tower vectors (PCA)", fontsize=12, fontweight="bold")
    return _png(fig)


def _typical(vectors: np.ndarray, members: np.ndarray, centroid: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    """Among the members closest to the centre (``3n`` or the closest tenth), the ``n`` most rated.

    Closest-to-centre alone favours obscure movies with few ratings (their vectors come mostly
    from content and sit near the middle); preferring popular ones among the close ones gives
    titles a reader recognises that still typify the cluster.
    """
    sims = vectors[members] @ centroid
    close = members[np.argsort(-sims, kind="stable")[: max(3 * n, len(members) // 10)]]
    return close[np.argsort(-counts[close], kind="stable")[:n]]


def _cluster_table(vectors: np.ndarray, items: pd.DataFrame, counts: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> str:
    titles = items["title"].astype(str).to_numpy()
    rows = []
    for c in range(len(centroids)):
        members = np.flatnonzero(labels == c)
        if not len(members):
            continue
        genre_counts = Counter(g for i in members for g in (items["genres"].iloc[i] if items["genres"].iloc[i] is not None else []))
        top_genres = ", ".join(f"{_esc(g)} {k / len(members):.0%}" for g, k in genre_counts.most_common(3)) or "–"
        typical = _typical(vectors, members, centroids[c], counts, _N_TYPICAL_TITLES)
        names = "<br>".join(f"{_esc(titles[i])} <span class=\"why\">({int(counts[i]):,} ratings)</span>" for i in typical)
        swatch = f'<span class="swatch" style="background:{_TAB10[c % len(_TAB10)]}"></span>'
        rows.append([f"{swatch}{c + 1}", f"{len(members):,}", top_genres, names])
    return _table(["cluster", "movies", "most common genres", "most typical titles"], rows, numeric={1})


# ---- sample recommendations ------------------------------------------------------------------------------------


def _sample_users(lengths: np.ndarray, n: int) -> np.ndarray:
    """Users at evenly spaced quantiles of activity (light to heavy raters), deterministically."""
    active = np.flatnonzero(lengths > 0)
    if not len(active):
        return active
    by_len = active[np.argsort(lengths[active], kind="stable")]
    picks = np.unique(np.round(np.linspace(0.25, 0.9, n) * (len(by_len) - 1)).astype(int))
    return by_len[picks]


def _because(rec_vectors: np.ndarray, hist: np.ndarray, hist_ratings: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """For each recommended movie, the rated movie whose vector is most similar to it.

    Only movies the user rated at or above their own average are candidates when there are any:
    "because you rated X" reads as "because you liked X", and a movie they disliked is no reason.
    """
    liked = hist[hist_ratings >= hist_ratings.mean()] if len(hist_ratings) else hist
    pool = liked if len(liked) else hist
    sims = rec_vectors @ vectors[pool].T
    return pool[np.argmax(sims, axis=1)]


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
    hist = model.histories
    users = _sample_users(np.diff(hist.indptr), _N_SAMPLE_USERS)
    if not len(users):
        s.note("No user has ratings in training, so there is nobody to recommend for.")
        return s
    s.p(
        f"For {len(users)} users from light to heavy raters: what they rated most recently and the top "
        f"{_N_SAMPLE_RECS} recommendations{' after the ranker' if model.ranker is not None else ''}, movies they "
        "rated excluded. The reason is the movie they rated (at or above their average) whose two-tower "
        "vector is most similar to the recommended one."
    )
    ratings = bundle.array("hist_ratings.npy") if bundle.has("hist_ratings.npy") else np.ones(len(hist.items))
    vectors = _unit(np.asarray(model.retrieval.item_vectors, dtype=np.float64))
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
        why = _because(vectors[recs.item_idx], h, r, vectors)
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
