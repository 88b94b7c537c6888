"""``mc-dropout``: dropout on the LoRA path, averaged over masks at test time."""

from __future__ import annotations

import torch

from metalora_plugins.mc_dropout import DropoutLowRankDelta
from tests.conftest import train_adapt_predict


def test_without_dropout_it_is_lora(build_learner):
    lora = train_adapt_predict(*build_learner("lora", lr=1e-3))
    plain = train_adapt_predict(*build_learner("mc-dropout", lr=1e-3, dropout=0.0, mc_samples=3))
    assert lora[0].keys() == plain[0].keys()
    for key in lora[0]:
        assert torch.equal(lora[0][key], plain[0][key]), key
    assert torch.allclose(lora[1], plain[1], atol=1e-6)


def test_dropout_makes_the_masks_disagree_and_the_mean_is_their_average(build_learner):
    learner, suite, engine = build_learner("mc-dropout", dropout=0.5, mc_samples=6)
    train_adapt_predict(learner, suite, engine)
    batch = engine.episodes.episode(suite.test[0]).query[0]
    with torch.no_grad():
        torch.manual_seed(1)
        samples = learner.predict_samples(batch)
        torch.manual_seed(1)
        mean = learner.predict_proba(batch)
    assert samples.shape[0] == 6
    assert samples.std(0).max() > 1e-4  # the masks change the prediction
    assert torch.allclose(mean, samples.mean(0))
    assert torch.allclose(mean.sum(-1), torch.ones(len(batch)))


def test_inverted_dropout_on_the_lora_input_is_unbiased():
    """Averaged over many masks the update is s * B A x (dropout scales kept inputs by
    1/(1-p)), and each mask zeroes inputs: the reference is the update without dropout."""
    from metalora.adapter_config import AdapterConfig
    from metalora.adapters import attach_adapters

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5))
    handle = attach_adapters(model, AdapterConfig(rank=2, alpha=4.0, target_modules=("0",)),
                             ["default"])
    layer = model[0]
    torch.nn.init.normal_(layer.pairs["default"].B)
    x = torch.randn(3, 6)
    exact = layer.scaling * x @ layer.pairs["default"].dense(1.0).T
    delta = DropoutLowRankDelta("default", 0.3)
    with torch.no_grad():
        draws = torch.stack([delta(layer, x) for _ in range(20000)])
    assert torch.allclose(draws.mean(0), exact, atol=0.03 * float(exact.abs().max()))
    assert draws.std(0).min() > 0
    handle.remove()
