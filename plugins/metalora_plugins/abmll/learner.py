"""The ``abmll`` learner: Amortized Bayesian Meta-Learning for LoRA.

One epoch (paper Algorithm 1), for each training task in a seeded shuffled
order:

1. reset: copy the global pairs (theta) into the task pairs (phi), bit for bit;
2. ``inner_steps`` AdamW steps (``inner_lr``) on
   ``NLL + beta * KL(q(phi|D) || p(phi|theta))`` with respect to phi only
   (theta is detached), a fresh batch of the task each step;
3. one outer AdamW step (``outer_lr``) on a fresh batch, on
   ``NLL + beta * KL + gamma * (-log p(theta))`` with respect to theta only.
   The paper leaves open how phi depends on theta there; ``meta_gradient``
   chooses the reading:

   * ``first-order``: phi's factors enter as
     ``theta + stopgrad(phi - theta)`` (exactly phi's value), so the NLL
     gradient at phi reaches theta as in first-order MAML and the KL reaches
     theta both directly and through phi's factors (where its two arguments'
     gradients largely cancel). This is the reading of the paper's notation:
     it writes the posterior as q_theta(phi | D) and makes phi a few gradient
     steps from theta, so the NLL is meant to reach theta through phi, and
     with no second-order gradients that is the first-order form.
   * ``literal`` (default): phi is a separate copy that does not depend on
     theta, so theta's gradient is ``beta * dKL + gamma * d(-log p(theta))``
     only. What that is, measured: with ``mu = s * B @ A`` the KL's gradient
     on ``B_mu_theta`` is ``lambda * s^2 * (B_phi - B_theta) A A^T`` plus a
     second-order term, so it points along ``B_phi - B_theta`` (the Reptile
     direction; cosine above 0.9 in the tests, and on SmolLM2 on the
     Benchmarks page), with the scale ``lambda = beta * exp(-c)`` (4.85 at
     the defaults), which AdamW divides away. So the outer step is
     Reptile's pseudo-gradient ``theta - phi`` fed to AdamW, and in the
     inner loop and at test time the KL is a proximal pull of phi towards
     theta of strength lambda. beta and c act
     on the means only through lambda, and through whether theta's gradient
     stays above AdamW's epsilon (``outer_eps``): at beta = 1e-16 it does
     not, and theta stops moving. The outer NLL is evaluated without a
     gradient, for the log.

   ``reptile`` with ``reptile_outer = adamw`` is the control for ``literal``:
   the same pseudo-gradient into AdamW, without the KL, the noise or the
   prior. The Benchmarks page has the evidence behind the default.

The variances: with the paper's settings (c = -20, Normal-Gamma a0 = 1,
b0 = 0.01, one AdamW for every pair) the log-variance cannot learn from the
data: while ``B'`` is zero ``A'`` gets no gradient, the inner loop's noise
gradient is zero-mean at the size of AdamW's epsilon, and the prior's
data-independent push is 10^5 to 10^6 times the KL's. The settings
``log_var_relative`` (c from each layer's weight spread), ``prior_log_var =
relative`` with ``a0 = b0`` and ``prior_jacobian`` (the prior anchored at
the initial variance) and ``variance_optimizer`` (the variance pairs'
own optimiser, without weight decay) let it learn, within the paper's
model: sigma_theta^2 then moves towards sigma_0^2 + (beta / 2 gamma)
E[(mu_phi - mu_theta)^2], the spread of the task-adapted means around
theta (tested: larger where the training tasks disagree).

A strong pull and AdamW's momentum: once the pull's curvature times ``inner_lr`` is a
few times the data's gradient, the fresh inner AdamW's momentum carries the task means
back past theta within the five steps, so they end on the far side of theta from where
the data pointed and the outer step follows them up the loss (tested on the tiny model).
On SmolLM2 that is what makes the global means run away after about ten epochs at
beta = 1e-8 with sigma held fixed; ``inner_momentum = 0`` (AdamW's beta1) turns that
momentum off, and without it they did not run away, at three seeds (the Uncertainty page's "How
the pull makes the global means grow").

Test-time adaptation (:meth:`ABMLLLearner.adapt`) is the inner loop on the
support set with the run's ``adapt_steps`` / ``adapt_lr``, starting from the
global pairs; prediction averages the option probabilities over
``eval_samples`` weight samples. The evaluation protocol restores every
adapter tensor afterwards.

Memory: only the four LoRA pairs per layer (and the outer optimiser's state
for the two global ones) persist, whatever the number of tasks; the inner
optimiser is created per task and dropped after it. The weight noise is
regenerated from its key in backward (:mod:`metalora_plugins.abmll.sampling`).
The KL's gradient is added inside each sampled layer's backward pass (a
:class:`~metalora_plugins.abmll.objective.KLRequest`); layers on another
path, and the prior, are back-propagated one layer at a time after it
(:func:`~metalora_plugins.abmll.objective.backward_regularisers`). So no
dense ``d_out x d_in`` tensor outlives the processing of its layer. On CPU
those per-layer temporaries reuse a few buffers the size of the largest
adapted weight (:class:`~metalora_plugins.abmll.dense.Workspace`).

Right after a reset the task pairs equal the global pairs bit for bit, so
the KL and its gradient are exactly zero: an inner step that finds the pairs
equal (the first of each task) skips computing them.

Numerical safety: log-variances are clamped to ``[log_var_min, log_var_max]``;
a step whose loss is NaN or infinite is not applied, is logged, and ends the
epoch, so the engine stops the run with the epoch, task and step and the
adapters stay at their last good values.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metalora import (
    AdapterHandle,
    Batch,
    Learner,
    LearnerContext,
    MetaloraError,
    Prior,
    StepLog,
    Task,
    answer_loss,
    attach_adapters,
    option_probs,
    setting,
)
from metalora_plugins.abmll.objective import KLRequest, backward_regularisers, prior_terms
from metalora_plugins.abmll.pairs import (
    GLOBAL_PAIRS,
    LOGV_PHI,
    MU_PHI,
    MU_THETA,
    PAIR_NAMES,
    TASK_OF,
    TASK_PAIRS,
    LayerSpecs,
    LogVarSpec,
    global_factors,
    relative_log_var,
    task_factors,
)
from metalora_plugins.abmll.sampling import SAMPLING_MODES, ABMLLDelta

FIRST_ORDER, LITERAL = "first-order", "literal"
VARIANCE_OPTIMIZERS: tuple[str, ...] = ("shared", "adamw", "sgd")
META_GRADIENTS: tuple[str, ...] = (FIRST_ORDER, LITERAL)


@dataclass(frozen=True)
class ABMLLSettings:
    """Settings of ``abmll`` (defaults: the paper's)."""

    inner_lr: float = setting(
        1e-5, "ABMLL inner-loop learning rate: AdamW on the task pairs phi (paper: 1e-5). "
              "Test-time adaptation uses adapt_lr and adapt_steps instead.", gt=0)
    outer_lr: float = setting(
        5e-5, "ABMLL outer learning rate: AdamW on the global pairs theta (paper: 5e-5).", ge=0)
    inner_steps: int = setting(5, "Inner-loop steps per training task (paper: K = 5).", ge=1)
    weight_decay: float = setting(0.01, "AdamW weight decay.", ge=0)
    beta: float = setting(
        1e-8, "ABMLL weight beta of KL(q(phi|D) || p(phi|theta)) in the inner and outer "
              "objectives (paper: 1e-8).", ge=0)
    gamma: float | None = setting(
        None, "ABMLL weight gamma of -log p(theta) in the outer objective; unset means "
              "gamma = beta, the paper's single weight.", ge=0)
    log_var_init: float = setting(
        -20.0, "ABMLL c, the initial log-variance: logv = s*B@A + c (the paper's 'c = e^-20' "
               "is read as c = -20).")
    log_var_min: float = setting(
        -30.0, "ABMLL lower clamp of every log-variance (numerical safety; the gradient is "
               "zero below it).")
    log_var_max: float = setting(
        5.0, "ABMLL upper clamp of every log-variance (numerical safety; the gradient is zero "
             "above it).")
    train_samples: int = setting(
        1, "ABMLL weight samples per training step; the NLL is their mean (paper: 1).", ge=1)
    eval_samples: int = setting(
        1, "ABMLL weight samples per prediction; more than 1 averages the option "
           "probabilities (Bayesian model averaging; paper: 1).", ge=1)
    sampling: str = setting(
        "weight", "ABMLL noise: 'weight' = exact weight-space sample W0+mu+sigma*eps (noise "
                  "regenerated in backward, not stored); 'local' = local reparameterisation "
                  "trick (exact marginals, independent per token); 'mean' = no noise.",
        choices=SAMPLING_MODES)
    meta_gradient: str = setting(
        LITERAL, "ABMLL outer-step reading. 'literal': phi is a separate copy, so theta's "
                 "gradient is beta*KL + gamma*prior only; in effect Reptile's pseudo-gradient "
                 "(theta - phi) fed to AdamW, plus a pull of phi towards theta of strength "
                 "lambda = beta*exp(-c). 'first-order': the NLL gradient at phi reaches theta "
                 "through theta + stopgrad(phi - theta), as the paper's q_theta(phi|D) "
                 "implies. See the Benchmarks page for the evidence.",
        choices=META_GRADIENTS)
    prior: str = setting(
        "normal-gamma", "ABMLL prior p(theta), by registered name (see `metalora plugins`).")
    outer_eps: float = setting(
        1e-8, "ABMLL epsilon of the outer AdamW (torch's default 1e-8). Under 'literal' AdamW "
              "divides away the size of theta's gradient (beta*KL + gamma*prior) unless it falls "
              "below this epsilon: at 1e-8, beta = 1e-16 freezes theta.", gt=0)
    log_var_relative: float | None = setting(
        None, "ABMLL kappa: c per adapted layer = log(kappa^2 * Var(W0 of that layer)), a noise "
              "level relative to the layer's pretrained weights (e.g. 0.02); unset: the "
              "absolute log_var_init for every layer.", gt=0)
    prior_log_var: str = setting(
        "absolute", "ABMLL: what the prior reads as the global log-variance: 'absolute' logv, or "
                    "'relative' logv - c, its change since initialisation. With normal-gamma, "
                    "a0 = b0 and prior_jacobian, 'relative' is the prior anchored at the initial "
                    "variance (b0 = a0 * e^c in absolute terms).",
        choices=("absolute", "relative"))
    variance_optimizer: str = setting(
        "shared", "ABMLL: how the log-variance pairs are stepped. 'shared': in the same AdamW as "
                  "the means, at inner_lr/outer_lr, with their weight decay (the paper's "
                  "reading). 'adamw': an AdamW of their own, at variance_lr (outer) and "
                  "variance_inner_lr (inner loop and test-time adaptation), epsilon "
                  "variance_eps, no weight decay. 'sgd': plain SGD (no momentum or weight "
                  "decay) at those rates, so a step is proportional to its gradient, which "
                  "carries beta.", choices=VARIANCE_OPTIMIZERS)
    variance_lr: float = setting(
        1e-3, "ABMLL learning rate of the global log-variance pair in the outer step "
              "(variance_optimizer adamw or sgd).", ge=0)
    variance_inner_lr: float = setting(
        0.0, "ABMLL learning rate of the task log-variance pair in the inner loop and at test "
             "time (variance_optimizer adamw or sgd; 0 keeps sigma_phi = sigma_theta).", ge=0)
    inner_momentum: float = setting(
        0.9, "ABMLL: beta1 (momentum) of the AdamW that steps the task means (with "
             "variance_optimizer shared, the task log-variances too) in the inner loop and at "
             "test time (torch's default 0.9). Under a strong KL pull (lambda * s^2 * |A|^2 * "
             "inner_lr above a few times the data's gradient) momentum carries the five steps "
             "past theta, and the outer step then follows them up the loss; 0 turns it off. "
             "See the Uncertainty page.", ge=0, lt=1)
    variance_eps: float = setting(
        1e-8, "ABMLL epsilon of the log-variance pairs' own AdamW (variance_optimizer = "
              "adamw).", gt=0)

    def check(self) -> None:
        """Settings that are fine alone but not together (checked before anything loads)."""
        if self.log_var_min >= self.log_var_max:
            raise MetaloraError(f"log_var_min {self.log_var_min} must be below log_var_max "
                                f"{self.log_var_max}")
        if not self.log_var_min <= self.log_var_init <= self.log_var_max:
            raise MetaloraError(
                f"log_var_init {self.log_var_init} must lie in [log_var_min, log_var_max] = "
                f"[{self.log_var_min}, {self.log_var_max}]")
        if self.variance_optimizer == "shared" and self.variance_inner_lr:
            raise MetaloraError("variance_inner_lr needs variance_optimizer adamw or sgd (with "
                                "'shared' the variance pairs step at inner_lr)")


class ABMLLLearner(Learner):
    """ABMLL: four LoRA pairs per layer (global/task mean and log-variance); see module doc."""

    name = "abmll"
    description = "Amortized Bayesian Meta-Learning for LoRA (Zhang, Snell & Griffiths, 2025)."
    Settings = ABMLLSettings
    mean_pair = MU_THETA
    adapted_pairs = (MU_PHI, LOGV_PHI)  # the task posterior after adapt()
    evaluation_settings = ("eval_samples", "sampling", "beta", "train_samples", "weight_decay",
                           "log_var_min", "log_var_max", "variance_optimizer",
                           "variance_inner_lr", "variance_eps", "inner_momentum")
    supports_distributed = True

    def __init__(self, context: LearnerContext) -> None:
        super().__init__(context)
        s: ABMLLSettings = self.settings
        self.beta = float(s.beta)
        self.gamma = float(s.beta if s.gamma is None else s.gamma)
        relative = s.prior_log_var == "relative"
        self.spec = LogVarSpec(offset=s.log_var_init, low=s.log_var_min, high=s.log_var_max,
                               prior_origin=s.log_var_init if relative else 0.0)
        """The log-variance spec shared by every layer (unless ``log_var_relative``)."""
        self.specs = LayerSpecs(self.spec)
        """Each adapted layer's spec (:attr:`spec` unless ``log_var_relative`` gives each
        layer its own ``c``)."""
        self.prior: Prior | None = context.make_prior(s.prior)
        if self.prior is None and self.gamma != 0:
            raise MetaloraError(f"abmll needs the prior {s.prior!r} but no prior registry is "
                                "available; set gamma = 0 to train without a prior")
        self.delta = ABMLLDelta(s.sampling, self.specs)
        self._adapters = attach_adapters(context.model, context.adapter, PAIR_NAMES,
                                         delta=self.delta)
        if s.log_var_relative is not None:
            try:
                self._relative_specs(s.log_var_relative, relative)
            except BaseException:
                self._adapters.remove()
                raise
        self.outer_optimizer = self._optimizer(GLOBAL_PAIRS, s.outer_lr, s.variance_lr,
                                               s.outer_eps)
        self.reset_task()

    def _relative_specs(self, kappa: float, relative_prior: bool) -> None:
        """``c_l = log(kappa^2 Var(W0_l))`` for every adapted layer (``log_var_relative``)."""
        s: ABMLLSettings = self.settings
        for name, layer in self._adapters.layers.items():
            c = relative_log_var(layer.base.weight, kappa)
            if not s.log_var_min <= c <= s.log_var_max:
                raise MetaloraError(
                    f"abmll: log_var_relative {kappa} gives layer {name!r} c = {c:.2f}, outside "
                    f"[log_var_min, log_var_max] = [{s.log_var_min}, {s.log_var_max}]")
            self.specs.set(layer, LogVarSpec(offset=c, low=s.log_var_min, high=s.log_var_max,
                                            prior_origin=c if relative_prior else 0.0))

    # -- adapters -----------------------------------------------------------------
    @property
    def adapters(self) -> AdapterHandle:
        return self._adapters

    def reset_task(self) -> None:
        """Copy the global pairs into the task pairs (Algorithm 1's reset)."""
        for source, target in TASK_OF.items():
            self._adapters.copy_pair(source, target)
        self._no_step_since_reset = True

    def _task_equals_global(self) -> bool:
        """Whether every task factor equals its global factor bit for bit (KL exactly 0).

        Only checked while no step has been applied since the last reset.
        """
        if not self._no_step_since_reset:
            return False
        for layer in self._adapters.layers.values():
            for source, target in TASK_OF.items():
                a, b = layer.pairs[source], layer.pairs[target]
                if not (torch.equal(a.A, b.A) and torch.equal(a.B, b.B)):
                    return False
        return True

    def _clear_grads(self) -> None:
        for param in self._adapters.parameters():
            param.grad = None

    # -- objective ---------------------------------------------------------------
    def _nll_backward(self, batch: Batch, kl: KLRequest | None = None) -> float:
        """Mean answer loss over ``train_samples`` weight samples; accumulates its gradient.

        Each sample is back-propagated before the next is drawn, so memory does
        not grow with ``train_samples``. ``kl`` is offered to the layers of the
        first sample only (the KL does not depend on the sample).
        """
        n = 1 if self.settings.sampling == "mean" else self.settings.train_samples
        total = 0.0
        for i in range(n):
            self.delta.kl = kl if i == 0 else None
            try:
                loss = answer_loss(self.context.model, batch, over=self.context.train_loss)
                # backward before the request is withdrawn: under gradient checkpointing the
                # forward pass is recomputed in backward and must save what it saved the first
                # time (a sampled layer saves theta's factors only while a KL is requested)
                (loss / n).backward()
            finally:
                self.delta.kl = None
            total += float(loss.detach())
        return total / n

    def _objective_backward(self, batch: Batch, outer: bool) -> tuple[float, float, float]:
        """Gradients of the inner or outer objective; returns ``(nll, kl, -log p(theta))``.

        The fused sampled layers add the KL's gradient in their own backward
        pass; every other layer's KL, and the prior (outer step), follow layer
        by layer. When the task pairs equal the global pairs (an inner step
        right after a reset) the KL is exactly 0 and is skipped.
        """
        layers = self._adapters.layers.values()
        if not outer and self._task_equals_global():
            return self._nll_backward(batch), 0.0, 0.0
        if outer and self.settings.meta_gradient == LITERAL:
            return self._literal_outer_backward(batch)
        request = KLRequest(weight=self.beta, detach_theta=not outer)
        nll = self._nll_backward(batch, request)
        if outer:
            reg = backward_regularisers(
                layers, lambda layer: task_factors(layer, straight_through=True),
                global_factors, self.specs, self.beta, self.gamma, self.prior,
                self.delta.workspace, kl_done=request.done)
        else:
            reg = backward_regularisers(
                layers, task_factors, lambda layer: global_factors(layer, detach=True),
                self.specs, self.beta, 0.0, None, self.delta.workspace, kl_done=request.done)
        return nll, float(reg.kl) + float(request.total()), float(reg.prior)

    def _literal_outer_backward(self, batch: Batch) -> tuple[float, float, float]:
        """The outer gradients when phi is an independent copy: only the KL and the prior.

        The NLL at phi does not depend on theta, so it is evaluated without a
        gradient (for the log); phi's factors are detached leaves.
        """
        n = 1 if self.settings.sampling == "mean" else self.settings.train_samples
        with torch.no_grad():
            nll = sum(float(answer_loss(self.context.model, batch,
                                        over=self.context.train_loss))
                      for _ in range(n)) / n
        reg = backward_regularisers(
            self._adapters.layers.values(), lambda layer: task_factors(layer).detach(),
            global_factors, self.specs, self.beta, self.gamma, self.prior, self.delta.workspace)
        return nll, float(reg.kl), float(reg.prior)

    def prior_value(self) -> float:
        """``-log p(theta)`` of the current global pairs (0 without a prior)."""
        if self.prior is None:
            return 0.0
        return float(prior_terms(self._adapters.layers.values(), global_factors, self.specs,
                                 self.prior, self.delta.workspace))

    def inner_step(self, batch: Batch, optimizer: Optimizers,
                   prior_value: float | None = None) -> tuple[float, dict[str, float]]:
        """One step on ``NLL + beta * KL`` w.r.t. the task pairs only; returns (loss, terms).

        The step is not applied when the loss is not finite.
        """
        self._clear_grads()
        nll, kl, _ = self._objective_backward(batch, outer=False)
        loss = nll + self.beta * kl
        if math.isfinite(loss):
            optimizer.step()
            self._no_step_since_reset = False
        prior = self.prior_value() if prior_value is None else prior_value
        return loss, {"nll": nll, "kl": kl, "prior": prior}

    def outer_step(self, batch: Batch, apply: bool = True) -> tuple[float, dict[str, float]]:
        """One step on ``NLL + beta * KL + gamma * (-log p(theta))`` w.r.t. the global pairs only.

        The meta-gradient follows ``meta_gradient`` (see the module docstring).
        With ``apply=False`` the gradients are left in ``.grad`` and no step
        is taken (for inspection). The step is not applied when the loss is
        not finite.
        """
        self._clear_grads()
        self.delta.straight_through = True
        try:
            nll, kl, prior = self._objective_backward(batch, outer=True)
        finally:
            self.delta.straight_through = False
        loss = nll + self.beta * kl + self.gamma * prior
        if apply:  # a torchrun run averages theta's gradients (and the loss) over the ranks
            loss = self.context.ranks.average_gradients(
                self._adapters.parameters(GLOBAL_PAIRS), loss)
        if apply and math.isfinite(loss):
            self.outer_optimizer.step()
            self._no_step_since_reset = False
        return loss, {"nll": nll, "kl": kl, "prior": prior}

    def _optimizer(self, pairs: tuple[str, str], lr: float, variance_lr: float,
                   eps: float = 1e-8, beta1: float = 0.9) -> Optimizers:
        """AdamW over a mean and a log-variance pair; unless ``variance_optimizer`` is
        ``shared`` the log-variance pair gets an optimiser of its own at ``variance_lr``."""
        s: ABMLLSettings = self.settings
        mean, log_var = pairs
        betas = (beta1, 0.999)
        if s.variance_optimizer == "shared":
            return Optimizers(torch.optim.AdamW(self._adapters.parameters(pairs), lr=lr,
                                                betas=betas, weight_decay=s.weight_decay,
                                                eps=eps))
        means = torch.optim.AdamW(self._adapters.parameters([mean]), lr=lr, betas=betas,
                                  weight_decay=s.weight_decay, eps=eps)
        variances = self._adapters.parameters([log_var])
        if s.variance_optimizer == "adamw":
            return Optimizers(means, torch.optim.AdamW(variances, lr=variance_lr,
                                                       weight_decay=0.0, eps=s.variance_eps))
        return Optimizers(means, torch.optim.SGD(variances, lr=variance_lr))

    def _inner_optimizer(self, lr: float) -> Optimizers:
        s: ABMLLSettings = self.settings
        return self._optimizer(TASK_PAIRS, lr, s.variance_inner_lr, beta1=s.inner_momentum)

    # -- training ------------------------------------------------------------------
    def steps_per_epoch(self, tasks: Sequence[Task]) -> int:
        return len(tasks) * (self.settings.inner_steps + 1)

    def train_epoch(self, tasks: Sequence[Task], epoch: int) -> Iterator[StepLog]:
        episodes, rng = self.context.batches, self.context.rng
        order = list(tasks)
        rng.shuffle(order)
        k_steps = self.settings.inner_steps
        for task in order:
            self.reset_task()
            prior = self.prior_value()
            inner = self._inner_optimizer(self.settings.inner_lr)
            for k in range(k_steps):
                loss, terms = self.inner_step(episodes.train_batch(task, rng), inner, prior)
                yield StepLog(epoch=epoch, task=task.name, step=k, loss=loss, phase="inner",
                              components=terms)
                if not math.isfinite(loss):
                    return
            # the outer batch from a stream of its own: rng stays where reptile's would be
            outer_rng = self.context.stream("outer", epoch, task.name)
            loss, terms = self.outer_step(episodes.train_batch(task, outer_rng))
            yield StepLog(epoch=epoch, task=task.name, step=k_steps, loss=loss, phase="outer",
                          components=terms)
            if not math.isfinite(loss):
                return
        self._clear_grads()
        self.reset_task()

    # -- test-time adaptation and prediction ---------------------------------------
    def adapt(self, support: Sequence[Batch]) -> None:
        """From the global pairs, ``adapt_steps`` inner steps at ``adapt_lr`` on the support set."""
        self.reset_task()
        protocol = self.context.protocol
        if protocol.adapt_steps <= 0 or not support:
            return
        optimizer = self._inner_optimizer(protocol.adapt_lr)
        prior = self.prior_value()
        with torch.enable_grad():
            for step in range(protocol.adapt_steps):
                self.inner_step(support[step % len(support)], optimizer, prior)
        self._clear_grads()

    def predict_proba(self, batch: Batch) -> Tensor:
        """Option probabilities under the task pairs, averaged over ``eval_samples`` samples."""
        samples = self.predict_samples(batch)
        return option_probs(self.context.model, batch) if samples is None else samples.mean(0)

    def predict_samples(self, batch: Batch) -> Tensor | None:
        """The ``eval_samples`` predictions :meth:`predict_proba` averages, stacked (the same
        draws for the same torch seed); ``None`` with one sample or mean sampling."""
        if self.settings.sampling == "mean" or self.settings.eval_samples == 1:
            return None
        return torch.stack([option_probs(self.context.model, batch)
                            for _ in range(self.settings.eval_samples)])

    def state_dict(self) -> dict[str, Any]:
        return {"outer_optimizer": self.outer_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])


class Optimizers:
    """One or two torch optimisers stepped together (the means', and the variances' own)."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    @property
    def state(self) -> dict[Any, Any]:
        """Every optimiser's per-parameter state, together."""
        return {k: v for o in self.optimizers for k, v in o.state.items()}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Every optimiser's parameter groups, in order."""
        return [g for o in self.optimizers for g in o.param_groups]

    def state_dict(self) -> Any:
        """The first optimiser's state (a checkpoint's format when there is one), else all."""
        states = [o.state_dict() for o in self.optimizers]
        return states[0] if len(states) == 1 else {"optimizers": states}

    def load_state_dict(self, state: Any) -> None:
        states = state.get("optimizers", [state])
        if len(states) != len(self.optimizers):
            raise MetaloraError(f"abmll: the checkpoint holds {len(states)} outer optimiser(s), "
                                f"these settings make {len(self.optimizers)}")
        for optimizer, saved in zip(self.optimizers, states, strict=True):
            optimizer.load_state_dict(saved)
