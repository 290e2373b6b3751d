"""The report's sections on the data (ratings, long tail, sparsity) and on training (the
stages' learning curves)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from movierec.core.artifacts import Bundle
from movierec.report_page import _MAX_WIDTH, _TAB10, _esc, _figure, _png, _Section, _style, _table

log = logging.getLogger(__name__)


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
