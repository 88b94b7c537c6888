"""ABMLL's four LoRA pairs per adapted layer and the dense quantities they stand for.

Every adapted linear layer with frozen ``W0`` (``d_out x d_in``) carries
(the paper's section 3, with the variances parametrised as log-variances)::

    global (theta):  mu_theta   = s * B @ A   of pair "mu_theta"
                     logv_theta = s * B @ A + c  of pair "logv_theta"
    task   (phi):    mu_phi     = s * B @ A   of pair "mu_phi"
                     logv_phi   = s * B @ A + c  of pair "logv_phi"

``logv`` is the elementwise log-variance ``log sigma^2``; ``c`` is the
initial log-variance: the setting ``log_var_init`` for every layer, or, with
``log_var_relative = kappa``, ``c_l = log(kappa^2 * Var(W0_l))`` per layer
(:class:`LayerSpecs`). Log-variances are clamped to
``[log_var_min, log_var_max]`` wherever they are used (sampling, KL, prior):
``torch.clamp`` semantics, so the gradient is zero outside that range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from metalora import AdaptedLinear

MU_THETA, LOGV_THETA, MU_PHI, LOGV_PHI = "mu_theta", "logv_theta", "mu_phi", "logv_phi"
PAIR_NAMES: tuple[str, ...] = (MU_THETA, LOGV_THETA, MU_PHI, LOGV_PHI)
GLOBAL_PAIRS: tuple[str, ...] = (MU_THETA, LOGV_THETA)
TASK_PAIRS: tuple[str, ...] = (MU_PHI, LOGV_PHI)
TASK_OF: dict[str, str] = {MU_THETA: MU_PHI, LOGV_THETA: LOGV_PHI}
"""The task pair each global pair is copied into at a reset."""


@dataclass(frozen=True)
class LogVarSpec:
    """How a log-variance pair becomes a dense, clamped log-variance."""

    offset: float = -20.0
    """``c``: the log-variance at initialisation (B = 0)."""
    low: float = -30.0
    high: float = 5.0
    prior_origin: float = 0.0
    """What is subtracted from ``logv_theta`` before the prior sees it: 0 (the prior reads
    the log-variance itself) or ``c`` (it reads the change since initialisation; setting
    ``prior_log_var = "relative"``)."""

    def raw(self, A: Tensor, B: Tensor, scaling: float) -> Tensor:
        """``s * B @ A + c`` before clamping, ``d_out x d_in``."""
        return (B @ A).mul_(scaling).add_(self.offset)

    def dense(self, A: Tensor, B: Tensor, scaling: float) -> Tensor:
        """``clamp(s * B @ A + c, low, high)``, ``d_out x d_in``."""
        return self.raw(A, B, scaling).clamp(self.low, self.high)


class LayerSpecs:
    """The :class:`LogVarSpec` of each adapted layer: one for all, or one per layer.

    Calling it with a layer gives that layer's spec (the shared one for a layer
    never :meth:`set`).
    """

    def __init__(self, default: LogVarSpec) -> None:
        self.default = default
        self._per_layer: dict[int, LogVarSpec] = {}

    def __call__(self, layer: AdaptedLinear) -> LogVarSpec:
        return self._per_layer.get(id(layer), self.default)

    def set(self, layer: AdaptedLinear, spec: LogVarSpec) -> None:
        """Give ``layer`` a spec of its own."""
        self._per_layer[id(layer)] = spec

    def offsets(self) -> list[float]:
        """Every per-layer ``c`` (the shared one when none is set)."""
        return [s.offset for s in self._per_layer.values()] or [self.default.offset]

    def __repr__(self) -> str:
        return f"LayerSpecs({self.default!r}, {len(self._per_layer)} per layer)"


Specs = LogVarSpec | LayerSpecs
"""One spec for every layer, or each layer's own."""


def spec_of(spec: Specs, layer: AdaptedLinear) -> LogVarSpec:
    """``layer``'s :class:`LogVarSpec`."""
    return spec(layer) if isinstance(spec, LayerSpecs) else spec


def relative_log_var(weight: Tensor, kappa: float) -> float:
    """``log(kappa^2 * Var(W0))``: a noise level relative to a layer's pretrained weights
    (the paper ties c to "the spread of pretrained LLM weights")."""
    var = float(weight.detach().float().var())
    if not var > 0:
        raise ValueError("the layer's weights have no spread (variance 0)")
    return math.log(kappa * kappa * var)


@dataclass
class GaussianFactors:
    """The low-rank factors of one diagonal Gaussian over a layer's weight update.

    ``mean = s * mu_B @ mu_A``, ``log_var = clamp(s * v_B @ v_A + c)``.
    """

    mu_A: Tensor
    mu_B: Tensor
    v_A: Tensor
    v_B: Tensor

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(mu_A, mu_B, v_A, v_B)``."""
        return self.mu_A, self.mu_B, self.v_A, self.v_B

    def detach(self) -> GaussianFactors:
        """The same factors cut from the autograd graph."""
        return GaussianFactors(*(t.detach() for t in self.tensors()))


def global_factors(layer: AdaptedLinear, detach: bool = False) -> GaussianFactors:
    """theta of one layer: the ``mu_theta`` and ``logv_theta`` pairs."""
    mu, v = layer.pairs[MU_THETA], layer.pairs[LOGV_THETA]
    factors = GaussianFactors(mu.A, mu.B, v.A, v.B)
    return factors.detach() if detach else factors


def task_factors(layer: AdaptedLinear, straight_through: bool = False) -> GaussianFactors:
    """phi of one layer; with ``straight_through`` written as ``theta + stopgrad(phi - theta)``.

    The straight-through form has exactly the value of phi (bit for bit) but
    passes every gradient
    that reaches phi on to theta, factor by factor: the first-order
    meta-gradient (``meta_gradient = "first-order"``).
    """
    mu, v = layer.pairs[MU_PHI], layer.pairs[LOGV_PHI]
    if not straight_through:
        return GaussianFactors(mu.A, mu.B, v.A, v.B)
    g = global_factors(layer)
    return GaussianFactors(*(_straight_through(p, t) for p, t in
                             zip((mu.A, mu.B, v.A, v.B), g.tensors(), strict=True)))


def _straight_through(phi: Tensor, theta: Tensor) -> Tensor:
    """Bit-exactly ``phi`` in value (``theta - theta`` is exactly 0); gradient 1 to ``theta``."""
    return phi.detach() + (theta - theta.detach())
