"""The two-tower model's loss: in-batch sampled softmax, with the log-q correction passed in as a
bias and the in-batch duplicates of each query's positive masked out."""

from __future__ import annotations

import numpy as np
import torch


def duplicate_pairs(items: np.ndarray, offset: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the in-batch logits where query ``offset + row``'s positive item appears
    again at another position ``col`` of ``items`` (which must not count as a negative there).

    A batch holds few repeated items, so listing the pairs is much cheaper than comparing every
    query with every candidate.
    """
    order = np.argsort(items, kind="stable")
    s = items[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    counts = np.diff(np.r_[starts, len(s)])
    group = np.repeat(np.arange(len(starts)), counts)
    multi = np.flatnonzero(counts[group] > 1)  # sorted positions whose item repeats
    if not len(multi):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    reps = counts[group[multi]]
    pos = np.repeat(multi, reps)
    within = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
    rows, cols = order[pos], order[np.repeat(starts[group[multi]], reps) + within]
    keep = (rows != cols) & (rows >= offset) & (rows < offset + n)
    return (rows[keep] - offset).astype(np.int64), cols[keep].astype(np.int64)


class _InBatchSoftmax(torch.autograd.Function):
    """Forward and backward of :func:`in_batch_softmax_loss` with the (n, m) logits written once.

    Autograd through ``mm``, ``sub``, ``index_put`` and ``cross_entropy`` copied the logits twice
    (``index_put`` clones them forward and its backward clones their gradient), zero-filled an
    (n, m) gradient for the one-hot target and ran the log-softmax backward: a large share of a
    training step. Here the logits are shifted, masked and turned into
    log-probabilities in their own buffer, and the backward turns those into
    ``softmax - one_hot`` in place before the two matrix products.
    """

    @staticmethod
    def forward(ctx, queries, candidates, bias, rows, cols, target):  # type: ignore[override]
        logits = queries @ candidates.T
        logits.sub_(bias)
        if len(rows):
            logits.index_put_((rows, cols), logits.new_tensor(float("-inf")))
        # in place on CPU (the out= form of the op behind log_softmax; the CPU kernel takes a row's
        # maximum and sum before writing it; the test checks it): one (n, m) buffer per step, not two
        if logits.device.type == "cpu":
            log_p = torch._log_softmax(logits, 1, False, out=logits)
        else:
            log_p = torch.log_softmax(logits, dim=1)
        picked = torch.arange(len(target), device=target.device)
        ctx.save_for_backward(queries, candidates, log_p, target)
        return -log_p[picked, target].mean()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        queries, candidates, log_p, target = ctx.saved_tensors
        # d loss / d logits = (softmax - one_hot) / n; masked pairs have probability exp(-inf) = 0.
        # In place: the saved log-probabilities are not needed again (a second backward through
        # the same graph fails on the saved tensor's version check instead of computing garbage)
        grad_logits = log_p.exp_()
        picked = torch.arange(len(target), device=target.device)
        grad_logits[picked, target] -= 1.0
        scale = grad / len(target)  # the (n, dim) products are scaled, not the (n, m) matrix
        grad_q = (grad_logits @ candidates).mul_(scale) if ctx.needs_input_grad[0] else None
        grad_c = (grad_logits.T @ queries).mul_(scale) if ctx.needs_input_grad[1] else None
        return grad_q, grad_c, None, None, None, None


def in_batch_softmax_loss(
    queries: torch.Tensor, candidates: torch.Tensor, bias: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of the in-batch logits ``queries @ candidates.T - bias`` with the pairs
    ``(rows, cols)`` masked to -inf: ``F.cross_entropy(logits.index_put((rows, cols), -inf), target)``
    up to float rounding, in less CPU time (:class:`_InBatchSoftmax`; ``benchmarks/two_tower_step.py``
    times both).

    Args:
        queries: (n, dim) query vectors (already divided by the temperature).
        candidates: (m, dim) candidate vectors.
        bias: (m,) subtracted from every row (the log-q correction); no gradient.
        rows, cols: (k,) int64 pairs that are not negatives (the query's positive repeated).
        target: (n,) int64 column of each query's positive.
    """
    if bias.requires_grad:
        raise ValueError("in_batch_softmax_loss: the bias gets no gradient; pass a detached tensor")
    return _InBatchSoftmax.apply(queries, candidates, bias, rows, cols, target)
