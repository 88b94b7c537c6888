"""``magnitude``: magnitude pruning of output neurons (paper section 5.2).

In each layer, the ``round(ratio x d_out)`` rows of the merged weight
``W = W0 + mu`` with the smallest L2 norm are pruned (Python's ``round``:
halves go to the even number). Ties are broken by row index (the lower index
is pruned first), so the choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from metalora import Pruner, hookimpl


def pruned_rows(ratio: float, d_out: int) -> int:
    """How many of ``d_out`` rows a ratio prunes: ``round(ratio * d_out)``."""
    return min(d_out, round(ratio * d_out))


class MagnitudePruner(Pruner):
    """Zero the output neurons whose merged weight rows have the smallest L2 norm."""

    name = "magnitude"
    description = ("Zero the fraction `ratio` of output neurons (rows) with the smallest L2 norm "
                   "of W0 + mean, per layer (paper 5.2).")

    def select(self, weights: Mapping[str, Tensor], ratio: float) -> dict[str, Tensor]:
        chosen: dict[str, Tensor] = {}
        for name, weight in weights.items():
            k = pruned_rows(ratio, weight.shape[0])
            norms = weight.detach().float().norm(dim=1)
            order = torch.argsort(norms, stable=True)
            chosen[name] = order[:k].sort().values.to(torch.int64)
        return chosen


@hookimpl
def register_pruners(register):
    register(MagnitudePruner)


__all__ = ["MagnitudePruner", "pruned_rows"]
