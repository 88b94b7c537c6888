"""Weight sampling under the task posterior q(phi | D) = N(W0 + mu_phi, sigma_phi^2).

:class:`ABMLLDelta` is the adapter *delta* ABMLL installs in every adapted
layer (:func:`metalora.adapters.attach_adapters`). It computes the layer's
whole output (``includes_base``). Three sampling modes (setting ``sampling``):

``weight`` (default)
    The exact weight-space reparameterised sample
    ``W = W0 + mu_phi + sigma_phi * eps``, ``eps ~ N(0, I)`` of shape
    ``d_out x d_in``, one sample per forward pass shared by every example and
    token of the batch. :class:`SampledLinear` builds
    ``W`` for one layer, computes ``x W^T`` in one matrix product and frees
    ``W``; it saves only the layer input, the frozen ``W0`` (a parameter,
    no copy), the four small factors and a noise key. Backward rebuilds
    ``W`` from the key, one layer at a time. No dense ``d_out x d_in``
    tensor is kept for backward, and the extra cost over LoRA is one dense
    matrix product (``g^T x``) plus a few elementwise passes per layer.
    When ``W0`` is not float32 or autocast is on (where adding a ~1e-4
    noise to ``W0`` in low precision would round it away), the same sample
    is computed additively: ``W0 x`` in the model's precision plus the
    low-rank mean (float32) plus :class:`WeightNoise`, ``x (sigma * eps)^T``,
    with the same regenerate-in-backward scheme. Its dense products run in
    the weights' precision (bfloat16 weights: bfloat16, as ``W0 x`` does);
    the noise itself and the log-variance's gradient are float32.
``local``
    The local reparameterisation trick (Kingma et al., 2015): each output
    pre-activation is sampled from its exact marginal
    ``N(x mu^T, (x*x) sigma^2^T)``. It draws independent noise per token and
    example (as if each had its own weight sample): the marginals are
    exact, their correlation across tokens is not. :class:`LocalNoise`
    regenerates its noise ``z`` (``tokens x d_out``) in backward.
``mean``
    No noise: ``W = W0 + mu_phi`` (debugging; the first-order MAML identity
    in the tests).

The noise is regenerated in backward from a
:class:`~metalora_plugins.abmll.noise.NoiseKey` (on CPU the position of the
draw in torch's global random stream, elsewhere a 63-bit seed), so runs are reproducible under
:func:`torch.manual_seed` (the evaluation protocol seeds it per task), and a
forward pass recomputed by activation checkpointing (which restores the RNG
state) draws the same sample again.

While the learner has a :class:`~metalora_plugins.abmll.objective.KLRequest`
on the delta, :class:`SampledLinear` also adds the KL term's gradient in its
backward pass (see :mod:`metalora_plugins.abmll.objective`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from metalora import AdaptedLinear, float32_products_are_exact
from metalora_plugins.abmll.dense import (
    Workspace,
    factor_grads,
    half_log_var,
    scaled_log_var,
    scratch,
)
from metalora_plugins.abmll.noise import NoiseKey
from metalora_plugins.abmll.objective import KLRequest, add_kl_gradients
from metalora_plugins.abmll.pairs import (
    GaussianFactors,
    LogVarSpec,
    Specs,
    global_factors,
    spec_of,
    task_factors,
)

SAMPLING_MODES: tuple[str, ...] = ("weight", "local", "mean")

KLAsk = tuple[KLRequest, int]
"""A :class:`KLRequest` and the key of the layer that answers it."""


def _sigma_eps(v_A: Tensor, v_B: Tensor, scaling: float, spec: LogVarSpec, key: NoiseKey,
               workspace: Workspace | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(sigma, eps, clamp mask)`` of one draw; ``sigma * eps`` is the weight noise."""
    shape = (v_B.shape[0], v_A.shape[1])
    sigma, inside = scaled_log_var(v_A, v_B, scaling, spec, 0.5,
                                   out=scratch(workspace, 0, shape, v_A))
    sigma.exp_()
    eps = key.normal(shape, sigma, out=scratch(workspace, 1, shape, v_A))
    return sigma, eps, inside


def sample_noise(v_A: Tensor, v_B: Tensor, scaling: float, spec: LogVarSpec,
                 key: NoiseKey) -> tuple[Tensor, Tensor | None]:
    """The dense weight noise ``sigma * eps`` of one draw and the clamp mask (no autograd)."""
    with torch.no_grad():
        sigma, eps, inside = _sigma_eps(v_A.detach(), v_B.detach(), scaling, spec, key, None)
        return sigma.mul_(eps), inside


def _log_var_grads(grad_noise: Tensor, noise: Tensor, inside: Tensor | None, v_A: Tensor,
                   v_B: Tensor, scaling: float,
                   needs: tuple[bool, bool]) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of ``v_A``, ``v_B`` from dL/d(noise); overwrites ``grad_noise``.

    ``noise = exp(logv / 2) * eps`` so dL/dlogv = dL/dnoise * noise / 2, and
    ``logv = s * v_B @ v_A + c``.
    """
    if not (needs[0] or needs[1]):
        return None, None
    grad = grad_noise.mul_(noise)
    if inside is not None:
        grad.masked_fill_(~inside, 0.0)
    return factor_grads(grad, v_A, v_B, 0.5 * scaling, needs)


class SampledLinear(torch.autograd.Function):
    """``x W^T + bias`` with ``W = W0 + s B_mu A_mu + exp(logv / 2) * eps``, one layer, fused.

    Inputs: ``x``, ``W0``, ``bias`` (or None), the task posterior's factors
    ``mu_A``, ``mu_B``, ``v_A``, ``v_B``, the global factors ``p_mu_A``,
    ``p_mu_B``, ``p_v_A``, ``p_v_B`` (None without ``kl``), then the
    constants ``scaling``, ``spec``, the :class:`NoiseKey`, a
    :class:`Workspace` (or None) and ``kl``: a :data:`KLAsk` or None. With
    ``kl``, backward also adds ``weight * KL(q || p)``'s gradients (to the
    global factors as well where they require grad) and records the KL
    value in the request. ``W0`` and ``bias`` are frozen (no gradient is
    returned for them).
    """

    @staticmethod
    def _weight(W0: Tensor, mu_A: Tensor, mu_B: Tensor, v_A: Tensor, v_B: Tensor,
                scaling: float, spec: LogVarSpec, key: NoiseKey,
                workspace: Workspace | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``(W, sigma, eps, clamp mask)``."""
        sigma, eps, inside = _sigma_eps(v_A, v_B, scaling, spec, key, workspace)
        weight = torch.addmm(W0, mu_B, mu_A, alpha=scaling,
                             out=scratch(workspace, 2, tuple(W0.shape), v_A))
        return weight.addcmul_(sigma, eps), sigma, eps, inside

    @staticmethod
    def forward(ctx: Any, x: Tensor, W0: Tensor, bias: Tensor | None, mu_A: Tensor,
                mu_B: Tensor, v_A: Tensor, v_B: Tensor, p_mu_A: Tensor | None,
                p_mu_B: Tensor | None, p_v_A: Tensor | None, p_v_B: Tensor | None,
                scaling: float, spec: LogVarSpec, key: NoiseKey,
                workspace: Workspace | None = None, kl: KLAsk | None = None) -> Tensor:
        weight, *_ = SampledLinear._weight(W0, mu_A, mu_B, v_A, v_B, scaling, spec, key,
                                           workspace)
        out = F.linear(x, weight, bias)
        del weight
        p = (p_mu_A, p_mu_B, p_v_A, p_v_B) if kl is not None else ()
        ctx.save_for_backward(x, W0, mu_A, mu_B, v_A, v_B, *p)
        ctx.scaling, ctx.spec, ctx.key, ctx.workspace, ctx.kl = scaling, spec, key, workspace, kl
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, W0, mu_A, mu_B, v_A, v_B, *p = ctx.saved_tensors
        needs = ctx.needs_input_grad
        scaling, workspace = ctx.scaling, ctx.workspace
        weight, sigma, eps, inside = SampledLinear._weight(W0, mu_A, mu_B, v_A, v_B, scaling,
                                                           ctx.spec, ctx.key, workspace)
        grad_x = grad_out @ weight if needs[0] else None
        q_grads: tuple[Tensor | None, ...] = (None,) * 4
        p_grads: tuple[Tensor | None, ...] = (None,) * 4
        request = ctx.kl[0] if ctx.kl is not None and ctx.kl[0].take(ctx.kl[1]) else None
        if any(needs[3:11]) or request is not None:
            d_out, d_in = weight.shape
            grad_w = torch.mm(grad_out.reshape(-1, d_out).t(), x.reshape(-1, d_in),
                              out=scratch(workspace, 2, (d_out, d_in), weight))  # dL/dW
            del weight
            # dL/dlogv = dL/dW * sigma * eps / 2: twice it, before the clamp's mask
            grad_log_var2 = eps.mul_(sigma).mul_(grad_w)
            grad_mu_p = grad_log_var_p = None
            if request is not None:
                q = GaussianFactors(mu_A, mu_B, v_A, v_B)
                kl, grad_mu_p, grad_log_var_p = add_kl_gradients(
                    q, GaussianFactors(*p), scaling, ctx.spec, request.weight, sigma, grad_w,
                    grad_log_var2, inside, any(needs[7:11]), workspace)
                request.values.append(kl)
            if inside is not None:
                grad_log_var2.masked_fill_(~inside, 0.0)
            q_grads = (*factor_grads(grad_w, mu_A, mu_B, scaling, needs[3:5]),
                       *factor_grads(grad_log_var2, v_A, v_B, 0.5 * scaling, needs[5:7]))
            if grad_mu_p is not None and grad_log_var_p is not None:
                p_grads = (*factor_grads(grad_mu_p, p[0], p[1], scaling, needs[7:9]),
                           *factor_grads(grad_log_var_p, p[2], p[3], scaling, needs[9:11]))
        return (grad_x, None, None, *q_grads, *p_grads, None, None, None, None, None)


def _in(t: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``t`` in the dtype of the dense products (as it is when ``dtype`` is None)."""
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


class WeightNoise(torch.autograd.Function):
    """``x (sigma * eps)^T`` alone, with ``eps`` regenerated from its key in backward.

    Inputs: ``x`` (``... x d_in``), the variance factors ``v_A`` (``r x d_in``)
    and ``v_B`` (``d_out x r``), then the constants ``scaling``, ``spec``, the
    :class:`NoiseKey` and ``compute``, the dtype of the three dense products
    (forward, and ``dL/dx`` and ``dL/dnoise`` in backward; None: ``x``'s). The
    noise is drawn, and the log-variance's gradient formed, in float32; with
    bfloat16 weights the products run in bfloat16 like the frozen layer's own
    (float32 would make them several times slower on a GPU), which rounds
    only the noise term, not ``W0``. Saved for backward: ``x`` (in ``compute``),
    ``v_A``, ``v_B``.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, v_A: Tensor, v_B: Tensor, scaling: float,
                spec: LogVarSpec, key: NoiseKey, compute: torch.dtype | None = None) -> Tensor:
        noise, _ = sample_noise(v_A, v_B, scaling, spec, key)
        xc = _in(x, compute)
        out = F.linear(xc, _in(noise, compute)).to(x.dtype)
        del noise
        ctx.save_for_backward(xc, v_A, v_B)
        ctx.scaling, ctx.spec, ctx.key, ctx.compute = scaling, spec, key, compute
        ctx.x_dtype = x.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        xc, v_A, v_B = ctx.saved_tensors
        noise, inside = sample_noise(v_A, v_B, ctx.scaling, ctx.spec, ctx.key)
        compute = ctx.compute
        grad = _in(grad_out, compute)
        grad_x = ((grad @ _in(noise, compute)).to(ctx.x_dtype) if ctx.needs_input_grad[0]
                  else None)
        grad_A = grad_B = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            d_out, d_in = noise.shape
            grad_noise = (grad.reshape(-1, d_out).t() @ _in(xc, grad.dtype).reshape(-1, d_in))
            grad_A, grad_B = _log_var_grads(grad_noise.to(noise.dtype), noise, inside, v_A, v_B,
                                            ctx.scaling,
                                            (ctx.needs_input_grad[1], ctx.needs_input_grad[2]))
        return grad_x, grad_A, grad_B, None, None, None, None


class LocalNoise(torch.autograd.Function):
    """Local reparameterisation: ``sqrt((x*x) sigma^2^T) * z``, ``z`` regenerated in backward.

    ``compute`` is the dtype of its dense products, as for :class:`WeightNoise`.
    """

    @staticmethod
    def _std(x2: Tensor, v_A: Tensor, v_B: Tensor, scaling: float, spec: LogVarSpec,
             compute: torch.dtype | None) -> tuple[Tensor, Tensor, Tensor | None]:
        var, inside = half_log_var(v_A, v_B, scaling, spec)
        var.mul_(2.0).exp_()
        return F.linear(_in(x2, compute), _in(var, compute)).to(var.dtype).sqrt_(), var, inside

    @staticmethod
    def forward(ctx: Any, x: Tensor, v_A: Tensor, v_B: Tensor, scaling: float,
                spec: LogVarSpec, key: NoiseKey, compute: torch.dtype | None = None) -> Tensor:
        std, _, _ = LocalNoise._std(x * x, v_A, v_B, scaling, spec, compute)
        out = std.mul_(key.normal(tuple(std.shape), std)).to(x.dtype)
        ctx.save_for_backward(x, v_A, v_B)
        ctx.scaling, ctx.spec, ctx.key, ctx.compute = scaling, spec, key, compute
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, v_A, v_B = ctx.saved_tensors
        compute = ctx.compute
        x2 = x * x
        std, var, inside = LocalNoise._std(x2, v_A, v_B, ctx.scaling, ctx.spec, compute)
        z = ctx.key.normal(tuple(std.shape), std)
        # out = sqrt(m2) * z with m2 = (x*x) var^T: d out / d m2 = z / (2 std)
        grad_m2 = torch.where(std > 0, grad_out.to(std.dtype) * z * 0.5 / std,
                              torch.zeros_like(std))
        del z, std
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (2.0 * x * (_in(grad_m2, compute) @ _in(var, compute)).to(x.dtype))
        grad_A = grad_B = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            d_out, d_in = var.shape
            # dL/dlogv = dL/dvar * var = (grad_m2^T x2) * var; reuse the noise helper with
            # noise := 2 var (it multiplies by noise / 2)
            grad_var = (_in(grad_m2, compute).reshape(-1, d_out).t()
                        @ _in(x2, compute).reshape(-1, d_in)).to(var.dtype)
            grad_A, grad_B = _log_var_grads(grad_var, var.mul_(2.0), inside, v_A, v_B,
                                            ctx.scaling,
                                            (ctx.needs_input_grad[1], ctx.needs_input_grad[2]))
        return grad_x, grad_A, grad_B, None, None, None, None


class ABMLLDelta:
    """ABMLL's adapter delta: the layer output under one weight sample of the task posterior.

    ``straight_through`` is switched on by the learner for the outer step, so
    that the task factors read as ``theta + stopgrad(phi - theta)``
    (:func:`metalora_plugins.abmll.pairs.task_factors`). ``fuse`` (default
    True) allows the fused :class:`SampledLinear` path where it is exact.
    While ``kl`` holds a :class:`KLRequest`, the fused layers take it (the
    KL's gradient joins their backward pass); the others leave it to the
    learner.
    """

    includes_base = True

    def __init__(self, mode: str, spec: Specs, fuse: bool = True) -> None:
        if mode not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling mode {mode!r}; valid choices: "
                             + ", ".join(SAMPLING_MODES))
        self.mode = mode
        self.spec = spec
        self.fuse = fuse
        self.straight_through = False
        self.kl: KLRequest | None = None
        self.workspace = Workspace()

    def __call__(self, layer: AdaptedLinear, x: Tensor) -> Tensor:
        f = task_factors(layer, self.straight_through)
        s = layer.scaling
        spec = spec_of(self.spec, layer)
        base = layer.base
        if (self.mode == "weight" and self.fuse and base.weight.dtype == x.dtype
                and not torch.is_autocast_enabled(x.device.type)
                and float32_products_are_exact(x.device.type)):
            p: tuple[Tensor | None, ...] = (None,) * 4
            ask = None
            if self.kl is not None:
                p = global_factors(layer, detach=self.kl.detach_theta).tensors()
                ask = (self.kl, id(layer))
            return SampledLinear.apply(x, base.weight, base.bias, *f.tensors(), *p, s, spec,
                                       NoiseKey.take(x.device), self.workspace, ask)
        out = base(x.to(base.weight.dtype)).to(x.dtype)
        out = out + s * F.linear(F.linear(x, f.mu_A), f.mu_B)
        if self.mode == "mean":
            return out
        noise_fn = WeightNoise if self.mode == "weight" else LocalNoise
        # the noise's dense products in the weights' precision (bfloat16 runs bfloat16)
        compute = base.weight.dtype if base.weight.dtype != x.dtype else None
        return out + noise_fn.apply(x, f.v_A, f.v_B, s, spec, NoiseKey.take(x.device), compute)

    def __repr__(self) -> str:
        return f"ABMLLDelta(mode={self.mode!r}, spec={self.spec!r}, fuse={self.fuse})"
