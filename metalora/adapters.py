"""LoRA adapter machinery shared by every learner.

:func:`attach_adapters` replaces each target ``nn.Linear`` of a model with an
:class:`AdaptedLinear` that keeps the frozen base layer and any number of
named :class:`LoRAPair` s (``A``: ``r x d_in``, ``B``: ``d_out x r``). What
the pairs add to the base output is decided by a pluggable *delta*: the
default :class:`LowRankDelta` adds ``s * B @ A x`` for one pair (exactly
peft's LoRA with dropout 0); a Bayesian learner installs a delta that samples
weights from several pairs. Adapter tensors are ordinary parameters named
``<module>.pairs.<pair>.<A|B>``, so :func:`torch.func.functional_call` and
optimisers see them as usual.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalora.adapter_config import AdapterConfig
from metalora.errors import MetaloraError
from metalora.target_modules import find_target_linears


class LoRAPair(nn.Module):
    """One LoRA pair: ``A`` Kaiming-uniform, ``B`` zero (standard LoRA initialisation)."""

    def __init__(self, d_in: int, d_out: int, rank: int, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, d_in, device=device, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(d_out, rank, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise as standard LoRA does."""
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        nn.init.zeros_(self.B)

    def dense(self, scaling: float) -> Tensor:
        """The dense ``d_out x d_in`` matrix ``s * B @ A``."""
        return scaling * (self.B @ self.A)


AdapterDelta = Callable[["AdaptedLinear", Tensor], Tensor]
"""``delta(layer, x)`` returns what the adapters add to ``layer.base(x)``.

A delta whose ``includes_base`` attribute is true returns the layer's whole
output instead, base included (so that it can fuse the frozen ``W0`` with
its own weight update in one matrix product).
"""


class LowRankDelta:
    """The standard LoRA update ``s * B (A x)`` of one named pair."""

    def __init__(self, pair: str) -> None:
        self.pair = pair

    def __call__(self, layer: AdaptedLinear, x: Tensor) -> Tensor:
        pair = layer.pairs[self.pair]
        return layer.scaling * F.linear(F.linear(x, pair.A), pair.B)

    def __repr__(self) -> str:
        return f"LowRankDelta({self.pair!r})"


class AdaptedLinear(nn.Module):
    """A frozen linear layer plus named LoRA pairs and the delta that combines them."""

    def __init__(self, base: nn.Linear, pair_names: Sequence[str], config: AdapterConfig,
                 delta: AdapterDelta | None) -> None:
        super().__init__()
        self.base = base
        self.scaling = config.scaling
        self.rank = config.rank
        device = base.weight.device
        self.pairs = nn.ModuleDict({
            name: LoRAPair(base.in_features, base.out_features, config.rank, device=device)
            for name in pair_names
        })
        self.delta: AdapterDelta | None = delta

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> Tensor:
        """The frozen base weight ``W0`` (so code that reads ``.weight`` still works)."""
        return self.base.weight

    def forward(self, x: Tensor) -> Tensor:
        if self.delta is None:
            return self.base(x)
        adapter_dtype = next(iter(self.pairs.values())).A.dtype
        if getattr(self.delta, "includes_base", False):
            # the delta computes the whole output itself (e.g. fusing W0 with a sampled weight)
            return self.delta(self, x.to(adapter_dtype)).to(x.dtype)
        out = self.base(x)
        return out + self.delta(self, x.to(adapter_dtype)).to(out.dtype)


class AdapterHandle:
    """The adapters one learner attached to a model: access, snapshots, removal."""

    def __init__(self, model: nn.Module, layers: dict[str, AdaptedLinear],
                 originals: dict[str, nn.Linear], pair_names: tuple[str, ...],
                 config: AdapterConfig) -> None:
        self.model = model
        self.layers = layers
        self._originals = originals
        self.pair_names = pair_names
        self.config = config

    def _check_pairs(self, pairs: Iterable[str] | None) -> tuple[str, ...]:
        chosen = self.pair_names if pairs is None else tuple(pairs)
        unknown = [p for p in chosen if p not in self.pair_names]
        if unknown:
            raise MetaloraError(
                f"unknown adapter pair {unknown[0]!r}; valid choices: {', '.join(self.pair_names)}"
            )
        return chosen

    def named_parameters(self, pairs: Iterable[str] | None = None) -> dict[str, nn.Parameter]:
        """Adapter parameters by their model parameter name, optionally for some pairs only."""
        chosen = self._check_pairs(pairs)
        return {
            f"{module}.pairs.{pair}.{side}": getattr(layer.pairs[pair], side)
            for module, layer in self.layers.items()
            for pair in chosen
            for side in ("A", "B")
        }

    def parameters(self, pairs: Iterable[str] | None = None) -> list[nn.Parameter]:
        """Adapter parameters, optionally for some pairs only."""
        return list(self.named_parameters(pairs).values())

    def snapshot(self, pairs: Iterable[str] | None = None) -> dict[str, Tensor]:
        """Detached copies of the adapter tensors."""
        return {k: v.detach().clone() for k, v in self.named_parameters(pairs).items()}

    @torch.no_grad()
    def restore(self, snapshot: dict[str, Tensor]) -> None:
        """Copy a :meth:`snapshot` back in place, bit for bit."""
        params = self.named_parameters()
        missing = set(snapshot) - set(params)
        if missing:
            raise MetaloraError(f"snapshot holds unknown adapter tensor {sorted(missing)[0]!r}")
        for name, value in snapshot.items():
            params[name].copy_(value)

    @torch.no_grad()
    def copy_pair(self, source: str, target: str) -> None:
        """Copy pair ``source`` into pair ``target`` in every layer (e.g. task <- global)."""
        self._check_pairs([source, target])
        for layer in self.layers.values():
            layer.pairs[target].A.copy_(layer.pairs[source].A)
            layer.pairs[target].B.copy_(layer.pairs[source].B)

    def set_delta(self, delta: AdapterDelta | None) -> None:
        """Install the same delta in every adapted layer."""
        for layer in self.layers.values():
            layer.delta = delta

    def dense_update(self, pair: str) -> dict[str, Tensor]:
        """``s * B @ A`` of one pair per adapted module (for merging, pruning and export)."""
        self._check_pairs([pair])
        with torch.no_grad():
            return {m: layer.pairs[pair].dense(layer.scaling) for m, layer in self.layers.items()}

    def remove(self) -> None:
        """Put the original linear layers back; the model is as it was before attaching."""
        for module_name, original in self._originals.items():
            parent, child = _parent_and_child(self.model, module_name)
            setattr(parent, child, original)
        self.layers = {}
        self._originals = {}


def attach_adapters(model: nn.Module, config: AdapterConfig, pair_names: Sequence[str],
                    delta: AdapterDelta | None = None) -> AdapterHandle:
    """Freeze ``model`` and wrap every target linear layer with adapter pairs.

    ``config.target_modules`` are matched against the last component of each
    module's name (``q_proj`` matches ``model.layers.3.self_attn.q_proj``);
    Llama attention names map to other architectures' names
    (:mod:`metalora.target_modules`).
    ``delta`` defaults to :class:`LowRankDelta` of the first pair.
    """
    if not pair_names:
        raise MetaloraError("attach_adapters needs at least one adapter pair name")
    for param in model.parameters():
        param.requires_grad_(False)
    if any(isinstance(m, AdaptedLinear) for m in model.modules()):
        raise MetaloraError("this model already carries metalora adapters; remove them first")
    found = find_target_linears(model, config.target_modules)
    delta = delta if delta is not None else LowRankDelta(pair_names[0])
    layers: dict[str, AdaptedLinear] = {}
    for name, linear in found.items():
        adapted = AdaptedLinear(linear, pair_names, config, delta)
        parent, child = _parent_and_child(model, name)
        setattr(parent, child, adapted)
        layers[name] = adapted
    return AdapterHandle(model, layers, found, tuple(pair_names), config)


def _parent_and_child(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, child
