"""Gradient (activation) checkpointing of a Hugging Face model's transformer layers.

Run setting ``gradient_checkpointing``. Each transformer layer keeps only its
input for backward and recomputes its activations there: activation memory
drops from every layer's intermediate tensors to one hidden state per layer,
for about one more forward pass of compute.

transformers checkpoints its layers only in training mode, which would also
switch dropout on and is undone by every ``model.eval()`` (the evaluation
protocol calls it). metalora keeps the model in eval mode and wraps each
layer's ``forward`` itself with :func:`torch.utils.checkpoint.checkpoint`
(non-reentrant, RNG state preserved, so a recomputed forward pass draws the
same random numbers, e.g. ABMLL's weight noise). The wrapper checkpoints
only when gradients are being recorded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from metalora.errors import MetaloraError


def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """The checkpointable transformer layers (``GradientCheckpointingLayer``) of ``model``."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def enable_gradient_checkpointing(model: nn.Module, name: str = "the model") -> int:
    """Checkpoint every transformer layer of ``model``; returns how many were wrapped."""
    layers = transformer_layers(model)
    if not layers:
        raise MetaloraError(f"{name} has no transformer layers that support gradient "
                            "checkpointing; run without --gradient-checkpointing")
    for layer in layers:
        if getattr(layer, "_metalora_checkpointed", False):
            continue
        layer.forward = _checkpointed(layer.forward)
        layer._metalora_checkpointed = True
    return len(layers)


def _checkpointed(forward: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run
