"""A closed-form start for the two towers: a truncated SVD of the users x movies matrix.

Randomly initialised id tables spend the first epochs finding the structure a truncated SVD of
the rating matrix gives in about a second: which users share movies and which movies share
users. :func:`svd_init` writes those factors into the towers' id tables (the user ids, the item
ids and the movie embeddings the user tower pools over a history), so training starts from that
structure and refines it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from retrieval.towers import ItemTower, UserTower

# the standard deviation of the random id tables (towers._id_table); the factors are scaled to it
# so the towers' layers see inputs of the size they were built for
INIT_STD = 0.05


def svd_factors(matrix: sp.spmatrix, dim: int, seed: int, n_iter: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(users, dim) and (items, dim) factors ``U sqrt(S)`` and ``V sqrt(S)`` of the rank-``dim``
    randomized SVD of the 0/1 ``matrix`` (users x items); columns past the matrix's rank are zero.

    Both are scaled to entries of standard deviation :data:`INIT_STD`.
    """
    from sklearn.utils.extmath import randomized_svd

    x = sp.csr_matrix(matrix, dtype=np.float32)
    x.data[:] = 1.0
    n_users, n_items = x.shape
    k = min(dim, n_users - 1, n_items - 1)
    users = np.zeros((n_users, dim), np.float32)
    items = np.zeros((n_items, dim), np.float32)
    if k < 1 or x.nnz == 0:
        return users, items
    u, s, vt = randomized_svd(x, k, n_iter=n_iter, random_state=seed)
    root = np.sqrt(s)[None, :]
    users[:, :k], items[:, :k] = u * root, vt.T * root
    return _scaled(users), _scaled(items)


def _scaled(table: np.ndarray) -> np.ndarray:
    std = float(table.std())
    return table * (INIT_STD / std) if std > 0 else table


@torch.no_grad()
def svd_init(user_tower: UserTower, item_tower: ItemTower, matrix: sp.spmatrix, seed: int) -> None:
    """Start the towers' id tables from :func:`svd_factors` of ``matrix`` (users x items, the
    ratings the towers train on): user ids from the user factors, item ids and the history
    embeddings from the item factors (the history's padding row stays zero)."""
    dim = user_tower.id_emb.embedding_dim
    users, items = svd_factors(matrix, dim, seed)
    n_users, n_items = len(users), len(items)
    user_tower.id_emb.weight[:n_users] = torch.from_numpy(users)
    item_tower.id_emb.weight[:n_items] = torch.from_numpy(items)
    user_tower.hist_emb.weight[1 : n_items + 1] = torch.from_numpy(items)
