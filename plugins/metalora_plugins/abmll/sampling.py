"""Weight sampling under the task posterior q(phi | D) = N(W0 + mu_phi, sigma_phi^2).

:class:`ABMLLDelta` is the adapter *delta* ABMLL installs in every adapted
layer (:func:`metalora.adapters.attach_adapters`). It computes the layer's
whole output (``includes_base``). Three sampling modes (setting ``sampling``):

``weight`` (default)
    The exact weight-space reparameterised sample
    ``W = W0 + mu_phi + sigma_phi * eps``, ``eps ~ N(0, I)`` of shape
    ``d_out x d_in``, one sample per forward pass shared by every example and
    token of the batch (SPEC section 3.3). :class:`SampledLinear` builds
    ``W`` for one layer, computes ``x W^T`` in one matrix product and frees
    ``W``; it saves only the layer input, the frozen ``W0`` (a parameter,
    no copy), the four small factors and an RNG seed. Backward rebuilds
    ``W`` from the seed, one layer at a time. No dense ``d_out x d_in``
    tensor is kept for backward, and the extra cost over LoRA is one dense
    matrix product (``g^T x``) plus a few elementwise passes per layer.
    When ``W0`` is not float32 or autocast is on (where adding a ~1e-4
    noise to ``W0`` in low precision would round it away), the same sample
    is computed additively: ``W0 x`` in the model's precision plus the
    low-rank mean plus :class:`WeightNoise`, ``x (sigma * eps)^T`` in
    float32, with the same regenerate-in-backward scheme.
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

Seeds for the noise are drawn from torch's global CPU generator, so runs are
reproducible under :func:`torch.manual_seed` (the evaluation protocol seeds
it per task), and a forward pass recomputed by activation checkpointing
(which restores the RNG state) draws the same sample again.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from metalora.adapters import AdaptedLinear
from metalora_plugins.abmll.pairs import LogVarSpec, task_factors

SAMPLING_MODES: tuple[str, ...] = ("weight", "local", "mean")


def draw_seed() -> int:
    """A seed for one noise draw, from torch's global (CPU) generator."""
    return int(torch.randint(0, 2**62, (1,)).item())


class Workspace:
    """Reusable buffers for the dense ``d_out x d_in`` temporaries of one layer at a time.

    Every dense matrix ABMLL builds (sampled weight, noise, log-variances,
    their gradients) lives only while one layer is processed. On CPU a fresh
    multi-megabyte allocation per temporary costs page faults on every use,
    so one buffer per numbered slot (ABMLL uses four) is kept and reused; a
    buffer grows to the largest adapted layer and never shrinks. On GPU the
    caching allocator already reuses memory and plain allocations are used.
    """

    def __init__(self) -> None:
        self._buffers: dict[int, Tensor] = {}

    def get(self, slot: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialised tensor of ``shape`` (valid until ``slot`` is asked for again)."""
        if like.device.type != "cpu":
            return torch.empty(shape, dtype=like.dtype, device=like.device)
        n = math.prod(shape)
        buffer = self._buffers.get(slot)
        if buffer is None or buffer.numel() < n or buffer.dtype != like.dtype:
            buffer = torch.empty(n, dtype=like.dtype)
            self._buffers[slot] = buffer
        return buffer[:n].view(shape)

    def nbytes(self) -> int:
        """Bytes held."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def clear(self) -> None:
        """Free every buffer."""
        self._buffers.clear()


def _empty(workspace: Workspace | None, slot: int, shape: tuple[int, ...],
           like: Tensor) -> Tensor:
    if workspace is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return workspace.get(slot, shape, like)


def standard_normal(shape: tuple[int, ...], like: Tensor, seed: int,
                    out: Tensor | None = None) -> Tensor:
    """``N(0, 1)`` noise of ``shape`` on ``like``'s device and dtype, determined by ``seed``."""
    gen = torch.Generator(device=like.device)
    gen.manual_seed(seed)
    if out is not None:
        return torch.randn(shape, generator=gen, out=out)
    return torch.randn(shape, generator=gen, device=like.device, dtype=like.dtype)


def scaled_log_var(v_A: Tensor, v_B: Tensor, scaling: float, spec: LogVarSpec,
                   factor: float = 1.0,
                   out: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """``factor * clamp(s * v_B @ v_A + c)`` (dense) and where the clamp passes gradients.

    ``c`` and ``factor`` enter the product as one more rank
    (``[f s B, f c] @ [A; 1]``), so the matrix is written in a single pass.
    The mask is ``None`` when no element is clamped (checked on CPU; always
    built on GPU, where checking would cost a device sync).
    """
    d_out, d_in = v_B.shape[0], v_A.shape[1]
    B_aug = torch.cat([v_B * (factor * scaling), v_B.new_full((d_out, 1), factor * spec.offset)],
                      1)
    A_aug = torch.cat([v_A, v_A.new_ones((1, d_in))], 0)
    value = torch.mm(B_aug, A_aug, out=out) if out is not None else B_aug @ A_aug
    low, high = sorted((factor * spec.low, factor * spec.high))
    if not value.is_cuda:
        # |s B @ A| <= s * max_i sum_k |B_ik| max_j |A_kj|: a cheap bound that usually proves
        # that nothing needs clamping (B starts at zero and stays small); else look
        bound = abs(factor * scaling) * float(
            (v_B.detach().abs() @ v_A.detach().abs().amax(dim=1)).max())
        center = factor * spec.offset
        if low <= center - bound and center + bound <= high:
            return value, None
        lo_val, hi_val = torch.aminmax(value)
        if lo_val >= low and hi_val <= high:
            return value, None
    inside = (value >= low) & (value <= high)
    return value.clamp_(low, high), inside


def half_log_var(v_A: Tensor, v_B: Tensor, scaling: float,
                 spec: LogVarSpec) -> tuple[Tensor, Tensor | None]:
    """``0.5 * clamp(s * v_B @ v_A + c)`` and its clamp mask (see :func:`scaled_log_var`)."""
    return scaled_log_var(v_A, v_B, scaling, spec, 0.5)


def _sigma_eps(v_A: Tensor, v_B: Tensor, scaling: float, spec: LogVarSpec, seed: int,
               workspace: Workspace | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(sigma, eps, clamp mask)`` of one draw; ``sigma * eps`` is the weight noise."""
    shape = (v_B.shape[0], v_A.shape[1])
    sigma, inside = scaled_log_var(v_A, v_B, scaling, spec, 0.5,
                                   out=_empty(workspace, 0, shape, v_A))
    sigma.exp_()
    eps = standard_normal(shape, sigma, seed, out=_empty(workspace, 1, shape, v_A))
    return sigma, eps, inside


def sample_noise(v_A: Tensor, v_B: Tensor, scaling: float, spec: LogVarSpec,
                 seed: int) -> tuple[Tensor, Tensor | None]:
    """The dense weight noise ``sigma * eps`` of one draw and the clamp mask (no autograd)."""
    with torch.no_grad():
        sigma, eps, inside = _sigma_eps(v_A.detach(), v_B.detach(), scaling, spec, seed, None)
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
    half_s = 0.5 * scaling
    grad_A = torch.mm(v_B.t(), grad).mul_(half_s) if needs[0] else None
    grad_B = torch.mm(grad, v_A.t()).mul_(half_s) if needs[1] else None
    return grad_A, grad_B


class SampledLinear(torch.autograd.Function):
    """``x W^T + bias`` with ``W = W0 + s B_mu A_mu + exp(logv / 2) * eps``, one layer, fused.

    Inputs: ``x``, ``W0``, ``bias`` (or None), ``mu_A``, ``mu_B``, ``v_A``,
    ``v_B``, then the constants ``scaling``, ``spec``, ``seed`` and a
    :class:`Workspace` (or None). ``W0`` and ``bias`` are frozen (no
    gradient is returned for them).
    """

    @staticmethod
    def _weight(W0: Tensor, mu_A: Tensor, mu_B: Tensor, v_A: Tensor, v_B: Tensor,
                scaling: float, spec: LogVarSpec, seed: int,
                workspace: Workspace | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``(W, sigma, eps, clamp mask)``."""
        sigma, eps, inside = _sigma_eps(v_A, v_B, scaling, spec, seed, workspace)
        weight = torch.addmm(W0, mu_B, mu_A, alpha=scaling,
                             out=_empty(workspace, 2, tuple(W0.shape), v_A))
        return weight.addcmul_(sigma, eps), sigma, eps, inside

    @staticmethod
    def forward(ctx: Any, x: Tensor, W0: Tensor, bias: Tensor | None, mu_A: Tensor,
                mu_B: Tensor, v_A: Tensor, v_B: Tensor, scaling: float, spec: LogVarSpec,
                seed: int, workspace: Workspace | None = None) -> Tensor:
        weight, *_ = SampledLinear._weight(W0, mu_A, mu_B, v_A, v_B, scaling, spec, seed,
                                           workspace)
        out = F.linear(x, weight, bias)
        del weight
        ctx.save_for_backward(x, W0, mu_A, mu_B, v_A, v_B)
        ctx.scaling, ctx.spec, ctx.seed, ctx.workspace = scaling, spec, seed, workspace
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, W0, mu_A, mu_B, v_A, v_B = ctx.saved_tensors
        needs = ctx.needs_input_grad
        scaling, workspace = ctx.scaling, ctx.workspace
        weight, sigma, eps, inside = SampledLinear._weight(W0, mu_A, mu_B, v_A, v_B, scaling,
                                                           ctx.spec, ctx.seed, workspace)
        grad_x = grad_out @ weight if needs[0] else None
        grad_mu_A = grad_mu_B = grad_v_A = grad_v_B = None
        if any(needs[3:7]):
            d_out, d_in = weight.shape
            grad_w = torch.mm(grad_out.reshape(-1, d_out).t(), x.reshape(-1, d_in),
                              out=_empty(workspace, 2, (d_out, d_in), weight))  # dL/dW
            del weight
            if needs[3]:
                grad_mu_A = torch.mm(mu_B.t(), grad_w).mul_(scaling)
            if needs[4]:
                grad_mu_B = torch.mm(grad_w, mu_A.t()).mul_(scaling)
            grad_v_A, grad_v_B = _log_var_grads(grad_w.mul_(sigma), eps, inside, v_A, v_B,
                                                scaling, (needs[5], needs[6]))
        return (grad_x, None, None, grad_mu_A, grad_mu_B, grad_v_A, grad_v_B, None, None, None,
                None)


class WeightNoise(torch.autograd.Function):
    """``x (sigma * eps)^T`` alone, with ``eps`` regenerated from a seed in backward.

    Inputs: ``x`` (``... x d_in``), the variance factors ``v_A`` (``r x d_in``)
    and ``v_B`` (``d_out x r``), then the constants ``scaling``, ``spec`` and
    ``seed``. Saved for backward: ``x``, ``v_A``, ``v_B`` only.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, v_A: Tensor, v_B: Tensor, scaling: float,
                spec: LogVarSpec, seed: int) -> Tensor:
        noise, _ = sample_noise(v_A, v_B, scaling, spec, seed)
        out = F.linear(x, noise)
        del noise
        ctx.save_for_backward(x, v_A, v_B)
        ctx.scaling, ctx.spec, ctx.seed = scaling, spec, seed
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, v_A, v_B = ctx.saved_tensors
        noise, inside = sample_noise(v_A, v_B, ctx.scaling, ctx.spec, ctx.seed)
        grad_x = grad_out @ noise if ctx.needs_input_grad[0] else None
        grad_A = grad_B = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            d_out, d_in = noise.shape
            grad_noise = grad_out.reshape(-1, d_out).t() @ x.reshape(-1, d_in)
            grad_A, grad_B = _log_var_grads(grad_noise, noise, inside, v_A, v_B, ctx.scaling,
                                            (ctx.needs_input_grad[1], ctx.needs_input_grad[2]))
        return grad_x, grad_A, grad_B, None, None, None


class LocalNoise(torch.autograd.Function):
    """Local reparameterisation: ``sqrt((x*x) sigma^2^T) * z``, ``z`` regenerated in backward."""

    @staticmethod
    def _std(x2: Tensor, v_A: Tensor, v_B: Tensor, scaling: float,
             spec: LogVarSpec) -> tuple[Tensor, Tensor, Tensor | None]:
        var, inside = half_log_var(v_A, v_B, scaling, spec)
        var.mul_(2.0).exp_()
        return F.linear(x2, var).sqrt_(), var, inside

    @staticmethod
    def forward(ctx: Any, x: Tensor, v_A: Tensor, v_B: Tensor, scaling: float,
                spec: LogVarSpec, seed: int) -> Tensor:
        std, _, _ = LocalNoise._std(x * x, v_A, v_B, scaling, spec)
        out = std.mul_(standard_normal(tuple(std.shape), std, seed))
        ctx.save_for_backward(x, v_A, v_B)
        ctx.scaling, ctx.spec, ctx.seed = scaling, spec, seed
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, v_A, v_B = ctx.saved_tensors
        x2 = x * x
        std, var, inside = LocalNoise._std(x2, v_A, v_B, ctx.scaling, ctx.spec)
        z = standard_normal(tuple(std.shape), std, ctx.seed)
        # out = sqrt(m2) * z with m2 = (x*x) var^T: d out / d m2 = z / (2 std)
        grad_m2 = torch.where(std > 0, grad_out * z * 0.5 / std, torch.zeros_like(std))
        del z, std
        grad_x = 2.0 * x * (grad_m2 @ var) if ctx.needs_input_grad[0] else None
        grad_A = grad_B = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            d_out, d_in = var.shape
            # dL/dlogv = dL/dvar * var = (grad_m2^T x2) * var; reuse the noise helper with
            # noise := 2 var (it multiplies by noise / 2)
            grad_var = grad_m2.reshape(-1, d_out).t() @ x2.reshape(-1, d_in)
            grad_A, grad_B = _log_var_grads(grad_var, var.mul_(2.0), inside, v_A, v_B,
                                            ctx.scaling,
                                            (ctx.needs_input_grad[1], ctx.needs_input_grad[2]))
        return grad_x, grad_A, grad_B, None, None, None


class ABMLLDelta:
    """ABMLL's adapter delta: the layer output under one weight sample of the task posterior.

    ``straight_through`` is switched on by the learner for the outer step, so
    that the task factors read as ``theta + stopgrad(phi - theta)``
    (:func:`metalora_plugins.abmll.pairs.task_factors`). ``fuse`` (default
    True) allows the fused :class:`SampledLinear` path where it is exact.
    """

    includes_base = True

    def __init__(self, mode: str, spec: LogVarSpec, fuse: bool = True) -> None:
        if mode not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling mode {mode!r}; valid choices: "
                             + ", ".join(SAMPLING_MODES))
        self.mode = mode
        self.spec = spec
        self.fuse = fuse
        self.straight_through = False
        self.workspace = Workspace()

    def __call__(self, layer: AdaptedLinear, x: Tensor) -> Tensor:
        f = task_factors(layer, self.straight_through)
        s = layer.scaling
        base = layer.base
        if (self.mode == "weight" and self.fuse and base.weight.dtype == x.dtype
                and not torch.is_autocast_enabled(x.device.type)):
            return SampledLinear.apply(x, base.weight, base.bias, f.mu_A, f.mu_B, f.v_A, f.v_B,
                                       s, self.spec, draw_seed(), self.workspace)
        out = base(x.to(base.weight.dtype)).to(x.dtype)
        out = out + s * F.linear(F.linear(x, f.mu_A), f.mu_B)
        if self.mode == "mean":
            return out
        noise_fn = WeightNoise if self.mode == "weight" else LocalNoise
        return out + noise_fn.apply(x, f.v_A, f.v_B, s, self.spec, draw_seed())

    def __repr__(self) -> str:
        return f"ABMLLDelta(mode={self.mode!r}, spec={self.spec!r}, fuse={self.fuse})"
