"""The ranking network: a plain ``nn.Module`` (no Lightning) so serving can load its weights.

Input per (user, candidate): the normalised dense features of ``ranking.features`` plus learned
user and item id embeddings and their product. DCN-v2 style cross layers (Wang et al. 2021:
``x_{l+1} = x_0 * (W x_l + b) + x_l``) learn explicit feature crosses such as "two-tower score
x collaborative score", then an MLP with layer norm and dropout feeds two heads: a ranking score
(order within a user's candidate list) and a rating prediction on the data's scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RankerNet(nn.Module):
    """Scores (user, candidate) pairs.

    Args:
        n_dense: dense feature columns.
        n_users, n_items: sizes of the id tables at training; ids outside them (new users,
            run-time items, padding) share one "unknown" row each.
        emb_dim: id embedding size; 0 switches id embeddings off.
        hidden: MLP widths.
        cross_layers: number of DCN-v2 cross layers.
        dropout: dropout after each hidden layer.
        rating_center, rating_scale: the rating head predicts ``center + scale * out``.
        base_column: dense column the score starts from (residual ranking); -1 for none.
    """

    def __init__(
        self,
        n_dense: int,
        n_users: int,
        n_items: int,
        emb_dim: int = 16,
        hidden: list[int] | tuple[int, ...] = (128, 64),
        cross_layers: int = 2,
        dropout: float = 0.1,
        rating_center: float = 3.0,
        rating_scale: float = 1.0,
        base_column: int = -1,
    ) -> None:
        super().__init__()
        self.base_column = base_column
        self.n_users, self.n_items, self.emb_dim = n_users, n_items, emb_dim
        if emb_dim > 0:
            self.user_emb = nn.Embedding(n_users + 1, emb_dim)
            self.item_emb = nn.Embedding(n_items + 1, emb_dim)
            nn.init.normal_(self.user_emb.weight, std=0.01)
            nn.init.normal_(self.item_emb.weight, std=0.01)
        d_in = n_dense + 3 * emb_dim
        self.cross = nn.ModuleList(nn.Linear(d_in, d_in) for _ in range(cross_layers))
        layers: list[nn.Module] = []
        d = d_in
        for h in hidden:
            layers += [nn.Linear(d, h), nn.LayerNorm(h), nn.ReLU(), nn.Dropout(dropout)]
            d = h
        self.mlp = nn.Sequential(*layers)
        self.score_head = nn.Linear(d + d_in, 1)
        self.rating_head = nn.Linear(d + d_in, 1)
        if base_column >= 0:
            # residual ranking: start from one strong feature's order (the item-item score) and
            # learn corrections on top, so a small training set cannot make the order worse
            # than that feature alone without early stopping seeing it
            self.base_weight = nn.Parameter(torch.tensor(2.0))
            nn.init.zeros_(self.score_head.weight)
            nn.init.zeros_(self.score_head.bias)
        self.register_buffer("rating_center", torch.tensor(float(rating_center)))
        self.register_buffer("rating_scale", torch.tensor(float(rating_scale)))

    def _ids(self, idx: torch.Tensor, n: int) -> torch.Tensor:
        return torch.where((idx >= 0) & (idx < n), idx, n)

    def forward(self, dense: torch.Tensor, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score and rating of each pair.

        Args:
            dense: (B, C, F) normalised features.
            users: (B,) user_idx (-1 = unknown).
            items: (B, C) item_idx (-1 = padding).
        Returns:
            (score, rating), each (B, C).
        """
        h = self.head_input(dense, users, items)
        score = self.score_head(h).squeeze(-1)
        if self.base_column >= 0:
            score = score + self.base_weight * dense[..., self.base_column]
        rating = self.rating_center + self.rating_scale * self.rating_head(h).squeeze(-1)
        return score, rating

    def head_input(self, dense: torch.Tensor, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B, C, H) shared input of both heads: MLP output next to the crossed features."""
        x0 = dense
        if self.emb_dim > 0:
            u = self.user_emb(self._ids(users, self.n_users))[:, None, :].expand(-1, items.shape[1], -1)
            i = self.item_emb(self._ids(items, self.n_items))
            x0 = torch.cat([dense, u, i, u * i], dim=-1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return torch.cat([self.mlp(x), x], dim=-1)

    @torch.inference_mode()
    def score(self, dense: torch.Tensor, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``forward(...)[0]`` in eval mode, calling the layers' functions directly.

        A request scores ~100 pairs, where per-module call overhead and the rating head (which
        re-ranking does not read) cost as much as the arithmetic. Same operations in the same
        order as :meth:`forward`, so the same numbers; in training mode it is ``forward``.
        """
        if self.training:
            return self.forward(dense, users, items)[0]
        x0 = dense
        if self.emb_dim > 0:
            u = _embed(self.user_emb, self._ids(users, self.n_users))[:, None, :].expand(-1, items.shape[1], -1)
            i = _embed(self.item_emb, self._ids(items, self.n_items))
            x0 = torch.cat([dense, u, i, u * i], dim=-1)
        x = x0
        for layer in self.cross:
            x = x0 * F.linear(x, layer.weight, layer.bias) + x
        h = x
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                h = F.linear(h, layer.weight, layer.bias)
            elif isinstance(layer, nn.LayerNorm):
                h = F.layer_norm(h, layer.normalized_shape, layer.weight, layer.bias, layer.eps)
            elif isinstance(layer, nn.ReLU):
                h = torch.relu(h)
            elif not isinstance(layer, nn.Dropout):  # dropout is the identity in eval mode
                h = layer(h)
        score = F.linear(torch.cat([h, x], dim=-1), self.score_head.weight, self.score_head.bias).squeeze(-1)
        if self.base_column >= 0:
            score = score + self.base_weight * dense[..., self.base_column]
        return score


def _embed(emb: nn.Embedding, idx: torch.Tensor) -> torch.Tensor:
    return F.embedding(idx, emb.weight, emb.padding_idx, emb.max_norm, emb.norm_type, emb.scale_grad_by_freq, emb.sparse)


TIE_BREAK = 1e-3
"""Least weight of the learned order: with ``alpha = 0`` it only orders candidates the base scores
alike (movies without ratings all have an item-item score of 0), never reorders the others."""


def _z_valid(score: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Standardise each row of ``score`` over its valid entries (0 elsewhere)."""
    n = valid.sum(-1, keepdim=True).clamp(min=1)
    s = torch.where(valid, score, torch.zeros_like(score))
    mean = s.sum(-1, keepdim=True) / n
    var = (torch.where(valid, score - mean, torch.zeros_like(score)) ** 2).sum(-1, keepdim=True) / n
    return torch.where(valid, (score - mean) / (var + 1e-12).sqrt(), torch.zeros_like(score))


class GuardedRanker(nn.Module):
    """Several :class:`RankerNet` s averaged, then shrunk towards one strong base feature.

    ``score = alpha * mean_k z(net_k) + (1 - alpha) * dense[..., base_column]``, with ``z`` the
    score standardised within each candidate list. The base column is the item-item (EASE)
    score, already standardised within the list, so ``alpha = 0`` orders every list as that
    model does (the nets only break its ties, see :data:`TIE_BREAK`); training picks ``alpha`` on lists no member net was trained on
    (``ranking.ranker.choose_alpha``), so the learned order replaces the base only as far as it
    beat it there. The members are trained on different users (cross-fitted), and their average
    is steadier than any one of them.

    Args:
        nets: the member nets (same inputs).
        alpha: weight of the nets' order; 1 with no base column.
        base_column: dense column of the base score, or -1 for none.
    """

    def __init__(self, nets: list[RankerNet], alpha: float = 1.0, base_column: int = -1) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.alpha = float(alpha) if base_column >= 0 else 1.0
        self.base_column = base_column
        self.register_buffer("rating_center", nets[0].rating_center.clone())
        self.register_buffer("rating_scale", nets[0].rating_scale.clone())

    def blend(self, scores: list[torch.Tensor], dense: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        valid = items >= 0
        learned = torch.stack([_z_valid(s, valid) for s in scores]).mean(0)
        if self.alpha >= 1.0:
            return learned
        a = max(self.alpha, TIE_BREAK)
        return a * learned + (1.0 - a) * dense[..., self.base_column]

    def forward(self, dense: torch.Tensor, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [net(dense, users, items) for net in self.nets]
        rating = torch.stack([r for _, r in outs]).mean(0)
        return self.blend([s for s, _ in outs], dense, items), rating

    @torch.inference_mode()
    def score(self, dense: torch.Tensor, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.blend([net.score(dense, users, items) for net in self.nets], dense, items)
