"""Seeds: the same initial weights on every worker, and an epoch that can be replayed.

Every epoch reseeds Python, NumPy and torch from ``(seed, epoch, rank)``, and
the epoch's image order depends on ``(seed, epoch)`` only, so a run resumed at
an epoch boundary continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1009 + rank) % (2**31)
