"""``blob``: a variational LoRA (learned Gaussian on A, its KL, weight draws at test time)."""

from __future__ import annotations

import torch
from torch.distributions import Normal, kl_divergence

from metalora.adapter_config import AdapterConfig
from metalora.adapters import attach_adapters
from metalora_plugins.blob import RHO, VariationalLowRankDelta, gaussian_kl
from tests.conftest import train_adapt_predict


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mean, std = torch.randn(4, 7) * 0.3, torch.rand(4, 7) * 0.1 + 1e-3
    reference = kl_divergence(Normal(mean, std), Normal(torch.zeros(4, 7), 0.2)).sum()
    assert torch.allclose(gaussian_kl(mean, std, 0.2).float(), reference, rtol=1e-5)


def test_a_draw_has_the_mean_update_in_expectation_and_the_exact_variance():
    """Over many draws ``s B (M + sigma eps) x`` averages ``s B M x``, and each output's
    variance is ``s^2 sum_r B_jr^2 sum_i sigma_ri^2 x_i^2`` (independent elements)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5))
    handle = attach_adapters(model, AdapterConfig(rank=2, alpha=4.0, target_modules=("0",)),
                             ["default", RHO])
    layer = model[0]
    torch.nn.init.normal_(layer.pairs["default"].B)
    layer.pairs[RHO].A.data.uniform_(0.3, 0.6)
    x = torch.randn(6)
    sigma = layer.pairs[RHO].A.detach().square()
    mean_update = layer.scaling * layer.pairs["default"].dense(1.0).detach() @ x
    variance = layer.scaling ** 2 * (layer.pairs["default"].B.detach().square()
                                     @ (sigma.square() @ x.square()))
    delta = VariationalLowRankDelta("default", RHO)
    with torch.no_grad():
        draws = torch.stack([delta(layer, x[None])[0] for _ in range(40000)])
        delta.sample = False
        assert torch.allclose(delta(layer, x[None])[0], mean_update, atol=1e-6)
    assert torch.allclose(draws.mean(0), mean_update, atol=4 * float(variance.sqrt().max()) / 200)
    assert torch.allclose(draws.var(0), variance, rtol=0.05)
    handle.remove()


def _copy_initial_mean(source, target) -> None:
    """Give ``target`` the initial ``default`` pair of ``source`` (the ``rho`` pair's
    initialisation draws shift the torch RNG, so the two start apart otherwise)."""
    target.adapters.restore(source.adapters.snapshot(["default"]))


def test_without_noise_and_kl_it_is_lora(build_learner):
    lora = build_learner("lora", lr=1e-3)
    blob = build_learner("blob", lr=1e-3, init_eps=0.0, kl_lr=0.0, eval_samples=2)
    _copy_initial_mean(lora[0], blob[0])
    lora_adapters, lora_probs = train_adapt_predict(*lora)
    blob_adapters, blob_probs = train_adapt_predict(*blob)
    for key, value in lora_adapters.items():
        assert torch.equal(value, blob_adapters[key]), key
    assert torch.allclose(lora_probs, blob_probs, atol=1e-6)


def test_the_kl_step_widens_sigma_and_lowers_the_kl(build_learner):
    """The KL's pull on a sigma far below the prior's is what moves sigma: with the KL step
    on, sigma grows and the KL falls; with it off (kl_lr 0), sigma hardly moves."""
    moved = {}
    for kl_lr in (0.02, 0.0):
        learner, suite, engine = build_learner("blob", lr=1e-3, kl_lr=kl_lr)
        start_sigma, start_kl = learner.mean_sigma(), float(learner.kl().detach())
        train_adapt_predict(learner, suite, engine)
        moved[kl_lr] = (learner.mean_sigma() / start_sigma, float(learner.kl().detach()) / start_kl)
        learner.adapters.remove()
    assert moved[0.02][0] > 1.5 and moved[0.02][1] < 0.9
    assert abs(moved[0.0][0] - 1) < 0.05 and abs(moved[0.0][1] - 1) < 0.05


def test_draws_disagree_and_the_prediction_is_their_mean(build_learner):
    learner, suite, engine = build_learner("blob", lr=1e-3, init_eps=0.3, eval_samples=5)
    train_adapt_predict(learner, suite, engine)
    batch = engine.episodes.episode(suite.test[0]).query[0]
    with torch.no_grad():
        torch.manual_seed(3)
        samples = learner.predict_samples(batch)
        torch.manual_seed(3)
        mean = learner.predict_proba(batch)
        learner.delta.sample = False
        at_mean = learner.predict_proba(batch)
    assert samples.shape[0] == 5 and samples.std(0).max() > 1e-4
    assert torch.allclose(mean, samples.mean(0))
    assert not torch.allclose(mean, at_mean, atol=1e-4)


def test_adaptation_moves_the_mean_and_keeps_sigma(build_learner):
    learner, suite, engine = build_learner("blob", lr=1e-3)
    for _ in learner.train_epoch(suite.train[:2], epoch=1):
        pass
    before = learner.adapters.snapshot()
    learner.adapt(engine.episodes.episode(suite.test[0]).support)
    after = learner.adapters.snapshot()
    assert all(torch.equal(before[k], after[k]) for k in before if f".{RHO}." in k)
    assert any(not torch.equal(before[k], after[k]) for k in before if ".default." in k)
