"""Pruning a learner's merged weights (paper section 5.2, Table 2).

The sweeps of ``metalora prune`` over a run are in :mod:`metalora.runs.prune`;
this module holds the pruning itself. For every learner and seed of a
finished run (or, without a run directory, for freshly built, untrained
learners), and for every pruning ratio, a sweep does:

1. rebuild the learner in memory and load the adapters the run tested
   (``<learner>/seed-<s>/adapters.safetensors``); the base model is loaded
   from its name, so the saved run is only ever read;
2. collect the layers in scope (:func:`prune_targets`): the learner's adapted
   layers (``scope = "adapted"``, the default) or every linear layer of the
   transformer blocks (``scope = "all"``);
3. give the registered :class:`~metalora.interfaces.Pruner` the merged
   weights ``W = W0 + mu`` (``mu = s * B @ A`` of the learner's
   :attr:`~metalora.interfaces.Learner.mean_pair`; zero for a layer without
   adapters and for ``pretrained``) and zero the rows it selects
   (:func:`apply_pruning`);
4. evaluate exactly as ``metalora run`` tests (:func:`metalora.evaluation.evaluate`:
   test-time adaptation on each test task's support set, metrics on its query
   set, the run's own episodes, metrics and seeds);
5. put every changed value back (bit for bit) before the next ratio.

How the mean is "merged". The effective weight of a layer is
``W0 + s * B @ A`` of the mean pair. Pruning row ``i`` of the merged weight
zeroes row ``i`` of the base weight (and its bias entry) **and** row ``i`` of
the mean pair's ``B``; the other rows stay exactly as they were. The result
is exactly the pruned merged weight ``P(W0 + mu)`` (pruned rows are exact
zeros), nothing is added twice, and the learner's own factors are kept, so
test-time adaptation starts from the same ``A`` and ``B`` as in the run
(where a mean pair is also the pair that adapts, as for ``lora``, a pruned
row can be moved off zero by adaptation, as it could in a merged model with
fresh adapters). With ratio 0 nothing changes at all, so the ``0% Pruned``
column reproduces the run's own test results exactly. For ABMLL the mean pair
``mu_theta`` is pruned this way; its variance pair is left as learned (the
sampled weight of a pruned neuron is zero-mean noise at the learned
variance).

Scope ``all`` detection: every ``nn.Linear`` (or adapted linear layer) whose
qualified name has a numbered component, i.e. that lives in a block list such
as ``model.layers.3.mlp.up_proj``; ``lm_head``, embeddings and norms are never
pruned.

Results: ``RUN_DIR/prune/<YYYYmmdd-HHMMSS>-<pruner>-<scope>/results.csv`` and
``results.json``, described in :mod:`metalora.runs.prune`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from metalora.adapters import AdaptedLinear, AdapterHandle, LoRAPair
from metalora.errors import MetaloraError, unknown_choice
from metalora.interfaces import Learner, Pruner

SCOPES: tuple[str, ...] = ("adapted", "all")
"""``adapted``: the learner's adapted layers; ``all``: every linear layer of the blocks."""
DEFAULT_RATIOS: tuple[float, ...] = (0.01, 0.1, 0.2, 0.3)
"""The paper's Table 2 sweep."""

_BLOCK_INDEX = re.compile(r"(^|\.)\d+(\.|$)")


# -- ratios ------------------------------------------------------------------------------
def parse_ratios(value: str | float | Sequence[float]) -> list[float]:
    """Ratios from ``"0.01,0.1"`` (or numbers): each in ``[0, 1)``, sorted, duplicates dropped."""
    items: list[Any]
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, int | float):
        items = [value]
    else:
        items = list(value)
    if not items:
        raise MetaloraError("no pruning ratio given; pass e.g. --ratio 0.2 or --ratio 0.01,0.1")
    ratios = []
    for item in items:
        try:
            ratio = float(item)
        except (TypeError, ValueError):
            raise MetaloraError(f"pruning ratio {item!r} is not a number") from None
        check_ratio(ratio)
        ratios.append(ratio)
    return sorted(set(ratios))


def check_ratio(ratio: float) -> None:
    """A ratio must lie in ``[0, 1)`` (pruning every neuron leaves no model)."""
    if not 0.0 <= ratio < 1.0:  # also rejects NaN
        raise MetaloraError(f"pruning ratio {ratio:g} is outside [0, 1)")


def ratio_label(ratio: float) -> str:
    """Column heading of the paper's Table 2: ``0.01`` -> ``1% Pruned``."""
    return f"{100 * ratio:g}% Pruned"


# -- which layers, merged weights, applying a selection ----------------------------------
@dataclass
class PruneTarget:
    """One layer in scope: its base linear layer and, if adapted, the learner's mean pair."""

    linear: nn.Linear
    """The frozen base layer whose weight rows (and bias entries) are zeroed."""
    mean: LoRAPair | None = None
    """The mean pair of this layer (``None`` for a layer without adapters)."""
    scaling: float = 1.0

    def merged(self) -> Tensor:
        """``W0 + s * B @ A`` in float32 (a new tensor)."""
        weight = self.linear.weight.detach().float().clone()
        if self.mean is not None:
            weight += self.mean.dense(self.scaling).detach().float()
        return weight


def is_block_linear(name: str) -> bool:
    """Whether a module name lies inside a numbered block (``model.layers.3.mlp.up_proj``)."""
    return bool(_BLOCK_INDEX.search(name))


def prune_targets(model: nn.Module, handle: AdapterHandle | None, mean_pair: str | None,
                  scope: str = "adapted") -> dict[str, PruneTarget]:
    """The layers pruning may touch, by module name; see the module docstring for ``scope``."""
    if scope not in SCOPES:
        raise unknown_choice("pruning scope", scope, SCOPES)
    adapted: dict[str, AdaptedLinear] = dict(handle.layers) if handle is not None else {}
    if mean_pair is not None and handle is not None and mean_pair not in handle.pair_names:
        raise MetaloraError(f"the learner's mean pair {mean_pair!r} is not one of its adapter "
                            f"pairs; valid choices: {', '.join(handle.pair_names)}")

    def target(layer: nn.Module) -> PruneTarget:
        if isinstance(layer, AdaptedLinear):
            mean = layer.pairs[mean_pair] if mean_pair is not None else None
            return PruneTarget(layer.base, mean, layer.scaling)
        return PruneTarget(layer)

    if scope == "adapted":
        if not adapted:
            raise MetaloraError("the learner has no adapted layers to prune; use --scope all")
        return {name: target(layer) for name, layer in adapted.items()}
    targets: dict[str, PruneTarget] = {}
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue  # the base layer of an adapted layer
        if isinstance(module, AdaptedLinear):
            inside.append(name + ".")
        if isinstance(module, AdaptedLinear | nn.Linear) and is_block_linear(name):
            targets[name] = target(module)
    if not targets:
        raise MetaloraError("no linear layer inside numbered transformer blocks was found to "
                            "prune; valid choices: --scope adapted")
    return targets


class MergedWeights(Mapping[str, Tensor]):
    """module name -> ``W0 + mu`` computed on access (never all layers in memory at once)."""

    def __init__(self, targets: Mapping[str, PruneTarget]) -> None:
        self._targets = targets

    def __getitem__(self, name: str) -> Tensor:
        return self._targets[name].merged()

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)


@dataclass
class AppliedPruning:
    """What :func:`apply_pruning` zeroed, with the original values to put back."""

    rows: dict[str, Tensor]
    """module name -> indices of the zeroed rows."""
    _saved: list[tuple[Tensor, Tensor, Tensor]] = field(default_factory=list, repr=False)

    @property
    def counts(self) -> dict[str, int]:
        """module name -> number of zeroed rows."""
        return {name: int(rows.numel()) for name, rows in self.rows.items()}

    @torch.no_grad()
    def restore(self) -> None:
        """Put every zeroed value back, bit for bit (idempotent)."""
        for tensor, index, values in reversed(self._saved):
            tensor[index] = values
        self._saved.clear()


@torch.no_grad()
def apply_pruning(targets: Mapping[str, PruneTarget],
                  rows: Mapping[str, Tensor]) -> AppliedPruning:
    """Zero the selected rows: base weight row, bias entry and the mean pair's ``B`` row."""
    unknown = set(rows) - set(targets)
    if unknown:
        raise MetaloraError(f"the pruner selected rows of {sorted(unknown)[0]!r}, which is not "
                            "a layer in scope")
    applied = AppliedPruning(rows={})
    try:
        for name, target in targets.items():
            index = rows.get(name)
            d_out = target.linear.out_features
            index = (torch.empty(0, dtype=torch.int64) if index is None
                     else torch.as_tensor(index, dtype=torch.int64).flatten().cpu())
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= d_out
                                  or index.unique().numel() != index.numel()):
                raise MetaloraError(f"the pruner selected invalid rows for {name!r} (indices "
                                    f"must be unique and in [0, {d_out}))")
            applied.rows[name] = index
            if not index.numel():
                continue
            tensors = [target.linear.weight]
            if target.linear.bias is not None:
                tensors.append(target.linear.bias)
            if target.mean is not None:
                tensors.append(target.mean.B)
            for tensor in tensors:
                where = index.to(tensor.device)
                applied._saved.append((tensor.data, where, tensor.data[where].clone()))
                tensor.data[where] = 0
    except BaseException:
        applied.restore()
        raise
    return applied


def prune_learner(learner: Learner, pruner: Pruner, ratio: float,
                  scope: str = "adapted") -> AppliedPruning:
    """Prune a learner's model in place (merged-mean semantics); undo with ``.restore()``."""
    check_ratio(ratio)
    targets = prune_targets(learner.context.model, learner.adapters, learner.mean_pair, scope)
    rows = pruner.select(MergedWeights(targets), ratio)
    return apply_pruning(targets, rows)
