"""``blob``: a variational LoRA in the style of BLoB (Wang et al., NeurIPS 2024).

Each adapted layer's ``A`` is a diagonal Gaussian ``N(M, diag(sigma^2))``, learned
per element, with ``sigma = rho^2`` (BLoB's parameterisation; ``rho`` lives in the
``A`` of a second adapter pair named ``"rho"``, whose ``B`` is unused and frozen);
``B`` stays a point estimate. Every forward pass draws one ``A = M + sigma * eps``
per layer, shared by the batch's examples (no flipout), and adds ``s * B A x``.
The prior is ``N(0, prior_std^2)`` on every element of ``A``.

Training is ``lora``'s batch stream (the shuffled union of the training tasks:
"meta-trained like lora"), and each step is BLoB's two updates: AdamW at ``lr`` on
the answer loss averaged over ``train_samples`` draws (``M``, ``B`` and ``rho``),
then plain SGD at ``kl_lr`` on ``KL(q(A) || p(A))`` divided by the number of
batches in an epoch (``M`` and ``rho``; over an epoch the KL then counts once, as
in BLoB without its KL re-weighting). Test-time adaptation is the protocol's
(AdamW on ``M`` and ``B``, noise on; ``sigma`` stays as training left it).
Prediction averages the option probabilities over ``eval_samples`` draws. With
``init_eps = 0`` and ``kl_lr = 0`` it is ``lora`` exactly (``sigma = 0``, and
``rho``'s gradient ``2 rho eps dL/dA`` is then zero).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalora import (
    AdaptedLinear,
    Batch,
    LearnerContext,
    MetaloraError,
    StepLog,
    Task,
    adamw,
    answer_loss,
    hookimpl,
    option_probs,
    setting,
)
from metalora_plugins.lora import LoraLearner, LoraSettings

RHO = "rho"


@dataclass(frozen=True)
class BlobSettings(LoraSettings):
    """Settings of ``blob`` (``lora``'s, and the variational part's)."""

    lr: float = setting(5e-5, "blob: AdamW learning rate of the answer loss (as lora's).", gt=0)
    init_eps: float = setting(
        0.05, "blob: rho starts uniform in [init_eps/sqrt(2), init_eps], so sigma = rho^2 "
              "starts in [init_eps^2/2, init_eps^2] (BLoB's default 0.05).", ge=0)
    prior_std: float = setting(
        0.2, "blob: standard deviation of the N(0, prior_std^2) prior on every element of A "
             "(BLoB's default 0.2).", gt=0)
    kl_lr: float = setting(
        0.02, "blob: SGD learning rate of the KL step (BLoB's default 0.02); 0 = no KL "
              "(weight noise without a prior).", ge=0)
    train_samples: int = setting(1, "blob: weight draws averaged in each training loss.", ge=1)
    eval_samples: int = setting(
        10, "blob: weight draws averaged per prediction (BLoB's default 10).", ge=1)

    def check(self) -> None:
        if self.kl_lr > 0 and self.init_eps == 0:
            raise MetaloraError("blob: init_eps 0 puts sigma at 0, where the KL is infinite; "
                                "give init_eps > 0, or kl_lr 0")


def gaussian_kl(mean: Tensor, std: Tensor, prior_std: float) -> Tensor:
    """``sum KL(N(mean, std^2) || N(0, prior_std^2))`` over the elements, in float64."""
    ratio = (std.double() / prior_std).square()
    return 0.5 * (ratio + (mean.double() / prior_std).square() - 1.0 - ratio.log()).sum()


class VariationalLowRankDelta:
    """``s * B (M + rho^2 * eps) x`` with ``eps`` drawn afresh at every call;
    with ``sample`` false, the mean ``s * B M x``."""

    def __init__(self, pair: str, rho_pair: str) -> None:
        self.pair, self.rho_pair = pair, rho_pair
        self.sample = True

    def __call__(self, layer: AdaptedLinear, x: Tensor) -> Tensor:
        pair = layer.pairs[self.pair]
        a = pair.A
        if self.sample:
            a = a + layer.pairs[self.rho_pair].A.square() * torch.randn_like(a)
        return layer.scaling * F.linear(F.linear(x, a), pair.B)


class BlobLearner(LoraLearner):
    """Variational LoRA, BLoB style (see the module)."""

    name = "blob"
    description = ("Variational LoRA (BLoB style): a learned Gaussian on A with its KL to "
                   "N(0, prior_std^2), averaged over eval_samples weight draws.")
    Settings = BlobSettings
    extra_pairs = (RHO,)
    adapted_pairs = ("default", RHO)
    export_sidecar_pairs = (RHO,)
    evaluation_settings = ("eval_samples",)
    supports_distributed = False

    def __init__(self, context: LearnerContext) -> None:
        super().__init__(context)
        s = self.settings
        with torch.no_grad():
            for layer in self.adapters.layers.values():
                rho = layer.pairs[RHO]
                rho.A.uniform_(s.init_eps / math.sqrt(2), s.init_eps)
                rho.B.zero_()
                rho.B.requires_grad_(False)
        self.delta = VariationalLowRankDelta(self.pair, RHO)
        self.adapters.set_delta(self.delta)
        self.optimizer = adamw([*self.adapters.parameters([self.pair]), *self.rhos()],
                               s.lr, s.weight_decay)
        self.kl_optimizer = (torch.optim.SGD([*self.means(), *self.rhos()], lr=s.kl_lr)
                             if s.kl_lr > 0 else None)

    def means(self) -> list[nn.Parameter]:
        """Every layer's ``M`` (the mean of ``A``)."""
        return [layer.pairs[self.pair].A for layer in self.adapters.layers.values()]

    def rhos(self) -> list[nn.Parameter]:
        """Every layer's ``rho`` (``sigma = rho^2``)."""
        return [layer.pairs[RHO].A for layer in self.adapters.layers.values()]

    def kl(self) -> Tensor:
        """``KL(q(A) || p(A))`` summed over every element of every layer's ``A``."""
        return sum((gaussian_kl(m, r.square(), self.settings.prior_std)
                    for m, r in zip(self.means(), self.rhos(), strict=True)),
                   start=torch.zeros((), dtype=torch.float64, device=self.context.device))

    def mean_sigma(self) -> float:
        """The mean of ``sigma`` over every element (logged)."""
        with torch.no_grad():
            rhos = self.rhos()
            return float(sum(r.square().sum() for r in rhos) / sum(r.numel() for r in rhos))

    def train_step(self, batch: Batch, epoch: int, step: int, tasks: Sequence[Task]) -> StepLog:
        draws = self.settings.train_samples
        nll = sum(answer_loss(self.context.model, batch, over=self.context.train_loss)
                  for _ in range(draws)) / draws
        self.optimizer.zero_grad(set_to_none=True)
        nll.backward()
        self.optimizer.step()
        components = {"nll": float(nll.detach())}
        loss = components["nll"]
        if self.kl_optimizer is not None:
            batches = self.steps_per_epoch(tasks)
            kl = self.kl()
            self.kl_optimizer.zero_grad(set_to_none=True)
            (kl / batches).backward()
            self.kl_optimizer.step()
            components["kl"] = float(kl.detach())
            loss += components["kl"] / batches
        components["sigma"] = self.mean_sigma()
        return StepLog(epoch=epoch, task=None, step=step, loss=loss, components=components)

    def predict_samples(self, batch: Batch) -> Tensor:
        """``(eval_samples, B, O)``: the option probabilities under each weight draw."""
        return torch.stack([option_probs(self.context.model, batch)
                            for _ in range(self.settings.eval_samples)])

    def predict_proba(self, batch: Batch) -> Tensor:
        return self.predict_samples(batch).mean(0)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "kl_optimizer": (
            None if self.kl_optimizer is None else self.kl_optimizer.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        saved = state.get("kl_optimizer")
        if saved is not None and self.kl_optimizer is not None:
            self.kl_optimizer.load_state_dict(saved)


@hookimpl
def register_learners(register):
    register(BlobLearner)
