"""Dense per-layer matrices built from low-rank factors, one layer at a time.

Every dense ``d_out x d_in`` matrix ABMLL needs (sampled weight, noise,
log-variances, KL terms and their gradients) is built from the small LoRA
factors while one layer is processed and dropped before the next.
:class:`Workspace` lends reusable buffers for them; :func:`scaled_log_var`
builds a clamped log-variance in one matrix product.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metalora_plugins.abmll.pairs import LogVarSpec


class Workspace:
    """Reusable buffers for the dense ``d_out x d_in`` temporaries of one layer at a time.

    On CPU a fresh multi-megabyte allocation per temporary costs page faults
    on every use, so one buffer per numbered slot is kept and reused (ABMLL
    uses at most six); a buffer grows to the largest adapted layer and never
    shrinks. On GPU the caching allocator already reuses memory and plain
    allocations are used.
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


def scratch(workspace: Workspace | None, slot: int, shape: tuple[int, ...],
            like: Tensor) -> Tensor:
    """An uninitialised ``shape`` tensor like ``like``: from ``workspace`` slot, or fresh."""
    if workspace is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return workspace.get(slot, shape, like)


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


def low_rank_sum(A: Tensor, B: Tensor) -> Tensor:
    """``sum(B @ A)`` without the dense product: ``(1^T B)(A 1)``, in the factors' dtype
    (float32: nothing on the training path is float64, which some devices lack)."""
    return B.detach().sum(0) @ A.detach().sum(1)


def factor_grads(grad: Tensor, A: Tensor, B: Tensor, scale: float,
                 needs: tuple[bool, bool]) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of ``A`` and ``B`` given ``scale * grad``, the gradient w.r.t. ``B @ A``.

    ``needs`` says which of the two are wanted (the other is ``None``). The
    scale is applied to the small results, not in a pass over ``grad``.
    """
    grad_A = torch.mm(B.detach().t(), grad).mul_(scale) if needs[0] else None
    grad_B = torch.mm(grad, A.detach().t()).mul_(scale) if needs[1] else None
    return grad_A, grad_B
