"""``mc-dropout``: regular LoRA with dropout on the LoRA path, kept on at test time.

The LoRA update of every adapted layer becomes ``s * B A dropout_p(x)`` (dropout on
the adapter's input, as peft's ``lora_dropout``; the frozen base path has none).
Training is ``lora``'s (the shuffled union of the training tasks); test-time
adaptation is the protocol's, with dropout on. Prediction averages the option
probabilities over ``mc_samples`` dropout masks (Monte Carlo dropout, Gal &
Ghahramani 2016): the spread over masks is the model's uncertainty. With
``dropout = 0`` it is ``lora`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from metalora import AdaptedLinear, Batch, LearnerContext, hookimpl, option_probs, setting
from metalora_plugins.lora import LoraLearner, LoraSettings


@dataclass(frozen=True)
class McDropoutSettings(LoraSettings):
    """Settings of ``mc-dropout`` (``lora``'s, and the dropout's)."""

    lr: float = setting(5e-5, "mc-dropout: AdamW learning rate (as lora's).", gt=0)
    dropout: float = setting(0.1, "mc-dropout: dropout probability on each LoRA input, in "
                                  "training, adaptation and prediction.", ge=0, lt=1)
    mc_samples: int = setting(8, "mc-dropout: dropout masks averaged per prediction.", ge=1)


class DropoutLowRankDelta:
    """``s * B (A dropout_p(x))`` of one pair, dropout always on."""

    def __init__(self, pair: str, p: float) -> None:
        self.pair, self.p = pair, p

    def __call__(self, layer: AdaptedLinear, x: Tensor) -> Tensor:
        pair = layer.pairs[self.pair]
        if self.p > 0:
            x = F.dropout(x, self.p, training=True)
        return layer.scaling * F.linear(F.linear(x, pair.A), pair.B)


class McDropoutLearner(LoraLearner):
    """``lora`` with MC dropout on the LoRA path (see the module)."""

    name = "mc-dropout"
    description = ("LoRA with dropout on the adapter input, averaged over mc_samples "
                   "masks at test time (MC dropout).")
    Settings = McDropoutSettings
    evaluation_settings = ("mc_samples",)

    def __init__(self, context: LearnerContext) -> None:
        super().__init__(context)
        self.adapters.set_delta(DropoutLowRankDelta(self.pair, self.settings.dropout))

    def predict_samples(self, batch: Batch) -> Tensor:
        """``(mc_samples, B, O)``: the option probabilities under each dropout mask."""
        return torch.stack([option_probs(self.context.model, batch)
                            for _ in range(self.settings.mc_samples)])

    def predict_proba(self, batch: Batch) -> Tensor:
        return self.predict_samples(batch).mean(0)


@hookimpl
def register_learners(register):
    register(McDropoutLearner)
