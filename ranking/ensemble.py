"""The ranker's member nets, cross-fitted over users, and the weight of their order against
the base (EASE) order, chosen on lists no member trained on (:func:`fit_guarded`,
:class:`~ranking.net.GuardedRanker`): where the features add nothing beyond EASE, the order
stays EASE's."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from movierec.core.config import RankingConfig, TrainerConfig
from ranking.background import BackgroundWorker
from ranking.features import _z_within
from ranking.lists import Lists
from ranking.member import fit_member, net_scores
from ranking.net import TIE_BREAK, GuardedRanker, RankerNet

log = logging.getLogger(__name__)


ALPHAS = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))
"""Weights of the learned order against the base (EASE) order that training chooses from."""


def _list_ndcg(scores: np.ndarray, lists: Lists, rows: np.ndarray, k: int = 10, pool: bool = False) -> np.ndarray:
    """NDCG@k of each list's order by ``scores`` (n, W) over its loss candidates (labels: held-out
    items), NaN for lists without a held-out item among them.

    ``pool``: order only the candidates a request would rank (no random negatives) and count
    every held-out item in the ideal, retrieved or not: full-ranking NDCG@10 of the served list.
    """
    pooled = pool and lists.retrieved is not None
    inl = (lists.retrieved[rows] if pooled else lists.in_loss[rows]) & (lists.cand[rows] >= 0)
    lab = lists.label[rows] & inl
    s = np.where(inl, scores, -np.inf)
    kk = min(k, s.shape[1])
    top = np.argsort(-s, axis=1, kind="stable")[:, :kk]
    disc = 1.0 / np.log2(np.arange(2, kk + 2))
    dcg = (np.take_along_axis(lab, top, 1) * disc).sum(1)
    n_rel = (lists.label[rows] & (lists.cand[rows] >= 0)).sum(1) if pooled else lab.sum(1)
    ideal = np.cumsum(disc)[np.clip(n_rel, 1, kk) - 1]
    return np.where(n_rel > 0, dcg / ideal, np.nan)


def choose_alpha(scores: np.ndarray, base: np.ndarray | None, lists: Lists, rows: np.ndarray) -> tuple[float, dict[float, float]]:
    """The weight of the learned order against the base order: the smallest weight whose mean
    NDCG@10 is within one standard error of the best weight's (the one-standard-error rule).

    ``scores`` are the nets' scores of lists none of them trained on, ``base`` the base column
    (the within-list standardised EASE score). Both are standardised over the candidate pool a
    request would rank, as :class:`GuardedRanker` sees them, and each weight is scored by
    NDCG@10 of that pool against every held-out item (:func:`_list_ndcg` with ``pool``): the
    served order, not the order among the training lists' random negatives, which favoured the
    nets. The standard error is that of the per-list difference to the best weight. Leaning to
    the base is deliberate: the lists come from a snapshot without the held-out ratings, whose
    EASE is weaker than the one served from all of them, so these lists overrate the nets (on
    validation the best served weight sits below the one these lists pick). Without a base the learned order is all there is.
    """
    if base is None or not len(rows):
        return 1.0, {1.0: float(np.nanmean(_list_ndcg(scores, lists, rows, pool=True))) if len(rows) else float("nan")}
    valid = lists.cand[rows] >= 0
    if lists.retrieved is not None:
        valid &= lists.retrieved[rows]
        base = _z_within(base, valid)
    z = _z_within(scores, valid)  # as GuardedRanker standardises the nets' order
    per_list = {}
    for a in ALPHAS:
        w = max(a, TIE_BREAK)  # as GuardedRanker scores
        per_list[a] = _list_ndcg(w * z + (1 - w) * base, lists, rows, pool=True)
    curve = {a: float(np.nanmean(v)) for a, v in per_list.items()}
    best = max(curve, key=lambda a: (curve[a], -a))
    for a in ALPHAS:  # ascending: the first weight close enough to the best
        diff = per_list[best] - per_list[a]
        diff = diff[np.isfinite(diff)]
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        if curve[a] >= curve[best] - se - 1e-9:
            return a, curve
    return best, curve


def _member_task(payload: tuple, k: int) -> tuple[RankerNet, dict[str, float], np.ndarray, np.ndarray]:
    """Member ``k`` of :func:`fit_guarded`: its net, training numbers, and its scores of the
    rows it did not train on. Module-level and seeded by ``k``, so it can run in either process."""
    x, lists, users, perm, groups, hparams, config, trainer_config, seed, log_dir = payload
    torch.set_num_threads(config.threads)
    group = groups[k]
    rest = np.setdiff1d(perm, group, assume_unique=True) if len(group) else perm
    rest = rest[np.random.default_rng([seed, k]).permutation(len(rest))]
    n_val = max(1, int(round(len(rest) * config.val_fraction))) if len(rest) > 1 else 0
    fit_rows = np.flatnonzero(np.isin(lists.users, users[rest[n_val:]]))
    val_rows = np.flatnonzero(np.isin(lists.users, users[rest[:n_val]]))
    scored_rows = np.flatnonzero(np.isin(lists.users, users[group])) if len(group) else val_rows
    module, m = fit_member(x, lists, fit_rows, val_rows, hparams, config, trainer_config, seed + k, log_dir if k == 0 else None)
    return module.net, m, scored_rows, net_scores(module.net, x, lists, scored_rows)


def fit_guarded(
    x: np.ndarray,
    lists: Lists,
    hparams: dict[str, Any],
    base_col: int,
    config: RankingConfig,
    trainer_config: TrainerConfig,
    seed: int,
    log_dir: str | Path | None = None,
    worker: BackgroundWorker | None = None,
) -> tuple[GuardedRanker, dict[float, float], list[dict[str, float]]]:
    """Cross-fitted member nets and the weight of their order against the base column.

    Users are dealt into ``config.ensemble`` groups; member k trains on the other groups' lists
    (early stopping on a share of those users) and scores group k, so every list gets a score
    from a net that never saw it, and :func:`choose_alpha` picks the weight on all of them. With
    one member, the early-stopping users are the ones scored.

    Args:
        x: (n, W, F) normalised features of ``lists``.
        base_col: feature column of the base order (-1: none, the nets' order is used as is).
        worker: a second process that trains members when it is free (the same members as
            without it: each is seeded by its index).

    Returns:
        The guarded ranker, the NDCG@10 over the retrieved pool per weight, and each member's training numbers.
    """
    users = np.unique(lists.users)
    perm = np.random.default_rng(seed).permutation(len(users))
    k_members = max(1, min(config.ensemble, len(users)))
    groups = np.array_split(perm, k_members) if k_members > 1 else [np.zeros(0, np.int64)]
    payload = (x, lists, users, perm, groups, hparams, config, trainer_config, seed, log_dir)
    if worker is not None and k_members > 1:
        members = worker.map(_member_task, payload, k_members)
        if worker.last_shared:
            log.info("ranker: member(s) %s of %d trained in the background process", ", ".join(map(str, worker.last_shared)), k_members)
    else:
        members = [_member_task(payload, k) for k in range(k_members)]
    oof = np.full(lists.cand.shape, np.nan, np.float32)
    for _, _, scored_rows, scores in members:
        oof[scored_rows] = scores
    nets = [net for net, *_ in members]
    member_metrics = [m for _, m, *_ in members]
    scored = np.flatnonzero(~np.isnan(oof).all(1))
    alpha, curve = choose_alpha(oof[scored], x[scored, :, base_col] if base_col >= 0 else None, lists, scored)
    net = GuardedRanker(nets, alpha, base_col)
    net.eval()
    return net, curve, member_metrics
