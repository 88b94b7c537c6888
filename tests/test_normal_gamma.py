"""The ``normal-gamma`` prior against torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Gamma, Normal

from metalora.config import all_setting_infos, resolve_config
from metalora.interfaces import Prior
from metalora.plugins import PluginManager
from metalora.runs.engine import Engine
from metalora_plugins.normal_gamma import NormalGammaPrior, NormalGammaSettings


@pytest.fixture(scope="module")
def plugins() -> PluginManager:
    return PluginManager()


def reference(mu: torch.Tensor, log_var: torch.Tensor, a0: float, b0: float) -> torch.Tensor:
    """-(log N(mu; 0, 1) + log Gamma(exp(-log_var); a0, rate b0)), summed."""
    precision = torch.exp(-log_var)
    return -(Normal(0.0, 1.0).log_prob(mu)
             + Gamma(torch.tensor(a0, dtype=mu.dtype), torch.tensor(b0, dtype=mu.dtype))
             .log_prob(precision)).sum()


def test_registered_with_paper_defaults(plugins: PluginManager) -> None:
    cls = plugins.registry("prior").get("normal-gamma")
    assert cls is NormalGammaPrior and issubclass(cls, Prior)
    assert NormalGammaSettings() == NormalGammaSettings(a0=1.0, b0=0.01)
    infos = all_setting_infos(plugins)
    assert infos["a0"].default == 1.0 and infos["b0"].default == 0.01
    assert "normal-gamma" in infos["a0"].owners


@pytest.mark.parametrize(("a0", "b0"), [(1.0, 0.01), (2.5, 0.3), (0.7, 4.0)])
def test_negative_log_density_matches_torch_distributions(a0: float, b0: float) -> None:
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    log_var = torch.randn(7, 5, generator=gen, dtype=torch.float64) * 3 - 4
    prior = NormalGammaPrior(NormalGammaSettings(a0=a0, b0=b0))
    value = prior.negative_log_density(mu, log_var)
    torch.testing.assert_close(value, reference(mu, log_var, a0, b0), rtol=1e-12, atol=1e-9)


def test_gradients_match_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    log_var = (torch.randn(6, 4, generator=gen, dtype=torch.float64) - 5).requires_grad_()
    prior = NormalGammaPrior(NormalGammaSettings(a0=1.5, b0=0.01))
    ours = torch.autograd.grad(prior.negative_log_density(mu, log_var), [mu, log_var])
    theirs = torch.autograd.grad(reference(mu, log_var, 1.5, 0.01), [mu, log_var])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_float32_at_the_initial_log_variance() -> None:
    """At log sigma^2 = -20 (ABMLL's initialisation) the density is finite in float32."""
    mu = torch.zeros(64, 64)
    log_var = torch.full((64, 64), -20.0)
    value = NormalGammaPrior().negative_log_density(mu, log_var)
    expected = 64 * 64 * (0.5 * math.log(2 * math.pi) - math.log(0.01) + 0.01 * math.exp(20))
    assert math.isfinite(float(value))
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_invalid_hyperparameters_are_refused() -> None:
    with pytest.raises(ValueError, match="a0 > 0 and b0 > 0"):
        NormalGammaPrior(NormalGammaSettings(a0=0.0))
    with pytest.raises(ValueError, match="b0"):
        NormalGammaPrior(NormalGammaSettings(b0=-1.0))


def test_engine_builds_it_with_configured_settings(plugins: PluginManager) -> None:
    config = resolve_config(all_setting_infos(plugins), {},
                            {"learner": ["pretrained"], "model": "tiny", "a0": 3.0, "b0": 0.5})
    prior = Engine(config, plugins).make_prior("normal-gamma")
    assert isinstance(prior, NormalGammaPrior)
    assert (prior.a0, prior.b0) == (3.0, 0.5)


def reference_in_log_variance(mu: torch.Tensor, log_var: torch.Tensor, a0: float,
                              b0: float) -> torch.Tensor:
    """-log density of (mu, log_var) when precision ~ Gamma(a0, b0) and log_var = -log tau."""
    from torch.distributions import AffineTransform, ExpTransform, TransformedDistribution

    gamma = Gamma(torch.tensor(a0, dtype=mu.dtype), torch.tensor(b0, dtype=mu.dtype))
    of_log_var = TransformedDistribution(gamma, [ExpTransform().inv, AffineTransform(0.0, -1.0)])
    return -(Normal(0.0, 1.0).log_prob(mu) + of_log_var.log_prob(log_var)).sum()


@pytest.mark.parametrize(("a0", "b0"), [(1.0, 0.01), (2.5, 0.3)])
def test_prior_jacobian_is_a_density_of_the_log_variance(a0: float, b0: float) -> None:
    gen = torch.Generator().manual_seed(2)
    mu = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    log_var = (torch.randn(5, 3, generator=gen, dtype=torch.float64) * 2 - 3).requires_grad_()
    prior = NormalGammaPrior(NormalGammaSettings(a0=a0, b0=b0, prior_jacobian=True))
    value = prior.negative_log_density(mu, log_var)
    expected = reference_in_log_variance(mu, log_var, a0, b0)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-9)
    ours = torch.autograd.grad(value, log_var)[0]
    theirs = torch.autograd.grad(expected, log_var)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    # off, the value is the literal density of the precision (today's numbers)
    literal = NormalGammaPrior(NormalGammaSettings(a0=a0, b0=b0))
    torch.testing.assert_close(literal.negative_log_density(mu, log_var.detach()),
                               reference(mu, log_var.detach(), a0, b0), rtol=1e-12, atol=1e-9)


def test_prior_jacobian_has_its_mode_at_precision_a0_over_b0() -> None:
    a0, b0 = 1.0, 0.01
    prior = NormalGammaPrior(NormalGammaSettings(a0=a0, b0=b0, prior_jacobian=True))
    grid = torch.linspace(-20, 5, 501, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)

    def curve(p: NormalGammaPrior) -> torch.Tensor:
        return torch.stack([p.negative_log_density(zero, v.reshape(1)) for v in grid])

    best = grid[curve(prior).argmin()]
    assert float(best) == pytest.approx(-math.log(a0 / b0), abs=0.03)
    literal = curve(NormalGammaPrior(NormalGammaSettings(a0=a0, b0=b0)))
    assert bool((literal[1:] < literal[:-1]).all())  # no mode: it always pushes sigma up
