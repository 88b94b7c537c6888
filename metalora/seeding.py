"""Seeding for reproducible runs."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> random.Random:
    """Seed Python, NumPy and torch; return a fresh :class:`random.Random` for the run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return random.Random(seed)
