"""Two-tower training step cost against a plain id two-tower, in one run.

    python benchmarks/two_tower_step.py [--data ../shared/data/ml-100k] [--steps 30] [--plain-loss autograd]

Both models see the same batches of positives (``retrieval.batch_size``) and the same loss: an
in-batch softmax with log-q correction, repeated positives masked, by default through the same
function (``in_batch_softmax_loss``; ``--plain-loss autograd`` gives the plain model the
``index_put`` + ``cross_entropy`` version, unfused). The plain model is a user id
embedding and an item id embedding (dot product, L2-normalised), trained with the same fused
AdamW. Our step includes building the batch (histories and pooled content) as the data loader
does. CPU time per step (median), one torch thread; prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from content import ContentModel  # noqa: E402
from movierec.core.config import load_config  # noqa: E402
from movierec.core.loaders import load_dataset  # noqa: E402
from retrieval.loss import duplicate_pairs, in_batch_softmax_loss  # noqa: E402
from retrieval.two_tower import build_two_tower  # noqa: E402


class PlainTwoTower(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        super().__init__()
        self.users = nn.Embedding(n_users, dim)
        self.items = nn.Embedding(n_items, dim)
        nn.init.normal_(self.users.weight, std=0.05)
        nn.init.normal_(self.items.weight, std=0.05)

    def loss(self, users: torch.Tensor, items: torch.Tensor, log_q: torch.Tensor, temperature: float, fused: bool = True) -> torch.Tensor:
        u = F.normalize(self.users(users), dim=-1)
        v = F.normalize(self.items(items), dim=-1)
        rows, cols = duplicate_pairs(items.numpy(), 0, len(items))
        if fused:  # the loss function movierec's step uses
            return in_batch_softmax_loss(u * (1.0 / temperature), v, log_q[items], torch.from_numpy(rows), torch.from_numpy(cols), torch.arange(len(items)))
        logits = (u * (1.0 / temperature)) @ v.T
        logits = logits.sub_(log_q[items][None, :])
        if len(rows):
            logits = logits.index_put((torch.from_numpy(rows), torch.from_numpy(cols)), torch.tensor(float("-inf")))
        return F.cross_entropy(logits, torch.arange(len(items)))


def _median_step(step, n: int) -> float:
    times = []
    for i in range(n + 3):
        t = time.process_time()
        step(i)
        if i >= 3:  # warm-up steps left out
            times.append(time.process_time() - t)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ml-100k")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. retrieval.batch_size=2048")
    p.add_argument(
        "--plain-loss", choices=["fused", "autograd"], default="fused",
        help="the plain model's loss: movierec's in_batch_softmax_loss, or cross_entropy on index_put logits (unfused)",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = load_config(None, a.set)
    ds = load_dataset(a.data)
    content = ContentModel.fit(ds.items, config.content, seed=0).vectors
    setup = build_two_tower(ds, content, config.retrieval, seed=0)
    module, data = setup.module, setup.data
    module.log = lambda *args, **kwargs: None  # no Trainer here
    data.setup("fit")  # what the Trainer does first in each training process (threads, allocator)
    rc = config.retrieval
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(data.pos_users), rc.batch_size, replace=False) for _ in range(a.steps + 3)]
    opt = torch.optim.AdamW(module.parameters(), lr=rc.lr, weight_decay=rc.weight_decay, fused=True)

    opt_ms: list[float] = []  # the optimizer step alone: its share grows with the id tables

    def ours(i: int) -> None:
        idx = torch.from_numpy(batches[i])
        batch = data._collate((torch.from_numpy(data.pos_users)[idx], torch.from_numpy(data.pos_items)[idx], torch.from_numpy(data.pos_slots)[idx]))
        loss = module.training_step(batch, i)
        opt.zero_grad()
        loss.backward()
        t = time.process_time()
        opt.step()
        opt_ms.append((time.process_time() - t) * 1000)

    plain = PlainTwoTower(ds.n_users, ds.n_items, rc.dim)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=rc.lr, weight_decay=rc.weight_decay, fused=True)
    log_q = torch.from_numpy(data.log_q)

    def plain_step(i: int) -> None:
        idx = batches[i]
        loss = plain.loss(torch.from_numpy(data.pos_users[idx]), torch.from_numpy(data.pos_items[idx]), log_q, rc.temperature, a.plain_loss == "fused")
        plain_opt.zero_grad()
        loss.backward()
        plain_opt.step()

    module.train()
    # interleaved rounds, so both see the same machine load
    ours_ms, plain_ms = [], []
    for _ in range(3):
        ours_ms.append(_median_step(ours, a.steps // 3))
        plain_ms.append(_median_step(plain_step, a.steps // 3))
    o, pl = statistics.median(ours_ms), statistics.median(plain_ms)
    print(f"data: {a.data.name}, {len(data.pos_users):,} positives, batch {rc.batch_size}, dim {rc.dim}, 1 thread")
    print("| model | CPU ms per step (median) |")
    print("|---|---:|")
    print(f"| plain id two-tower ({a.plain_loss} loss) | {pl:.1f} |")
    print(f"| movierec two-tower (ids + history + content + genres + user features, batch building included) | {o:.1f} |")
    print(f"| ratio | {o / pl:.2f}x |")
    print(f"| of ours: the AdamW step over every parameter ({sum(p.numel() for p in module.parameters()):,}) | {statistics.median(opt_ms):.1f} |")


if __name__ == "__main__":
    main()
