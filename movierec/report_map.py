"""The report's map of movies: the two-tower item vectors in two dimensions, their clusters and
each cluster's most typical titles."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from movierec.core.artifacts import Bundle
from movierec.core.popularity import item_popularity
from movierec.report_page import _GREY, _MAX_WIDTH, _TAB10, _esc, _figure, _png, _Section, _style, _table

_N_TYPICAL_TITLES = 5
_MAX_GENRE_COLOURS = 9  # tab10 minus the grey kept for "other"


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
