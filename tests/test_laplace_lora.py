"""``laplace-lora``: a diagonal Laplace posterior over the adapted LoRA weights."""

from __future__ import annotations

import math

import torch
from torch.func import functional_call, jacrev

from metalora.scoring import option_logits
from metalora_plugins.laplace_lora import (
    ggn_diagonal,
    laplace_log_evidence,
    linearised_probs,
    logits_and_jacobian,
    marglik_precision,
)
from tests.conftest import train_adapt_predict


def test_infinite_prior_precision_is_the_map_prediction(build_learner, monkeypatch):
    """Trained as lora, adapted as lora: with lambda = inf the posterior is a point and the
    prediction is lora's, bitwise (lora's own forward pass, no curvature, no Jacobians)."""
    import metalora_plugins.laplace_lora as laplace_lora

    def no_curvature(*args, **kwargs):
        raise AssertionError("a zero variance needs no Gauss-Newton diagonal")

    monkeypatch.setattr(laplace_lora, "ggn_diagonal", no_curvature)
    lora = train_adapt_predict(*build_learner("lora", lr=1e-3))
    laplace = build_learner("laplace-lora", lr=1e-3, prior_precision="inf", laplace_samples=50)
    adapters, probs = train_adapt_predict(*laplace)
    assert laplace[0].precision == math.inf
    for key, value in lora[0].items():
        assert torch.equal(value, adapters[key]), key
    assert laplace[0].variance is None
    assert torch.equal(lora[1], probs)


class ValidLogits(torch.nn.Module):
    """One example's option logits as a module of the model's weights (for torch.func)."""

    def __init__(self, model: torch.nn.Module, example) -> None:
        super().__init__()
        self.model, self.example = model, example

    def forward(self) -> torch.Tensor:
        return option_logits(self.model, self.example)[0][self.example.option_mask[0]]


def test_the_ggn_diagonal_matches_jacobians_from_torch_func(build_learner):
    """Reference: the option logits' Jacobian by ``torch.func.jacrev`` through
    ``functional_call`` (not our per-option backward passes), then
    ``diag(J^T (diag p - p p^T) J)`` summed over the examples."""
    learner, suite, engine = build_learner("laplace-lora", lr=1e-3)
    train_adapt_predict(learner, suite, engine)
    model = learner.context.model
    named = learner.adapters.named_parameters(["default"])
    batch = engine.episodes.episode(suite.test[0]).support[0]
    examples = [batch.example(i) for i in range(min(3, len(batch)))]
    ours = ggn_diagonal(model, list(named.values()), examples)
    reference = torch.zeros_like(ours)
    for example in examples:
        module = ValidLogits(model, example)
        jac = jacrev(lambda w, module=module: functional_call(
            module, {f"model.{k}": v for k, v in w.items()}, ()))(
            {k: v.detach() for k, v in named.items()})
        j = torch.cat([jac[k].reshape(jac[k].shape[0], -1) for k in named], dim=1).double()
        with torch.no_grad():
            p = torch.softmax(module(), -1).double()
        reference += ((torch.diag(p) - torch.outer(p, p)) @ j * j).sum(0)
    assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-10)
    assert float(ours.max()) > 0


def test_the_marglik_fixed_point_maximises_the_laplace_evidence():
    torch.manual_seed(0)
    ggn = torch.rand(500, dtype=torch.float64) ** 4 * 50
    for shift in (0.01, 1.0, 30.0):
        best = marglik_precision(ggn, shift)
        grid = torch.logspace(-4, 6, 4001, dtype=torch.float64)
        evidence = torch.tensor([laplace_log_evidence(ggn, shift, float(lam)) for lam in grid])
        assert laplace_log_evidence(ggn, shift, best) >= float(evidence.max()) - 1e-6
        gamma = float((ggn / (ggn + best)).sum())
        assert math.isclose(best * shift, gamma, rel_tol=1e-6)
    assert marglik_precision(ggn, 0.0) == math.inf  # nothing moved: the MAP prediction


def test_the_linearised_predictive_is_the_weight_space_gaussian_pushed_through_the_logits():
    """Reference: draw the weights themselves from N(theta*, diag v), map them through the
    linear model f + J (theta - theta*), and average the softmax."""
    torch.manual_seed(0)
    logits = torch.tensor([0.5, -0.2, 1.0, float("-inf")])
    jacobian = torch.randn(4, 30)
    jacobian[3] = 0
    variance = torch.rand(30) * 0.2
    torch.manual_seed(1)
    ours = linearised_probs(logits, jacobian, variance, 200000)
    weights = torch.randn(200000, 30) * variance.sqrt()
    reference = torch.softmax(logits[:3] + weights @ jacobian[:3].T, -1).mean(0)
    assert torch.allclose(ours[:3], reference, atol=3e-3)
    assert ours[3] == 0 and math.isclose(float(ours.sum()), 1.0, rel_tol=1e-6)
    flat = linearised_probs(logits, jacobian, torch.zeros(30), 10)
    assert torch.allclose(flat[:3], torch.softmax(logits[:3], -1), atol=1e-6)
    assert not torch.allclose(ours[:3], flat[:3], atol=1e-2)  # the posterior acts


def test_the_evidence_chooses_a_finite_precision_and_the_posterior_softens(build_learner):
    """After adaptation the fixed point gives a finite lambda; the Laplace predictive is less
    confident than the adapted weights' own (the mechanism: remove the posterior
    variance and the two are equal, as the infinite-precision test shows)."""
    learner, suite, engine = build_learner("laplace-lora", lr=1e-3, laplace_samples=2000)
    _, probs = train_adapt_predict(learner, suite, engine)
    assert 0 < learner.precision < math.inf
    assert learner.variance is not None and float(learner.variance.max()) > 0
    batch = engine.episodes.episode(suite.test[0]).query[0]
    with torch.no_grad():
        map_probs = option_logits(learner.context.model, batch).softmax(-1)
    assert float(probs.max(-1).values.mean()) < float(map_probs.max(-1).values.mean()) - 1e-3
    params = learner.adapters.parameters(["default"])
    logits, jacobian = logits_and_jacobian(learner.context.model, batch.example(0), params)
    assert jacobian.shape == (logits.numel(), sum(p.numel() for p in params))
