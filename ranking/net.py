"""The ranking network: a plain ``nn.Module`` (no Lightning) so serving can load its weights.

Input per (user, candidate): the normalised dense features of ``ranking.features`` plus learned
user and item id embeddings and their product. DCN-v2 style cross layers (Wang et al. 2021:
``x_{l+1} = x_0 * (W x_l + b) + x_l``) learn explicit feature crosses such as "two-tower score
x collaborative score", then an MLP with layer norm and dropout feeds two heads: a ranking score
(order within a user's candidate list) and a rating prediction on the data's scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.dropout import Dropout


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
            layers += [nn.Linear(d, h), nn.LayerNorm(h), nn.ReLU(), Dropout(dropout)]
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
                h = torch.relu_(h) if h is not x else torch.relu(h)  # in place on this call's own tensors: one allocation fewer
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


def _z_full(score: torch.Tensor) -> torch.Tensor:
    """:func:`_z_valid` of rows without padding: the same operations less the masking, which
    would keep every value (a request's list is one such row, and each torch call has a fixed cost)."""
    n = score.shape[-1]
    mean = score.sum(-1, keepdim=True) / n
    d = score - mean
    return d / ((d**2).sum(-1, keepdim=True) / n + 1e-12).sqrt()


class GuardedRanker(nn.Module):
    """Several :class:`RankerNet` s averaged, then shrunk towards one strong base feature.

    ``score = alpha * mean_k z(net_k) + (1 - alpha) * dense[..., base_column]``, with ``z`` the
    score standardised within each candidate list. The base column is the item-item (EASE)
    score, already standardised within the list, so ``alpha = 0`` orders every list as that
    model does (the nets only break its ties, see :data:`TIE_BREAK`); training picks ``alpha`` on lists no member net was trained on
    (``ranking.ensemble.choose_alpha``), so the learned order replaces the base only as far as it
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


class FusedScorer:
    """The eval-mode :meth:`GuardedRanker.score` / :meth:`RankerNet.score` with every member
    net at once.

    A request scores one list of a few hundred candidates, where three member nets called
    layer by layer cost about as much in per-call overhead as in arithmetic. Here the members'
    weights are stacked once: their first layers (which read the same features when there are
    no id embeddings or cross layers) are one matrix product, each later layer one batched
    product, layer norm one call without its affine part (then each member's own scale and
    shift), and the within-list standardisation and blend run on the (members, lists,
    candidates) block. Same operations as ``score`` in float32, so the same numbers up to
    rounding; :meth:`build` checks that on random lists and returns None (the caller keeps
    ``score``) for a layout it does not know or a mismatch.

    Args:
        net: the eval-mode net whose weights are copied (a snapshot: rebuild after changing them).
    """

    def __init__(self, net: RankerNet | GuardedRanker) -> None:
        members = list(net.nets) if isinstance(net, GuardedRanker) else [net]
        self.guarded = isinstance(net, GuardedRanker)
        self.alpha = float(net.alpha) if self.guarded else 1.0
        self.blend_column = int(net.base_column) if self.guarded else -1
        first = members[0]
        self.emb_dim = first.emb_dim
        self.n_users, self.n_items = first.n_users, first.n_items
        self.base_column = first.base_column
        if len({tuple(type(m).__name__ for m in n.mlp) for n in members}) != 1 or any(
            m.emb_dim != first.emb_dim or len(m.cross) != len(first.cross) or m.base_column != first.base_column for m in members
        ):
            raise ValueError("member nets differ in layout")

        def stack(get: Any) -> torch.Tensor:
            return torch.stack([get(m).detach().to(torch.float32) for m in members]).contiguous()

        self.shared_input = first.emb_dim == 0 and len(first.cross) == 0
        if first.emb_dim > 0:
            self.user_emb = stack(lambda m: m.user_emb.weight)  # (M, U + 1, E)
            self.item_emb = stack(lambda m: m.item_emb.weight)
        self.cross = [
            (stack(lambda m, j=j: m.cross[j].weight.T), stack(lambda m, j=j: m.cross[j].bias)[:, None, :])
            for j in range(len(first.cross))
        ]
        self.layers: list[tuple[str, Any]] = []
        for j, layer in enumerate(first.mlp):
            if isinstance(layer, nn.Linear):
                if layer.bias is None:
                    raise ValueError("Linear without bias")
                self.layers.append(("linear", (stack(lambda m, j=j: m.mlp[j].weight.T), stack(lambda m, j=j: m.mlp[j].bias)[:, None, :])))
            elif isinstance(layer, nn.LayerNorm):
                if len(layer.normalized_shape) != 1 or layer.weight is None or layer.bias is None:
                    raise ValueError("unsupported LayerNorm")
                g, b = stack(lambda m, j=j: m.mlp[j].weight), stack(lambda m, j=j: m.mlp[j].bias)
                self.layers.append(("layernorm", (g[:, None, :], b[:, None, :], int(layer.normalized_shape[0]), float(layer.eps))))
            elif isinstance(layer, nn.ReLU):
                self.layers.append(("relu", None))
            elif not isinstance(layer, nn.Dropout):  # dropout is the identity in eval mode
                raise ValueError(f"unsupported layer {type(layer).__name__}")
        self.first: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.shared_input and self.layers and self.layers[0][0] == "linear":
            w, b = self.layers[0][1]  # (M, F, H), (M, 1, H): every member's first layer as one (F, M * H) product
            self.first = (torch.cat(list(w), dim=1).contiguous(), b.reshape(-1).contiguous())
        self.n_members = len(members)
        # layer norm is called with a unit scale and zero shift: the same numbers as without
        # them, but torch runs its vectorised affine kernel, faster at a request's sizes
        self.unit = {h: (torch.ones(h), torch.zeros(h)) for kind, p in self.layers if kind == "layernorm" for h in [p[2]]}
        heads = stack(lambda m: m.score_head.weight[0])  # (M, H + D): [MLP output, crossed input]
        width = next((p[0].shape[-1] for kind, p in reversed(self.layers) if kind == "linear"), None)
        self.width = width if width is not None else heads.shape[1] // 2
        self.head_h = heads[:, : self.width, None].contiguous()  # (M, H, 1)
        self.head_x = heads[:, self.width :].contiguous()  # (M, D)
        self.head_bias = stack(lambda m: m.score_head.bias)  # (M, 1)
        self.base_weight = stack(lambda m: m.base_weight.reshape(1)) if first.base_column >= 0 else None

    @classmethod
    def build(cls, net: RankerNet | GuardedRanker, n_dense: int) -> FusedScorer | None:
        """A scorer equal to ``net.score`` (checked on random lists, padding included), or None."""
        try:
            scorer = cls(net)
            n_items = max(scorer.n_items, 1)
            rng = np.random.default_rng(0)
            dense = rng.normal(size=(3, 9, n_dense)).astype(np.float32)
            users = np.array([0, -1, 10**9], np.int64)
            items = rng.integers(0, n_items, size=(3, 9)).astype(np.int64)
            items[1, 6:] = -1
            items[2, 1:] = -1
            want = net.score(torch.from_numpy(dense), torch.from_numpy(users), torch.from_numpy(items)).numpy()
            got = scorer(dense, users, items)
            if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4):
                return None
            return scorer
        except (ValueError, AttributeError, TypeError, IndexError, RuntimeError):
            return None

    @torch.inference_mode()
    def __call__(self, dense: np.ndarray, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores (B, C) of ``dense`` (B, C, F) normalised features, ``users`` (B,), ``items`` (B, C)."""
        b, c, f = dense.shape
        n = b * c
        m = self.n_members
        flat = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)).reshape(n, f)
        items_t = torch.from_numpy(np.ascontiguousarray(items, dtype=np.int64))
        xs = None  # (M, N, D) per-member input of the MLP when the members' inputs differ
        if not self.shared_input:
            x0 = flat.expand(m, n, f)
            if self.emb_dim > 0:
                u_ids = torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64))
                u_ids = torch.where((u_ids >= 0) & (u_ids < self.n_users), u_ids, self.n_users)
                i_ids = torch.where((items_t >= 0) & (items_t < self.n_items), items_t, self.n_items).reshape(n)
                u = self.user_emb[:, u_ids].repeat_interleave(c, dim=1)  # (M, N, E)
                i = self.item_emb[:, i_ids]
                x0 = torch.cat([x0, u, i, u * i], dim=-1)
            xs = x0
            for w, bias in self.cross:
                xs = x0 * torch.baddbmm(bias, xs, w) + xs
        layers = self.layers
        if self.first is not None:
            w, bias = self.first
            hid = torch.addmm(bias, flat, w).view(n, m, -1)  # (N, M, H): layer norm and ReLU are row-wise
            kind, params = layers[1] if len(layers) > 1 else ("", None)
            if kind == "layernorm":
                g, beta, h, eps = params
                hid = F.layer_norm(hid, (h,), *self.unit[h], eps=eps) * g.view(m, h) + beta.view(m, h)
                layers = layers[2:]
            else:
                layers = layers[1:]
            hid = hid.transpose(0, 1)
        else:
            hid = xs if xs is not None else flat.expand(m, n, f)
        for kind, params in layers:
            if kind == "linear":
                w, bias = params
                hid = torch.baddbmm(bias, hid, w)
            elif kind == "layernorm":
                g, beta, h, eps = params
                hid = torch.addcmul(beta, F.layer_norm(hid, (h,), *self.unit[h], eps=eps), g)
            else:
                hid = torch.relu(hid)
        score = torch.bmm(hid, self.head_h)[..., 0]  # (M, N)
        if xs is None:
            score = score + (flat @ self.head_x.T).T
        else:
            score = score + torch.einsum("mnd,md->mn", xs, self.head_x)
        score = score + self.head_bias
        if self.base_weight is not None:
            score = score + self.base_weight * flat[:, self.base_column]
        score = score.view(m, b, c)
        if not self.guarded:
            return score[0].numpy()
        valid = items_t >= 0
        learned = (_z_full(score) if bool(valid.all()) else _z_valid(score, valid)).mean(0)
        if self.alpha >= 1.0:
            return learned.numpy()
        a = max(self.alpha, TIE_BREAK)
        return (a * learned + (1.0 - a) * flat.view(b, c, f)[..., self.blend_column]).numpy()
