"""The query vector of one new user (a few liked movies), without the batch machinery.

``RetrievalModel.encode_histories`` serves batches: it pads every history, builds a sparse
averaging matrix for the pooled content and calls the user tower module by module, a large
share of an uncached ``POST /recommendations``. A new user has no id and no features, so the
tower reduces to two means, three small products and the MLP; :class:`NewUserEncoder` computes
exactly that with the tower's own weights and torch functions, an order of magnitude faster.
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
import torch.nn.functional as F
from torch import nn

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
        self.hist_emb = tower.hist_emb.weight.detach()
        self.content_w = tower.hist_content.weight.detach()
        self.recent_len, self.recent_decay = int(getattr(tower, "recent_len", 0)), float(getattr(tower, "recent_decay", 1.0))
        dim = self.hist_emb.shape[1]
        # the parts a new user contributes nothing personal to: no id (keep mask 0), features 0
        parts: list[torch.Tensor | None] = [torch.zeros(dim), None, None]
        if tower.features is not None:  # features of zeros: the layer's bias
            bias = tower.features.bias
            parts.append(bias.detach() if bias is not None else torch.zeros(tower.features.out_features))
        self.parts = parts
        mlp = list(tower.mlp)
        kinds = [type(layer) for layer in mlp]
        # any dropout (the identity in eval mode), whichever draws the masks
        if len(kinds) != 5 or kinds[:3] + kinds[4:] != [nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear] or not issubclass(kinds[3], nn.Dropout):
            raise ValueError(f"user tower MLP {[k.__name__ for k in kinds]} is not the layout this encoder knows")
        self.lin1, self.norm, self.gelu, _, self.lin2 = mlp
        if not isinstance(tower.hist_emb, nn.EmbeddingBag) or tower.hist_emb.mode != "sum" or tower.hist_emb.padding_idx != 0:
            raise ValueError("history pooling is not a sum EmbeddingBag with padding row 0")

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

    @torch.inference_mode()
    def __call__(self, liked: np.ndarray) -> np.ndarray:
        """(dim,) float32 unit query vector of a new user who liked ``liked`` (item_idx)."""
        items = np.asarray(liked, dtype=np.int64)[-self.history_len :]
        content = self.retrieval.item_content
        # pooled item embeddings: mean over the movies the id table knows (padding row 0 shifts ids by one)
        known = items[items < self.n_model_items]
        hist = self.hist_emb[torch.from_numpy(known + 1)].mean(0) if len(known) else torch.zeros(self.hist_emb.shape[1])
        # pooled content: mean over every liked movie, added ones included
        pooled = content[items].mean(0, dtype=np.float64).astype(np.float32) if len(items) else np.zeros(content.shape[1], np.float32)
        parts = list(self.parts)
        parts[1] = hist
        parts[2] = torch.mv(self.content_w, torch.from_numpy(pooled))
        if self.recent_len:
            # the last recent_len known movies, decay ** (place from the newest), as UserTower pools them
            recent = known[-self.recent_len :]
            w = torch.pow(torch.tensor(self.recent_decay, dtype=torch.float32), torch.arange(len(recent) - 1, -1, -1, dtype=torch.float32))
            parts.insert(3, (w / w.sum()) @ self.hist_emb[torch.from_numpy(recent + 1)] if len(recent) else torch.zeros(self.hist_emb.shape[1]))
        x = torch.cat(parts)
        h = F.linear(x, self.lin1.weight, self.lin1.bias)
        h = F.layer_norm(h, self.norm.normalized_shape, self.norm.weight, self.norm.bias, self.norm.eps)
        h = F.gelu(h, approximate=self.gelu.approximate)
        h = F.linear(h, self.lin2.weight, self.lin2.bias)
        return F.normalize(h, dim=-1).numpy()
