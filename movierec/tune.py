"""Hyper-parameter search for the whole pipeline with Optuna (``movierec tune``).

Every trial trains the real pipeline (``movierec.pipeline.train``) on the training side of a
validation split carved from the data it is given (:func:`movierec.core.splits.validation_split`),
and scores NDCG@10 of the bundle's own ranked order on the held-out side. Test data never
enters: give ``tune`` a training set (for the P2 benchmark, the P2 train side) and evaluate the
written config on the test side separately.

Trials are made cheap by capping epochs (``trial_epochs``); the config written for the winner
keeps the base config's epochs, because full training stops early on its own validation
metric anyway and the capped epoch counts are a budget, not a tuned value.

The study lives in SQLite through Optuna's storage (``out`` with the suffix ``.db``): rerunning
the same command resumes it, running only the trials still missing from ``trials`` (finished or
pruned ones count; one cut off by a kill is recorded as failed and run again). A study made on
other data is refused rather than mixed.

Bad trials are pruned early (Optuna's median pruner): each trial first trains content vectors
and the two-tower model without the ranker and reports the validation NDCG@10 of that retrieval
order; a trial below the median of earlier trials at that step stops there and never trains the
ranker, the slow stage. A surviving trial then trains the whole pipeline (the two-tower model
again: the pipeline has no hook to stop between stages). Trials do not train the rating model,
which does not change the ranked order they are scored on; the written config keeps the base's
rating settings.

Searched (the main levers of each stage):
  * retrieval: ``dim``, ``lr``, ``temperature``;
  * ranking: width of the first hidden layer (the second is half of it);
  * content: TF-IDF field weights ``title_weight``, ``genre_weight``, ``tag_weight``,
    ``description_weight``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from movierec.core.config import Config, dump_config
from movierec.core.data import Dataset
from movierec.core.metrics import topn_metrics
from movierec.core.splits import validation_split

log = logging.getLogger(__name__)
METRIC = "ndcg@10"


class StudyError(ValueError):
    """The stored study does not belong to this search (other data or validation split)."""


@dataclass
class TuneResult:
    """Outcome of a search.

    Attributes:
        best_config: the base config with the best trial's parameters (base epochs kept).
        best_params: the winning parameters by dotted config key.
        best_value: the winner's validation NDCG@10.
        trials: one dict per trial (number, value, seconds, state, params).
        config_path, trials_path: where the YAML config and the CSV table were written.
    """

    best_config: Config
    best_params: dict[str, Any]
    best_value: float
    trials: list[dict[str, Any]]
    config_path: Path
    trials_path: Path


def suggest(trial: Any) -> dict[str, Any]:
    """Sample one point of the search space, as dotted config keys."""
    width = trial.suggest_categorical("ranking.width", [64, 128, 256])
    return {
        "retrieval.dim": trial.suggest_categorical("retrieval.dim", [32, 64, 128]),
        "retrieval.lr": trial.suggest_float("retrieval.lr", 1e-3, 1e-2, log=True),
        "retrieval.temperature": trial.suggest_float("retrieval.temperature", 0.02, 0.2, log=True),
        "ranking.hidden": [width, max(8, width // 2)],
        "content.title_weight": trial.suggest_float("content.title_weight", 0.0, 3.0),
        "content.genre_weight": trial.suggest_float("content.genre_weight", 0.0, 3.0),
        "content.tag_weight": trial.suggest_float("content.tag_weight", 0.0, 3.0),
        "content.description_weight": trial.suggest_float("content.description_weight", 0.0, 3.0),
    }


def apply(config: Config, params: dict[str, Any]) -> Config:
    """A copy of ``config`` with dotted-key ``params`` set (validated by the config models)."""
    out = config.model_copy(deep=True)
    for key, value in params.items():
        section, name = key.split(".")
        setattr(getattr(out, section), name, value)
    return out


def validation_ndcg(bundle: Path, val: Dataset, k: int = 10, rank: bool = True) -> float:
    """NDCG@k of a bundle's ranked order (retrieval order with ``rank=False``; training items
    excluded) on held-out ratings."""
    from recommender import HybridRecommender

    model = HybridRecommender.load(bundle)
    rel = val.to_csr().tocsr()
    users = np.flatnonzero(np.diff(rel.indptr) > 0)
    ids, _ = model.recommend_batch(users, k, rank=rank)
    return float(topn_metrics(ids, rel[users], k, n_items=model.n_items)[f"ndcg@{k}"])


def tune(
    ds: Dataset,
    trials: int,
    out: str | Path,
    base: Config | None = None,
    trial_epochs: tuple[int, int] = (5, 3),
    val_fraction: float = 0.1,
    seed: int = 42,
    show_progress: bool = True,
    workdir: str | Path | None = None,
    prune: bool = True,
) -> TuneResult:
    """Search hyper-parameters on a validation split of ``ds`` and write the best config.

    Args:
        ds: training data only (the validation split is carved from it).
        trials: number of Optuna trials (TPE sampler, seeded).
        out: YAML path for the best config; the trial table goes beside it as ``.csv`` and the
            Optuna study (SQLite) as ``.db``, which a rerun resumes.
        base: the config the search starts from (defaults); unsearched settings keep its values.
        trial_epochs: caps on (retrieval, ranking) epochs inside trials, to keep them cheap.
        val_fraction: share of each user's ratings held out for validation.
        seed: seeds the split, the sampler and every trial's training.
        show_progress: an Optuna progress bar over trials.
        workdir: where trial bundles are written (a temporary directory when None); each trial
            deletes its bundle once scored.
        prune: stop trials whose retrieval-only score is below the median of earlier trials.
    Returns:
        The :class:`TuneResult`.
    Raises:
        ValueError: ``trials`` < 1, a validation split with no held-out ratings, or a stored
            study made on other data.
    """
    import shutil

    import optuna

    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    base = (base or Config()).model_copy(deep=True)
    base.seed = seed
    train, val = validation_split(ds, val_fraction, seed)
    if len(val.ratings) == 0:
        raise ValueError(f"{ds.name}: the validation split holds no ratings (too few ratings per user)")
    log.info("tuning on %r, validating on %d held-out ratings, %d trials", train, len(val.ratings), trials)
    cheap = base.model_copy(deep=True)
    cheap.retrieval.epochs = min(base.retrieval.epochs, trial_epochs[0])
    cheap.ranking.epochs = min(base.ranking.epochs, trial_epochs[1])
    cheap.trainer.progress = False
    cheap.ranking.rating.enabled = False  # not part of the ranked order a trial is scored on
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from movierec.pipeline import train as train_pipeline

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _open_study(optuna, out.with_suffix(".db"), seed, prune, fingerprint=f"{ds.fingerprint()}|val={val_fraction}")
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    remaining = max(0, trials - len(finished))
    if finished:
        log.info("resuming study %s: %d of %d trials done, %d to run", out.with_suffix(".db"), len(finished), trials, remaining)

    with tempfile.TemporaryDirectory(prefix="movierec-tune-", dir=workdir) as tmp:

        def objective(trial: optuna.Trial) -> float:
            params = suggest(trial)
            config = apply(cheap, params)
            trial.set_user_attr("params", params)
            t = time.perf_counter()
            if config.ranking.enabled and prune:
                retrieval_only = config.model_copy(deep=True)
                retrieval_only.ranking.enabled = False
                path = train_pipeline(train, Path(tmp) / f"trial-{trial.number}-retrieval", retrieval_only)
                early = validation_ndcg(path, val, rank=False)
                shutil.rmtree(path, ignore_errors=True)
                trial.report(early, step=0)
                if trial.should_prune():
                    trial.set_user_attr("seconds", round(time.perf_counter() - t, 1))
                    log.info("trial %d pruned: retrieval-only %s=%.4f", trial.number, METRIC, early)
                    raise optuna.TrialPruned()
            path = train_pipeline(train, Path(tmp) / f"trial-{trial.number}", config)
            value = validation_ndcg(path, val)
            shutil.rmtree(path, ignore_errors=True)
            secs = time.perf_counter() - t
            trial.set_user_attr("seconds", round(secs, 1))
            log.info("trial %d: %s=%.4f in %.0fs %s", trial.number, METRIC, value, secs, params)
            return value

        if remaining:
            study.optimize(objective, n_trials=remaining, show_progress_bar=show_progress, catch=(RuntimeError, FloatingPointError))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RuntimeError("every tuning trial failed; see the log above")
    best_params = dict(study.best_trial.user_attrs["params"])
    best = apply(base, best_params)
    out.write_text(
        f"# movierec tune: best of {len(done)} trials, validation {METRIC} {study.best_value:.4f}\n"
        + yaml.safe_dump(dump_config(best), sort_keys=False)
    )
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            METRIC: t.value,
            "seconds": t.user_attrs.get("seconds"),
            **{k: (v if not isinstance(v, list) else "|".join(map(str, v))) for k, v in t.user_attrs.get("params", {}).items()},
        }
        for t in study.trials
    ]
    import pandas as pd

    trials_path = out.with_suffix(".csv")
    pd.DataFrame(rows).to_csv(trials_path, index=False)
    log.info("best %s=%.4f (trial %d); config -> %s, trials -> %s", METRIC, study.best_value, study.best_trial.number, out, trials_path)
    return TuneResult(best, best_params, float(study.best_value), rows, out, trials_path)


STUDY_NAME = "movierec-tune"


def _open_study(optuna: Any, path: Path, seed: int, prune: bool, fingerprint: str) -> Any:
    """The study stored at ``path`` (SQLite), created when missing. Trials that were running when
    an earlier run was killed are marked failed, so they are run again (one ``tune`` per study at
    a time)."""
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=f"sqlite:///{path.resolve()}",
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if prune else optuna.pruners.NopPruner(),
    )
    stored = study.user_attrs.get("data")
    if stored is None:
        study.set_user_attr("data", fingerprint)
    elif stored != fingerprint:
        raise StudyError(f"{path}: this study was run on other data or another validation split; give another --out or delete it")
    for t in study.trials:
        if t.state == optuna.trial.TrialState.RUNNING:  # cut off by a kill
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return study
