"""Speed of the content stage on synthetic catalogues.

For each catalogue size: fit time (TF-IDF + SVD), similar-item latency for single queries
(p50/p99 over random items, k=10), batch throughput (items/s), the time to add one movie, and
for approximate indexes the recall@10 against exact search. Catalogues < ``exact_below`` items
are also timed on the exact sparse-cosine path, which is what ``similar_items`` uses there by
default.

    .venv/bin/python benchmarks/content_speed.py [--sizes 10000 100000] [--write]

``--write`` replaces the "### Speed" part of the "## Content" section of
benchmarks/RESULTS.md (other sections are left alone).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from content import ContentModel, ContentSimilarity
from movierec.core.config import ContentConfig, IndexConfig
from movierec.core.loaders import load_dataset
from movierec.core.index import recall_against_exact
from movierec.core.synthetic import SynthSpec, write_synthetic

log = logging.getLogger("content_speed")
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Content"


def synthetic_items(n_items: int, seed: int = 42) -> pd.DataFrame:
    """Item table (titles, years, genres, tags, descriptions) of a synthetic catalogue."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = SynthSpec(n_users=2, n_items=n_items, n_ratings=2, seed=seed, cold_fraction=0.0)
        write_synthetic(Path(tmp) / "synth", spec)
        return load_dataset(Path(tmp) / "synth").items


def _latency(fn, queries: np.ndarray) -> tuple[float, float]:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        fn(int(q))
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def bench(n_items: int, n_single: int, n_batch: int, seed: int = 0) -> list[dict[str, object]]:
    items = synthetic_items(n_items)
    t0 = time.perf_counter()
    model = ContentModel.fit(items, ContentConfig())
    fit_s = time.perf_counter() - t0
    sim = ContentSimilarity(model, IndexConfig(), exact=False)
    rng = np.random.default_rng(seed)
    single = rng.integers(0, n_items, size=n_single)
    batch = rng.integers(0, n_items, size=n_batch)
    sim.similar_items(single[:20], 10)  # warm-up
    rows = []
    paths = [("faiss-" + sim.index.kind, False)]
    if n_items < model.config.exact_below:
        paths.append(("exact sparse", True))
    for name, exact in paths:
        p50, p99 = _latency(lambda i: sim.similar_items(i, 10, exact=exact), single)
        t0 = time.perf_counter()
        sim.similar_items(batch, 10, exact=exact)
        throughput = n_batch / (time.perf_counter() - t0)
        recall = 1.0
        if not exact and sim.index.kind != "flat":
            q = sim.item_vectors[single[:500]]
            recall = recall_against_exact(sim.index, sim.item_vectors, q, k=11)
        rows.append(
            {"items": n_items, "path": name, "dim": model.dim, "fit_s": fit_s, "p50_ms": p50,
             "p99_ms": p99, "batch_per_s": throughput, "recall@10": recall}
        )
    new = items.iloc[[0]].assign(item_id=-1, title="A Brand New Film")
    add_ms = []
    for _ in range(20):
        t0 = time.perf_counter()
        sim.add_items(new)
        add_ms.append((time.perf_counter() - t0) * 1000)
    for r in rows:
        r["add_ms"] = float(np.median(add_ms))
    return rows


def table(rows: list[dict[str, object]]) -> str:
    head = "| items | path | dim | fit (s) | single p50 (ms) | single p99 (ms) | batch (items/s) | recall@10 vs exact | add 1 movie (ms) |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['items']:,} | {r['path']} | {r['dim']} | {r['fit_s']:.1f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['batch_per_s']:,.0f} | {r['recall@10']:.3f} | {r['add_ms']:.2f} |"
        )
    return "\n".join(lines)


def write_subsection(title: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or add) ``### title`` inside the content section only, re-reading the file first.

    Others edit other sections of RESULTS.md concurrently, so read, patch one block and write
    back at once.
    """
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n"
    start = text.index(SECTION)
    nxt = re.search(r"^## ", text[start + len(SECTION):], flags=re.M)
    end = start + len(SECTION) + nxt.start() if nxt else len(text)
    section = text[start:end]
    block = f"### {title}\n\n{body.strip()}\n\n"
    m = re.search(rf"^### {re.escape(title)}\n.*?(?=^### |\Z)", section, flags=re.M | re.S)
    section = section[: m.start()] + block + section[m.end():] if m else section.rstrip("\n") + "\n\n" + block
    path.write_text(text[:start] + section + text[end:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--single", type=int, default=1000, help="single queries timed per path")
    ap.add_argument("--batch", type=int, default=10_000, help="items in the batch query")
    ap.add_argument("--threads", type=int, default=1, help="FAISS/BLAS threads (1: one serving core)")
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(args.threads)
    threadpool_limits(args.threads)
    rows = []
    for n in args.sizes:
        rows += bench(n, args.single, args.batch)
    out = table(rows)
    print(out)
    if args.write:
        cmd = "`.venv/bin/python benchmarks/content_speed.py --write`"
        env = f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs, {args.threads} FAISS/BLAS thread(s)"
        note = (
            f"Command: {cmd} ({env}). Synthetic catalogues from `movierec.core.synthetic` (titles, genres, "
            "tags, descriptions); k=10; single = one `similar_items(i, 10)` call per random item; "
            "batch = one call with 10,000 items. `faiss-flat` below `IndexConfig.ann_threshold` "
            "(50,000), HNSW (M=32, efSearch=128) above; exact sparse is the default path below "
            "`ContentConfig.exact_below` (20,000). Fit = TF-IDF over all fields + TruncatedSVD to 128."
        )
        write_subsection("Speed", note + "\n\n" + out)


if __name__ == "__main__":
    main()
