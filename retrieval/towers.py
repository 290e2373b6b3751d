"""The two towers as plain ``nn.Module``s (no Lightning), so serving can load their weights.

Query side (:class:`UserTower`): user id embedding + pooled embedding of the user's rated
movies + pooled content vectors of those movies + user features. Candidate side
(:class:`ItemTower`): item id embedding + genre multi-hot + content vector. Both end in an MLP and
L2 normalisation, so a dot product is a cosine score.

Id dropout (training only) zeroes the id embedding for a share of rows: a movie nobody rated
(cold item) or a user known only by a few liked movies (new user) then still gets a vector that
the model has learned to use.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from retrieval.dropout import Dropout
from retrieval.inputs import Histories, user_batch


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden),
        nn.LayerNorm(hidden),
        nn.GELU(),
        Dropout(dropout),
        nn.Linear(hidden, d_out),
    )


def _id_table(n: int, dim: int) -> nn.Embedding:
    table = nn.Embedding(max(n, 1), dim)
    nn.init.normal_(table.weight, std=0.05)
    return table


def _id_vectors(table: nn.Embedding, idx: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Id embeddings times the keep mask; out-of-table ids (added later) must have keep 0."""
    return table(idx.clamp(0, table.num_embeddings - 1)) * keep[:, None]


def _drop_ids(has_id: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """(B,) float mask: 1 keeps the id embedding, 0 removes it."""
    mask = has_id.float()
    if training and p > 0:
        mask = mask * (torch.rand_like(mask) >= p).float()
    return mask


class _WeightedBag(torch.autograd.Function):
    """``F.embedding_bag(items, table, per_sample_weights=weights, mode="sum")`` with a cheaper
    gradient of ``table`` on CPU.

    The embedding bag's own backward sorts the B x L indices to group them by row, a visible
    share of a training step. The gradient is ``W.T @ grad``, where W is the
    (B, rows) matrix of the weights; W's CSR arrays are the padded (B, L) layout as it is (row
    pointers 0, L, 2L, ...), so W.T is a CSC matrix built without a sort, and scipy's CSC-times-
    dense product scatters each bag's gradient into the rows it names, with no sort.
    """

    @staticmethod
    def forward(ctx, table, items, weights, padding_idx):  # type: ignore[override]
        ctx.save_for_backward(items, weights)
        ctx.rows, ctx.padding_idx = table.shape[0], padding_idx
        return _bag_sum(table.detach(), items, weights, padding_idx)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        items, weights = ctx.saved_tensors
        b, length = items.shape
        w_t = sp.csc_matrix(
            (weights.numpy().ravel(), items.numpy().ravel(), np.arange(0, b * length + 1, length)), shape=(ctx.rows, b)
        )
        grad_table = torch.from_numpy(np.asarray(w_t @ grad.numpy(), dtype=np.float32))
        if ctx.padding_idx is not None:
            grad_table[ctx.padding_idx] = 0.0  # as the embedding bag: the padding row never learns
        return grad_table, None, None, None


def _bag_sum(table: torch.Tensor, items: torch.Tensor, weights: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
    """Weighted sums of ``table``'s rows; ``table`` must not require grad.

    ``embedding_bag`` takes a slower path when given a ``padding_idx``; while the padding row is
    all zeros (as the bag keeps it: it is zeroed at init and gets no gradient) it adds nothing to
    a sum, so it need not be skipped.
    """
    if padding_idx is not None and not bool(table[padding_idx].any()):
        padding_idx = None
    return F.embedding_bag(items, table, per_sample_weights=weights, mode="sum", padding_idx=padding_idx)


def _weighted_bag(bag: nn.EmbeddingBag, items: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, dim) weighted sums of ``bag``'s rows named by ``items`` (B, L); see :class:`_WeightedBag`."""
    table = bag.weight
    # anything outside a float32 sum bag on CPU (another device or dtype, weights that want a
    # gradient) takes the module's own path
    plain = bag.mode == "sum" and bag.max_norm is None and items.dim() == 2 and table.device.type == "cpu" and table.dtype == torch.float32
    if not plain or weights.requires_grad:
        return bag(items, per_sample_weights=weights)
    if table.requires_grad and torch.is_grad_enabled():
        return _WeightedBag.apply(table, items, weights, bag.padding_idx)
    return _bag_sum(table.detach(), items, weights, bag.padding_idx)


class ItemTower(nn.Module):
    """Candidate tower: (item_idx, has_id, genres (B,G), content (B,C)) -> (B, dim) unit vectors."""

    def __init__(
        self,
        n_items: int,
        n_genres: int,
        content_dim: int,
        dim: int = 64,
        hidden: int = 128,
        id_dropout: float = 0.3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.id_dropout = id_dropout
        self.id_emb = _id_table(n_items, dim)
        self.genre = nn.Linear(max(n_genres, 1), dim, bias=False)
        self.content = nn.Linear(max(content_dim, 1), dim, bias=False)
        self.mlp = _mlp(3 * dim, hidden, dim, dropout)

    def forward(
        self, item_idx: torch.Tensor, has_id: torch.Tensor, genres: torch.Tensor, content: torch.Tensor
    ) -> torch.Tensor:
        keep = _drop_ids(has_id, self.id_dropout, self.training)
        ids = _id_vectors(self.id_emb, item_idx, keep)
        x = torch.cat([ids, self.genre(genres), self.content(content)], dim=1)
        return F.normalize(self.mlp(x), dim=-1)


def recency_weights(hist_items: torch.Tensor, hist_weights: torch.Tensor, length: int, decay: float) -> torch.Tensor:
    """(B, L) pooling weights over the ``length`` most recent entries of each history row:
    ``decay ** k`` for the entry k places before the newest (k = 0), 0 elsewhere, rows summing to 1
    (all zeros for an empty row).

    Rows are oldest first, with -1 (or weight 0) anywhere (right padding, a dropped target in the
    middle), so the place from the newest counts the valid entries after each one, not its column.
    """
    valid = (hist_items >= 0) & (hist_weights > 0)
    v = valid.to(torch.float32)
    after = v.flip(1).cumsum(1).flip(1) - v  # valid entries newer than this one
    w = torch.where(valid & (after < length), torch.pow(torch.tensor(decay, dtype=torch.float32), after), torch.zeros_like(v))
    return w / w.sum(1, keepdim=True).clamp(min=1e-12)


class UserTower(nn.Module):
    """Query tower: id, pooled history and user features -> (B, dim) unit vectors.

    History is given as (B, L) item_idx padded with -1 and (B, L) weights (0 on padding); the
    pooled item embeddings and content vectors are the weighted means over the history. With
    ``recent_len`` > 0 a second pooling of the same item embeddings, over the last ``recent_len``
    entries weighted by ``recent_decay`` per place from the newest, gives the tower the order of
    the history (what a sequential model reads: the next movies follow the latest ones); the
    plain mean does not change when the history is reversed.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        content_dim: int,
        n_user_features: int,
        dim: int = 64,
        hidden: int = 128,
        id_dropout: float = 0.3,
        dropout: float = 0.1,
        recent_len: int = 0,
        recent_decay: float = 0.8,
    ) -> None:
        super().__init__()
        self.id_dropout = id_dropout
        self.recent_len, self.recent_decay = int(recent_len), float(recent_decay)
        self.id_emb = _id_table(n_users, dim)
        self.hist_emb = nn.EmbeddingBag(max(n_items, 1) + 1, dim, mode="sum", padding_idx=0)
        nn.init.normal_(self.hist_emb.weight, std=0.05)
        with torch.no_grad():
            self.hist_emb.weight[0].zero_()
        self.hist_content = nn.Linear(max(content_dim, 1), dim, bias=False)
        self.n_user_features = n_user_features
        self.features = nn.Linear(max(n_user_features, 1), dim) if n_user_features else None
        n_parts = 3 + bool(n_user_features) + bool(self.recent_len)
        self.mlp = _mlp(n_parts * dim, hidden, dim, dropout)

    def forward(
        self,
        user_idx: torch.Tensor,
        has_id: torch.Tensor,
        hist_items: torch.Tensor,
        hist_weights: torch.Tensor,
        hist_content: torch.Tensor,
        user_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
        user_idx: (B,) internal user index (any value where ``has_id`` is 0).
        has_id: (B,) 1 for users seen in training.
        hist_items: (B, L) item_idx, -1 for padding.
        hist_weights: (B, L) non-negative pooling weights, 0 on padding.
        hist_content: (B, C) pooled content vector of the history (precomputed by the caller
            so that items added after training can contribute).
        user_features: (B, F) encoded user features, zeros when unknown.
        """
        keep = _drop_ids(has_id, self.id_dropout, self.training)
        ids = _id_vectors(self.id_emb, user_idx, keep)
        w = hist_weights / hist_weights.sum(1, keepdim=True).clamp(min=1e-6)
        hist = _weighted_bag(self.hist_emb, hist_items + 1, w)
        parts = [ids, hist, self.hist_content(hist_content)]
        if self.recent_len:
            parts.append(_weighted_bag(self.hist_emb, hist_items + 1, recency_weights(hist_items, hist_weights, self.recent_len, self.recent_decay)))
        if self.features is not None:
            feats = user_features if user_features is not None else hist.new_zeros(len(hist), self.n_user_features)
            parts.append(self.features(feats))
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=-1)


@torch.no_grad()
def encode_items(
    tower: ItemTower,
    genres: torch.Tensor,
    content: torch.Tensor,
    has_id: torch.Tensor,
    batch_size: int = 8192,
) -> torch.Tensor:
    """(n_items, dim) vectors for every item, in eval mode, in batches."""
    was_training = tower.training
    tower.eval()
    out = []
    n = len(genres)
    for s in range(0, n, batch_size):
        idx = torch.arange(s, min(n, s + batch_size))
        out.append(tower(idx, has_id[idx], genres[idx], content[idx]))
    tower.train(was_training)
    return torch.cat(out) if out else genres.new_zeros((0, tower.mlp[-1].out_features))


@torch.no_grad()
def encode_all_users(
    tower: UserTower,
    histories: Histories,
    content: np.ndarray,
    user_features: np.ndarray,
    n_model_items: int,
    history_len: int,
    batch_size: int = 4096,
) -> np.ndarray:
    """(n_users, dim) query vectors from each user's most recent history."""
    tower.eval()
    out = []
    for s in range(0, histories.n_users, batch_size):
        users = np.arange(s, min(histories.n_users, s + batch_size))
        hist = histories.padded(users, history_len)
        b = user_batch(users, hist, content, user_features[users], np.ones(len(users)), n_model_items)
        out.append(tower(b["user_idx"], b["has_id"], b["hist_items"], b["hist_weights"], b["hist_content"], b.get("user_features")).numpy())
    return np.concatenate(out) if out else np.zeros((0, tower.mlp[-1].out_features), np.float32)
