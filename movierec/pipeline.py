"""The training pipeline: data -> content -> two-tower -> index -> ranker -> one bundle.

This is the one core module that imports the stages (it wires them together); the stages never
import it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from movierec.core.artifacts import BundleWriter
from movierec.core.config import Config, dump_config
from movierec.core.data import Dataset

log = logging.getLogger(__name__)


def save_catalogue(writer: BundleWriter, ds: Dataset) -> None:
    """Item table, user id map and item statistics that serving and ranking read."""
    items = ds.items.copy()
    items["year"] = items["year"].astype("float64")  # parquet-friendly nullable year (NaN)
    writer.save_frame("items.parquet", items)
    users = ds.users.drop_duplicates("user_id") if ds.users is not None else None
    frame = (
        users.set_index("user_id").reindex(ds.user_ids).reset_index()
        if users is not None
        else None
    )
    writer.save_frame("users.parquet", frame if frame is not None else _id_frame(ds.user_ids))
    r = ds.ratings
    counts = np.bincount(r["item_idx"].to_numpy(), minlength=ds.n_items)
    sums = np.bincount(r["item_idx"].to_numpy(), weights=r["rating"].to_numpy(np.float64), minlength=ds.n_items)
    writer.save_array("item_counts.npy", counts.astype(np.int64))
    writer.save_array("item_rating_sum.npy", sums)
    writer.save_array("item_last_ts.npy", _last_timestamp(r, ds.n_items))
    order = np.lexsort((r["timestamp"].to_numpy(), r["user_idx"].to_numpy()))
    writer.save_array("hist_ratings.npy", r["rating"].to_numpy(np.float32)[order])


def _start_rating_fit(ds: Dataset, config: Config, log_dir: Path) -> Any:
    """The rating model's training in a second process when that pays (see BackgroundRatingFit).

    Called before this process imports torch and Lightning, so the two processes import at once;
    whether an external launcher (torchrun, SLURM) made this process one rank of many needs
    Lightning, so :func:`_keep_rating_fit` checks that afterwards.
    """
    from ranking.rating import BackgroundRatingFit

    trainer = config.trainer
    single = str(trainer.devices) == "1" and trainer.num_nodes == 1
    if not (config.ranking.rating.enabled and BackgroundRatingFit.worthwhile(len(ds.ratings), config.ranking.rating, single)):
        return None
    return BackgroundRatingFit(ds, config.ranking.rating, seed=config.seed, log_dir=log_dir)


def _keep_rating_fit(background: Any, ranking: bool) -> Any:
    """``background`` if it should go on: the ranker trains (the rating model comes with it) and
    this process is not one rank of an externally launched run (each rank would start one)."""
    from retrieval.distributed import launched_externally

    if background is None:
        return None
    if not ranking or launched_externally():
        background.close()
        return None
    log.info("rating model: training in a background process")
    return background


def _id_frame(ids: np.ndarray) -> Any:
    import pandas as pd

    return pd.DataFrame({"user_id": ids})


def _last_timestamp(r: Any, n_items: int) -> np.ndarray:
    out = np.zeros(n_items, dtype=np.int64)
    np.maximum.at(out, r["item_idx"].to_numpy(), r["timestamp"].to_numpy(np.int64))
    return out


def train(ds: Dataset, out: str | Path, config: Config | None = None, manifest: dict[str, Any] | None = None) -> Path:
    """Train every stage on ``ds`` and write one bundle at ``out`` (atomically).

    ``manifest`` adds entries to the bundle's manifest (e.g. ``{"state": {"seq": n}}``: the
    online-state events folded into ``ds``, which serving then does not replay).

    Returns:
        The bundle path.
    """
    from content.tfidf import content_varies
    from retrieval.distributed import is_global_zero

    from movierec.core.sizing import size_to_data

    values = ds.ratings["rating"].to_numpy()
    constant = float(values[0]) if len(values) and values.min() == values.max() else None
    config = config or Config()
    content = content_varies(ds.items, config.content.max_text_chars)
    config, choices = size_to_data(config, ds.n_users, ds.n_items, len(ds.ratings), constant_rating=constant, content=content)
    config, sequential = resolve_sequential(ds, config)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    log.info("training on %r", ds)
    for choice in choices:
        log.info("sized to the data: %s", choice)
    log.info("two-tower training: %s", sequential)
    manifest = {**(manifest or {}), "sizing": [str(c) for c in choices], "sequential": sequential}
    # Under torchrun/SLURM every rank runs the pipeline (training needs them all), but only
    # global rank 0 may write ``out``: the others build their bundle in a private temp dir
    # that is removed at the end (two ranks renaming into one path would race).
    scratch = None if is_global_zero() else Path(tempfile.mkdtemp(prefix="movierec-rank-"))
    target = Path(out) if scratch is None else scratch / "bundle"
    try:
        _train_into(ds, target, config, timings, manifest)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if scratch is None:
        log.info("bundle written to %s in %.1fs", out, time.perf_counter() - t_start)
    return Path(out)


def resolve_sequential(ds: Dataset, config: Config) -> tuple[Config, str]:
    """``config`` with ``retrieval.sequential`` True or False, and why.

    ``auto`` follows the ranker's hold-out (:func:`ranking.lists.resolve_holdout`): the two
    towers learn each user's next movies when the ranker does, so both stages train for the
    same job; with ``ranking.holdout=random`` they keep the random windows that suit it.
    """
    rc = config.retrieval
    if rc.sequential != "auto":
        return config, f"retrieval.sequential={str(rc.sequential).lower()} in the config"
    from ranking.lists import resolve_holdout

    used, _ = resolve_holdout(ds, config.ranking.holdout)
    on = used == "temporal"
    why = f"retrieval.sequential=auto and the ranker's hold-out is {used}: sequential {'on' if on else 'off'}"
    return config.model_copy(update={"retrieval": rc.model_copy(update={"sequential": on})}), why


def tower_trainer(content: np.ndarray, config: Config, content_sparse: Any = None) -> Any:
    """Two-tower training for the ranker's cross-fitted folds (``ranking.folds``): (ratings) ->
    (user vectors, item vectors) of a model that never saw the fold it will score; movies the
    fold's model saw no rating of are placed by the cold map, as in the bundle."""
    from retrieval.two_tower import fit_two_tower

    def fit(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
        tt = fit_two_tower(ds, content, config.retrieval, config.trainer, seed=config.seed)
        item_vectors, _ = _place_cold(tt, content_sparse, config)
        return tt.user_vectors, item_vectors

    return fit


def _refit_task(payload: tuple, _: int) -> Any:
    """:func:`~retrieval.two_tower.refit_two_tower` as a background task (module-level: pickled)."""
    from retrieval.two_tower import refit_two_tower

    tt, ds, content, retrieval_config, trainer_config, seed = payload
    return refit_two_tower(tt, ds, content, retrieval_config, trainer_config, seed=seed)


def _place_cold(tt: Any, content_sparse: Any, config: Config) -> tuple[np.ndarray, Any]:
    """(item vectors, cold map): the two-tower vectors with the unrated movies placed by the
    content -> item-vector map (``retrieval.cold_map``), or unchanged when it is off."""
    if not config.retrieval.cold_map or content_sparse is None:
        return tt.item_vectors, None
    from retrieval.cold import place_cold_items

    return place_cold_items(
        tt.item_vectors, content_sparse, tt.items.genres, tt.items.has_id, config.retrieval.cold_ridge, config.retrieval.cold_iters
    )


def _train_into(ds: Dataset, out: Path, config: Config, timings: dict[str, float], manifest: dict[str, Any]) -> None:
    with BundleWriter(out) as writer, contextlib.ExitStack() as cleanup:
        background = _start_rating_fit(ds, config, writer.path / "logs") if config.ranking.enabled and len(ds.ratings) else None
        if background is not None:
            cleanup.callback(background.close)  # stops the child if anything below fails
        from content import ContentModel, ContentSimilarity
        from retrieval.candidates import RetrievalModel, index_recall
        from retrieval.two_tower import fit_two_tower

        t = time.perf_counter()
        content_model = ContentModel.fit(ds.items, config.content, seed=config.seed)
        content = ContentSimilarity(content_model, config.index)
        timings["content"] = time.perf_counter() - t
        log.info("content: %d items -> %d-d vectors in %.1fs", ds.n_items, content_model.dim, timings["content"])

        t = time.perf_counter()
        from retrieval.inputs import Histories

        full_histories = Histories.from_ratings(ds.ratings, ds.n_users)
        ranking = config.ranking.enabled and len(ds.ratings) > 0
        if ranking:
            # the two-tower model learns on the earlier part; the ranker learns to order its
            # candidates for the held-out ratings (ranking/lists.py explains the protocol)
            from ranking.lists import resolve_holdout, split_for_ranker

            used, why = resolve_holdout(ds, config.ranking.holdout)
            log.info("ranker hold-out: %s (%s)", used, why)
            manifest = {**manifest, "holdout": {"used": used, "why": why}}
            tt_train, held_out = split_for_ranker(ds, config.ranking, seed=config.seed)
            ranking = len(held_out.ratings) > 0
        if not ranking:
            tt_train, held_out = ds, None
        background = _keep_rating_fit(background, ranking)
        tt = fit_two_tower(tt_train, content_model.vectors, config.retrieval, config.trainer, seed=config.seed, log_dir=writer.path / "logs")
        tt.item_vectors, cold_map = _place_cold(tt, content_model.sparse, config)
        timings["two_tower"] = time.perf_counter() - t
        refit, refit_job = (tt, ds, content_model.vectors, config.retrieval, config.trainer, config.seed), None
        if config.retrieval.refit_epochs and background is not None:
            # the refit needs only the early-stopped model: the second process takes it once the
            # rating model is done, while this one trains the ranker
            refit_job = background.submit(_refit_task, refit)
        metrics: dict[str, Any] = {}
        ranker = None
        if ranking:
            from ranking.ranker import fit_ranker

            t = time.perf_counter()
            result = fit_ranker(
                ds, tt_train, held_out, content.item_vectors, tt.items.genres, tt.user_features, tt.user_vectors,
                tt.item_vectors, config.ranking, config.trainer, seed=config.seed, log_dir=writer.path / "logs",
                fit_tower=tower_trainer(content_model.vectors, config, content_model.sparse), worker=background,
            )
            ranker = result.ranker
            metrics["ranker"] = result.metrics
            timings["ranker"] = time.perf_counter() - t
        if config.retrieval.refit_epochs:
            # after the ranker's lists: they must come from a model that never saw the held-out part
            t = time.perf_counter()
            if refit_job is not None:
                tt = background.gather(refit_job)[0]
                where = "the background process" if background.last_shared else "this process"
                tt.metrics["refit_in"] = where
                log.info("two-tower refit: trained in %s", where)
            else:
                tt = _refit_task(refit, 0)
            tt.item_vectors, cold_map = _place_cold(tt, content_model.sparse, config)
            timings["two_tower_refit"] = time.perf_counter() - t  # the wait for it, when it trained beside the ranker
            user_vectors = tt.user_vectors  # already from the full histories
        elif ranking:
            from retrieval.towers import encode_all_users

            # serve-time queries pool each user's full history, held-out part included
            user_vectors = encode_all_users(
                tt.user_tower, full_histories, tt.items.content, tt.user_features, ds.n_items, config.retrieval.history_len
            )
        else:
            user_vectors = tt.user_vectors

        retrieval = RetrievalModel(
            tt.user_tower,
            tt.item_tower,
            tt.item_vectors,
            user_vectors,
            full_histories,
            tt.items.genres,
            tt.items.content,
            tt.items.has_id,
            tt.user_features,
            tt.feature_encoder,
            {**tt.hparams, "history_len": config.retrieval.history_len, "genres": ds.genre_vocabulary()},
            index_config=config.index,
            cold_map=cold_map,
        )
        recall = index_recall(retrieval)
        log.info("retrieval index: %s over %d items, recall@10 vs exact %.3f", retrieval.index.kind, retrieval.n_items, recall)
        metrics.update({"two_tower": tt.metrics, "index": {"kind": retrieval.index.kind, "recall@10_vs_exact": recall}})
        rating_model = None
        if ranking and config.ranking.rating.enabled:
            from ranking.rating import fit_rating_model

            t = time.perf_counter()
            if background is not None:
                rated = background.result()  # timings: the wait beyond the stages trained meanwhile
            else:
                rated = fit_rating_model(ds, config.ranking.rating, seed=config.seed, log_dir=writer.path / "logs")
            rating_model = rated.model
            metrics["rating_model"] = rated.metrics
            timings["rating_model"] = time.perf_counter() - t
        save_catalogue(writer, ds)
        content.save(writer)
        retrieval.save(writer)
        if ranker is not None:
            ranker.save(writer)
        if rating_model is not None:
            rating_model.save(writer)
        writer.meta.update(
            {
                "dataset": {"name": ds.name, "fingerprint": ds.fingerprint(), "ratings": len(ds.ratings), "users": ds.n_users, "items": ds.n_items, "rating_scale": list(ds.rating_scale)},
                "config": dump_config(config),
                "metrics": metrics,
                "timings": {k: round(v, 2) for k, v in timings.items()},
            }
        )
        writer.meta.update(manifest)
