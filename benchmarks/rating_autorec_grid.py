"""I-AutoRec settings grid for the P1 rating model, on u1's training side only.

    python benchmarks/rating_autorec_grid.py '{"reg":100,"center":false,"lr":1e-3,"bs":256,"out_drop":0.2,"epochs":60}' ...

Each JSON argument is one setting; the net is trained on ``validation_split(u1.base, 0.2, seed=0)``'s
larger side and scored (RMSE, clipped to 1..5) on the smaller side after every epoch; the best epoch
and its RMSE are printed. A plain torch loop (no Lightning) so a grid runs fast; the shipped model
(``ranking/_rating_train.py``) trains the same net through Lightning. ``center=true`` feeds
ratings minus the mean (missing = mean); ``center=false`` feeds raw ratings (missing = 0).
"""

import json
import sys
import time

import numpy as np
import scipy.sparse as sp
import torch

ROOT = __import__('pathlib').Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from movierec.core.loaders import load_dataset
from movierec.core.splits import ml100k_fold, validation_split
torch.set_num_threads(1)
ds = load_dataset(str(ROOT.parent / 'shared' / 'data' / 'ml-100k'))
train, _ = ml100k_fold(ds, str(ROOT.parent / 'shared' / 'data' / 'ml-100k'), 'u1')
fit, val = validation_split(train, 0.2, seed=0)
U, I = ds.n_users, ds.n_items
def trip(d):
    r = d.ratings; return r.user_idx.to_numpy(), r.item_idx.to_numpy(), r.rating.to_numpy(np.float64)
fu, fi, fr = trip(fit); vu, vi, vr = trip(val)
def run(hidden=500, reg=1.0, lr=1e-3, bs=64, center=True, drop=0.0, epochs=80, act='sigmoid', wd_style='l2', seed=0, out_drop=0.0):
    torch.manual_seed(seed)
    off = fr.mean() if center else 0.0
    vals = (fr - off).astype(np.float32); vals[vals == 0] = 1e-6
    X = torch.from_numpy(sp.csr_matrix((vals, (fi, fu)), shape=(I, U)).toarray())
    M = X != 0
    enc = torch.nn.Linear(U, hidden); dec = torch.nn.Linear(hidden, U)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    N = len(fr)
    f = torch.sigmoid if act == 'sigmoid' else (torch.nn.functional.elu if act=='elu' else torch.tanh)
    vu_t, vi_t = torch.from_numpy(vu.copy()), torch.from_numpy(vi.copy())
    best = (9, 0); g = torch.Generator().manual_seed(seed); hist=[]
    for ep in range(epochs):
        perm = torch.randperm(I, generator=g)
        for s in range(0, I, bs):
            b = perm[s:s+bs]; x = X[b]; m = M[b]
            xin = torch.nn.functional.dropout(x, drop) if drop else x
            h = f(enc(xin))
            if out_drop: h = torch.nn.functional.dropout(h, out_drop)
            err = (dec(h) - x)[m]
            loss = err.pow(2).mean() + reg / (2 * N) * (enc.weight.pow(2).sum() + dec.weight.pow(2).sum())
            opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad():
            h = f(enc(X))
            p = (h[vi_t] * dec.weight[vu_t]).sum(-1) + dec.bias[vu_t] + off
            r = float(np.sqrt(np.mean((np.clip(p.numpy(), 1, 5) - vr) ** 2)))
        hist.append(round(r,4))
        if r < best[0]: best = (r, ep + 1)
    return best, hist
if __name__ == '__main__':
    for kw in map(json.loads, sys.argv[1:]):
        t = time.time(); b, h = run(**kw); print(kw, 'best', b, f'{time.time()-t:.0f}s', h[::5], flush=True)
