"""Dropout whose mask is drawn by numpy, for the towers and the ranker's nets.

The same inverted dropout as ``nn.Dropout`` (each element kept with probability ``1 - p`` and
scaled by ``1 / (1 - p)``; the identity in eval mode), with a different random source: torch's
CPU ``bernoulli_`` draws each element from its Mersenne Twister one at a time, and that draw was
the largest single item of the ranker's training profile.
numpy's PCG64 fills 16-bit integers in bulk; an element is kept when its integer is at least
``round(p * 65536)``, so ``p`` is exact to 1/65536. The generator is seeded from torch's seeded
global generator at the first training call, so a seeded run draws the same masks every time.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Dropout(nn.Dropout):
    """Drop-in for ``nn.Dropout(p)``, and one (no parameters, so state dicts are unchanged; code
    that skips dropout layers in eval mode by ``isinstance(layer, nn.Dropout)`` skips this too)."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        super().__init__(float(p))
        self._threshold = np.uint16(min(round(self.p * 65536), 65535))
        self._rng: np.random.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        if self._rng is None:
            self._rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,))))
        keep = self._rng.integers(0, 65536, size=tuple(x.shape), dtype=np.uint16) >= self._threshold
        # a float mask, scaled once: multiplying by a bool tensor costs several times more
        mask = torch.from_numpy(keep).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"
