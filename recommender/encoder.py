"""The query vector of one new user (a few liked movies), without the batch machinery.

``RetrievalModel.encode_histories`` serves batches: it pads every history, builds a sparse
averaging matrix for the pooled content and calls the user tower module by module, a large
share of an uncached ``POST /recommendations``. A new user has no id and no features, so the
tower reduces to two means, three small products and the MLP; :class:`NewUserEncoder` computes
exactly that in NumPy with copies of the tower's weights, an order of magnitude faster.
:meth:`NewUserEncoder.build` checks it against ``encode_histories``
on sample histories and returns None (callers keep ``encode_histories``) when the tower has a
layout it does not know or the two disagree, so a change to the tower can make it slower but
never different.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from scipy.special import erf
from torch import nn

from retrieval.towers import recency_weights

log = logging.getLogger(__name__)


class NewUserEncoder:
    """``retrieval.encode_histories([liked])[0]`` for a user the model has never seen.

    Args:
        retrieval: the loaded :class:`retrieval.candidates.RetrievalModel`; its item content
            table is read at call time, so movies added at run time count through their content.
    """

    def __init__(self, retrieval: Any) -> None:
        tower = retrieval.user_tower
        self.retrieval = retrieval
        self.history_len = int(retrieval.history_len)
        self.n_model_items = int(retrieval.n_model_items)
        if not isinstance(tower.hist_emb, nn.EmbeddingBag) or tower.hist_emb.mode != "sum" or tower.hist_emb.padding_idx != 0:
            raise ValueError("history pooling is not a sum EmbeddingBag with padding row 0")
        mlp = list(tower.mlp)
        kinds = [type(layer) for layer in mlp]
        # any dropout (the identity in eval mode), whichever draws the masks
        if len(kinds) != 5 or kinds[:3] + kinds[4:] != [nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear] or not issubclass(kinds[3], nn.Dropout):
            raise ValueError(f"user tower MLP {[k.__name__ for k in kinds]} is not the layout this encoder knows")
        lin1, norm, gelu, _, lin2 = mlp
        if lin1.bias is None or lin2.bias is None or norm.weight is None or norm.bias is None or len(norm.normalized_shape) != 1:
            raise ValueError("user tower MLP without biases or with a layer norm this encoder does not know")

        def plain(t: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().to(torch.float32).numpy())

        # NumPy copies of the weights: a request is one short vector through small layers,
        # where each torch call's fixed cost outweighs its arithmetic several times
        self.hist_emb = plain(tower.hist_emb.weight)
        self.content_w = plain(tower.hist_content.weight)
        self.recent_len, self.recent_decay = int(getattr(tower, "recent_len", 0)), float(getattr(tower, "recent_decay", 1.0))
        dim = self.hist_emb.shape[1]
        self.zeros = np.zeros(dim, np.float32)
        # the parts a new user contributes nothing personal to: no id (keep mask 0), features 0
        self.parts: list[np.ndarray] = [self.zeros]
        if tower.features is not None:  # features of zeros: the layer's bias
            bias = tower.features.bias
            self.parts.append(plain(bias) if bias is not None else np.zeros(tower.features.out_features, np.float32))
        # pooling weights of the last n known movies, n = 1 .. recent_len: row n - 1 of one
        # recency_weights call over histories of 1 .. recent_len movies
        self.recent_weights = [np.zeros(0, np.float32)]
        if self.recent_len > 0:
            n = self.recent_len
            filled = torch.arange(n).unsqueeze(0) <= torch.arange(n).unsqueeze(1)
            rows = recency_weights(torch.where(filled, 0, -1), filled.to(torch.float32), n, self.recent_decay).numpy()
            self.recent_weights += [rows[i, : i + 1].astype(np.float32) for i in range(n)]
        self.w1, self.b1 = plain(lin1.weight), plain(lin1.bias)
        self.g1, self.beta1, self.eps = plain(norm.weight), plain(norm.bias), np.float32(norm.eps)
        self.w2, self.b2 = plain(lin2.weight), plain(lin2.bias)
        self.gelu = _gelu_tanh if gelu.approximate == "tanh" else _gelu

    @classmethod
    def build(cls, retrieval: Any, samples: int = 6, seed: int = 0) -> NewUserEncoder | None:
        """An encoder equal to ``encode_histories`` on sample histories, or None."""
        try:
            enc = cls(retrieval)
            rng = np.random.default_rng(seed)
            n_items = int(retrieval.n_items)
            lists = [rng.choice(n_items, size=min(n, n_items), replace=False) for n in (1, 3, 7, 2 * enc.history_len)[:samples]]
            lists.append(np.zeros(0, np.int64))
            for liked in lists:
                want = retrieval.encode_histories([liked])[0]
                if not np.allclose(enc(liked), want, rtol=1e-4, atol=1e-5):
                    log.warning("the fast new-user encoder disagrees with the user tower; using encode_histories")
                    return None
            return enc
        except (ValueError, AttributeError, TypeError, IndexError, RuntimeError) as e:
            log.debug("no fast new-user encoder: %s", e)
            return None

    def __call__(self, liked: np.ndarray) -> np.ndarray:
        """(dim,) float32 unit query vector of a new user who liked ``liked`` (item_idx)."""
        items = np.asarray(liked, dtype=np.int64)[-self.history_len :]
        content = self.retrieval.item_content
        # pooled item embeddings: mean over the movies the id table knows (padding row 0 shifts ids by one)
        known = items[items < self.n_model_items]
        hist = self.hist_emb[known + 1].mean(0, dtype=np.float32) if len(known) else self.zeros
        # pooled content: mean over every liked movie, added ones included
        pooled = content[items].mean(0, dtype=np.float64).astype(np.float32) if len(items) else np.zeros(content.shape[1], np.float32)
        parts = [self.parts[0], hist, self.content_w @ pooled]
        if self.recent_len:
            # the last recent_len known movies, decay ** (place from the newest), as UserTower pools them
            recent = known[-self.recent_len :]
            parts.append(self.recent_weights[len(recent)] @ self.hist_emb[recent + 1] if len(recent) else self.zeros)
        parts += self.parts[1:]
        h = self.w1 @ np.concatenate(parts) + self.b1
        h -= h.mean()
        h *= self.g1 / np.sqrt(np.mean(h * h) + self.eps)
        h += self.beta1
        h = self.gelu(h)
        h = self.w2 @ h + self.b2
        return h / max(float(np.sqrt(h @ h)), 1e-12)


def _gelu(x: np.ndarray) -> np.ndarray:
    """``torch.nn.functional.gelu(x)``: ``x * Phi(x)``."""
    return x * np.float32(0.5) * (np.float32(1.0) + erf(x * np.float32(1.0 / np.sqrt(2.0))))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    """``torch.nn.functional.gelu(x, approximate="tanh")``."""
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(np.float32(np.sqrt(2.0 / np.pi)) * (x + np.float32(0.044715) * x**3)))
