"""The ``abmll`` learner on the tiny model, against independent references.

* KL and prior against ``torch.distributions`` over the dense matrices;
* the reparameterised weight sample's mean and variance (seeded statistics),
  the custom autograd functions by ``gradcheck``, and that no dense noise is
  saved for backward;
* which pairs each phase touches (bit for bit), and the outer gradient
  against first-order MAML and a plain-autograd reference;
* test-time adaptation, restoring, averaging over samples, the run log,
  NaN handling, and an end-to-end run where ABMLL beats ``pretrained``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator

import pytest
import torch
from rich.console import Console
from torch import Tensor
from torch.distributions import Gamma, Normal, kl_divergence
from typer.testing import CliRunner

from metalora import hookimpl
from metalora.adapters import AdaptedLinear
from metalora.cli import build_app
from metalora.config import all_setting_infos, resolve_config
from metalora.errors import MetaloraError, TrainingDiverged
from metalora.evaluation import evaluate
from metalora.interfaces import Prior, TaskSampler
from metalora.plugins import PluginManager
from metalora.records import Suite, Task, TaskRecord, TaskRole
from metalora.runs.engine import Engine
from metalora.scoring import answer_loss, option_probs
from metalora_plugins.abmll import ABMLLLearner, ABMLLSettings
from metalora_plugins.abmll import learner as learner_module
from metalora_plugins.abmll.dense import Workspace, half_log_var
from metalora_plugins.abmll.noise import NoiseKey
from metalora_plugins.abmll.objective import backward_regularisers, regulariser_terms
from metalora_plugins.abmll.pairs import (
    GLOBAL_PAIRS,
    PAIR_NAMES,
    TASK_PAIRS,
    LogVarSpec,
    global_factors,
    task_factors,
)
from metalora_plugins.abmll.sampling import LocalNoise, SampledLinear, WeightNoise
from metalora_plugins.normal_gamma import NormalGammaPrior

# -- fixtures and helpers ------------------------------------------------------------------


class FlatPrior(Prior):
    """A third-party prior: -log p = sum(mu^2) + sum(log_var^2)."""

    name = "flat-test"

    def negative_log_density(self, mu: Tensor, log_var: Tensor) -> Tensor:
        return mu.square().sum() + log_var.square().sum()


WORDS = ("apple", "river", "stone", "cloud", "lamp", "tiger", "piano", "glass", "honey",
         "maple", "rocket", "candle", "violin", "desert", "garden")


def label_task(name: str, label: int, n: int = 30) -> Task:
    """A task whose correct option is always at position ``label`` (random words otherwise)."""
    rng = random.Random(name)
    records = []
    for _ in range(n):
        options = rng.sample(WORDS, 4)
        records.append(TaskRecord(task=name, input=" ".join(rng.sample(WORDS, 3)),
                                  output=options[label], options=tuple(options)))
    return Task(name, records)


class LabelSuite(TaskSampler):
    """Each task has its own answer position: learnable from a task's support set only."""

    name = "labels-test"
    description = "per-task answer position"

    def roles(self) -> dict[TaskRole, list[str]]:
        return {TaskRole.TRAIN: [f"train-{i}" for i in range(4)], TaskRole.VALIDATION: [],
                TaskRole.TEST: ["test-1", "test-2", "test-3"]}

    def load(self, options) -> Suite:
        return Suite(name=self.name, train=[label_task(f"train-{i}", i) for i in range(4)],
                     validation=[], test=[label_task(f"test-{k}", k) for k in (1, 2, 3)])


class SharedRuleSuite(TaskSampler):
    """Every task puts the correct option first: learnable across tasks (meta-training),
    not from one task's 10 support examples at the paper's adaptation rate."""

    name = "shared-rule-test"
    description = "the answer is always option A"

    def roles(self) -> dict[TaskRole, list[str]]:
        return {TaskRole.TRAIN: [f"train-{i}" for i in range(4)], TaskRole.VALIDATION: [],
                TaskRole.TEST: ["test-1", "test-2"]}

    def load(self, options) -> Suite:
        return Suite(name=self.name, train=[label_task(f"train-{i}", 0) for i in range(4)],
                     validation=[], test=[label_task(f"test-{k}", 0) for k in (1, 2)])


class ExtraPlugins:
    """A prior and suites that only these tests register."""

    @hookimpl
    def register_priors(self, register):
        register(FlatPrior)

    @hookimpl
    def register_task_samplers(self, register):
        register(LabelSuite())
        register(SharedRuleSuite())


@pytest.fixture(scope="module")
def plugins() -> PluginManager:
    manager = PluginManager()
    manager.register(ExtraPlugins(), name="abmll-test")
    return manager


def config(plugins: PluginManager, **values):
    return resolve_config(all_setting_infos(plugins), {}, {
        "learner": ["abmll"], "model": "tiny", "device": "cpu", "tasks": "demo",
        "plots": False, "tensorboard": False, **values})


@pytest.fixture
def build(plugins: PluginManager) -> Iterator:
    """``build(seed=0, **settings) -> (learner, suite)`` on the tiny model."""
    made: list[ABMLLLearner] = []

    def _build(seed: int = 0, **values) -> tuple[ABMLLLearner, Suite]:
        engine = Engine(config(plugins, **values), plugins, console=Console(quiet=True))
        suite = engine.load_suite()
        learner = engine.build_learner("abmll", seed)
        made.append(learner)
        return learner, suite

    yield _build
    for learner in made:
        learner.adapters.remove()


def randomise(learner: ABMLLLearner, seed: int = 0, scale: float = 0.05) -> None:
    """Give every pair (B included) random values, so that theta != phi and nothing is zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in learner.adapters.layers.values():
            for pair in layer.pairs.values():
                pair.A.copy_(torch.randn(pair.A.shape, generator=gen) * 0.3)
                pair.B.copy_(torch.randn(pair.B.shape, generator=gen) * scale)


def dense64(layer: AdaptedLinear, pair: str, offset: float = 0.0) -> Tensor:
    """``s * B @ A + offset`` of one pair, computed independently in float64."""
    p = layer.pairs[pair]
    return layer.scaling * (p.B.detach().double() @ p.A.detach().double()) + offset


def grads(params: dict[str, Tensor]) -> dict[str, Tensor | None]:
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in params.items()}


def first_batch(learner: ABMLLLearner, suite: Suite, seed: int = 5):
    return learner.context.batches.train_batch(suite.train[0], random.Random(seed))


# -- registration, settings, parameters -----------------------------------------------------


def test_registered_with_the_papers_defaults(plugins: PluginManager) -> None:
    assert plugins.registry("learner").get("abmll") is ABMLLLearner
    assert ABMLLLearner.mean_pair == "mu_theta"
    s = ABMLLSettings()
    assert (s.inner_lr, s.outer_lr, s.inner_steps, s.beta, s.gamma) == (1e-5, 5e-5, 5, 1e-8, None)
    assert (s.log_var_init, s.train_samples, s.eval_samples) == (-20.0, 1, 1)
    assert (s.sampling, s.meta_gradient, s.prior) == ("weight", "literal", "normal-gamma")
    result = CliRunner().invoke(build_app(plugins), ["run", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for option in ("--inner-lr", "--outer-lr", "--inner-steps", "--beta", "--gamma",
                   "--log-var-init", "--log-var-min", "--log-var-max", "--train-samples",
                   "--eval-samples", "--sampling", "--meta-gradient", "--prior", "--a0", "--b0"):
        assert option in result.output, option


def test_four_pairs_initialised_like_lora(build) -> None:
    learner, _ = build()
    model, handle = learner.context.model, learner.adapters
    assert handle.pair_names == PAIR_NAMES
    assert {id(p) for p in model.parameters() if p.requires_grad} == {
        id(p) for p in handle.parameters()}
    for layer in handle.layers.values():
        assert tuple(layer.pairs) == PAIR_NAMES
        for name in GLOBAL_PAIRS:
            A, B = layer.pairs[name].A, layer.pairs[name].B
            bound = 1 / math.sqrt(layer.in_features)  # kaiming_uniform_(a=sqrt(5))
            assert A.abs().max() <= bound and A.abs().max() > bound / 2
            assert torch.count_nonzero(B) == 0
        logv = half_log_var(layer.pairs["logv_theta"].A, layer.pairs["logv_theta"].B,
                            layer.scaling, learner.spec)[0] * 2
        assert torch.equal(logv, torch.full_like(logv, -20.0))
        for g, t in zip(GLOBAL_PAIRS, TASK_PAIRS, strict=True):
            assert torch.equal(layer.pairs[g].A, layer.pairs[t].A)
            assert torch.equal(layer.pairs[g].B, layer.pairs[t].B)


@pytest.mark.parametrize("values", [
    {"log_var_init": 6.0}, {"log_var_min": -10.0}, {"train_samples": 0}, {"inner_steps": -1}])
def test_invalid_settings_are_refused(build, values: dict) -> None:
    with pytest.raises(MetaloraError, match="abmll"):
        build(**values)


def test_prior_comes_from_the_registry_by_name(build) -> None:
    learner, _ = build()
    assert isinstance(learner.prior, NormalGammaPrior)
    learner, _ = build(prior="flat-test")
    assert isinstance(learner.prior, FlatPrior)
    expected = sum(float(dense64(layer, "mu_theta").square().sum()
                         + dense64(layer, "logv_theta", -20.0).square().sum())
                   for layer in learner.adapters.layers.values())
    assert learner.prior_value() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(MetaloraError, match="normal-gamma"):
        build(prior="nope")


# -- KL and prior against torch.distributions ------------------------------------------------


@pytest.mark.parametrize("log_var_init", [-20.0, -3.0])
def test_kl_is_the_sum_of_elementwise_normal_kls(build, log_var_init: float) -> None:
    learner, _ = build(log_var_init=log_var_init)
    randomise(learner, scale=0.05)
    layers = list(learner.adapters.layers.values())
    expected = 0.0
    for layer in layers:
        q = Normal(dense64(layer, "mu_phi"),
                   torch.exp(0.5 * dense64(layer, "logv_phi", log_var_init)))
        p = Normal(dense64(layer, "mu_theta"),
                   torch.exp(0.5 * dense64(layer, "logv_theta", log_var_init)))
        expected += float(kl_divergence(q, p).sum())
    with torch.no_grad():
        fast = backward_regularisers(layers, task_factors, global_factors, learner.spec,
                                     1.0, 1.0, None)
        plain = regulariser_terms(layers, task_factors, global_factors, learner.spec, None)
    assert expected > 1.0
    assert float(fast.kl) == pytest.approx(expected, rel=2e-4)
    assert float(plain.kl) == pytest.approx(expected, rel=2e-4)


@pytest.mark.parametrize("log_var_init", [-20.0, -3.0])
def test_prior_is_normal_times_gamma_on_the_precision(build, log_var_init: float) -> None:
    learner, _ = build(log_var_init=log_var_init, a0=2.0, b0=0.05)
    randomise(learner, scale=0.05)
    expected = 0.0
    for layer in learner.adapters.layers.values():
        mu = dense64(layer, "mu_theta")
        precision = torch.exp(-dense64(layer, "logv_theta", log_var_init))
        gamma = Gamma(torch.tensor(2.0, dtype=torch.float64), torch.tensor(0.05,
                                                                          dtype=torch.float64))
        expected -= float((Normal(0.0, 1.0).log_prob(mu) + gamma.log_prob(precision)).sum())
    assert learner.prior_value() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("workspace", [None, Workspace()], ids=["fresh", "workspace"])
def test_layerwise_gradients_match_plain_autograd(build, workspace: Workspace | None) -> None:
    """The closed-form layer-by-layer backward equals autograd through the checkpointed terms."""
    learner, _ = build(log_var_init=-3.0, log_var_min=-3.2, log_var_max=5.0)
    randomise(learner, scale=0.1)  # some log-variances fall below -3.2: the clamp is active
    layers = list(learner.adapters.layers.values())
    params = learner.adapters.named_parameters()
    beta, gamma = 0.3, 0.7

    def st(layer):
        return task_factors(layer, straight_through=True)

    backward_regularisers(layers, st, global_factors, learner.spec, beta, gamma, learner.prior,
                          workspace)
    fast = grads(params)
    for p in params.values():
        p.grad = None
    terms = regulariser_terms(layers, st, global_factors, learner.spec, learner.prior)
    (beta * terms.kl + gamma * terms.prior).backward()
    plain = grads(params)
    clamped = sum(int(((dense64(layer, "logv_theta", -3.0) < -3.2)).sum()) for layer in layers)
    assert clamped > 0
    for name in params:
        if ".mu_phi." in name or ".logv_phi." in name:  # the outer step never moves phi
            assert fast[name] is None and plain[name] is None, name
        else:
            torch.testing.assert_close(fast[name], plain[name], rtol=1e-4, atol=1e-6)


# -- sampling ------------------------------------------------------------------------------


def _spec() -> LogVarSpec:
    return LogVarSpec(offset=-3.0, low=-30.0, high=5.0)


@pytest.mark.parametrize("fuse", [True, False])
def test_weight_sample_has_the_posterior_mean_and_variance(build, fuse: bool) -> None:
    learner, _ = build(log_var_init=-3.0)
    randomise(learner, scale=0.3)
    learner.delta.fuse = fuse
    layer = next(iter(learner.adapters.layers.values()))
    d_in = layer.in_features
    x = torch.eye(d_in)[None]  # row j of the output is column j of the sampled W
    mu = dense64(layer, "mu_phi")
    var = torch.exp(dense64(layer, "logv_phi", -3.0))
    n = 2000
    torch.manual_seed(0)
    total = torch.zeros_like(mu)
    total_sq = torch.zeros_like(mu)
    with torch.no_grad():
        for _ in range(n):
            sample = (layer(x)[0] - layer.base(x)[0]).t().double()  # W - W0
            total += sample
            total_sq += sample.square()
    mean = total / n
    sample_var = (total_sq - n * mean.square()) / (n - 1)
    z = (mean - mu) / torch.sqrt(var / n)
    assert z.abs().max() < 5.0, float(z.abs().max())
    assert abs(float(z.mean())) < 5.0 / math.sqrt(z.numel())
    ratio = sample_var / var
    assert abs(float(ratio.mean()) - 1) < 5.0 * math.sqrt(2.0 / n / ratio.numel())
    assert (ratio - 1).abs().max() < 5.0 * math.sqrt(2.0 / n)


def test_local_sample_has_the_exact_marginals(build) -> None:
    learner, _ = build(log_var_init=-3.0, sampling="local")
    randomise(learner, scale=0.3)
    layer = next(iter(learner.adapters.layers.values()))
    x = torch.randn(1, 5, layer.in_features, generator=torch.Generator().manual_seed(1))
    mu = dense64(layer, "mu_phi")
    var = torch.exp(dense64(layer, "logv_phi", -3.0))
    expected_mean = x[0].double() @ mu.t()
    expected_var = x[0].double().square() @ var.t()
    n = 3000
    torch.manual_seed(0)
    with torch.no_grad():
        samples = torch.stack([(layer(x)[0] - layer.base(x)[0]).double() for _ in range(n)])
    z = (samples.mean(0) - expected_mean) / torch.sqrt(expected_var / n)
    assert z.abs().max() < 5.0
    ratio = samples.var(0) / expected_var
    assert (ratio - 1).abs().max() < 5.0 * math.sqrt(2.0 / n)


@pytest.mark.parametrize("spec", [LogVarSpec(-1.0, -30.0, 5.0), LogVarSpec(-1.0, -1.3, -0.7)],
                         ids=["free", "clamped"])
def test_sampling_functions_pass_gradcheck(spec: LogVarSpec) -> None:
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).requires_grad_()

    x = leaf(2, 3, 5)
    W0, bias = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    mu_A, mu_B, v_A, v_B = leaf(2, 5), leaf(6, 2, scale=0.3), leaf(2, 5, scale=0.3), leaf(6, 2,
                                                                                          scale=0.3)
    for workspace in (None, Workspace()):
        assert torch.autograd.gradcheck(
            lambda *t, w=workspace: SampledLinear.apply(t[0], W0, bias, *t[1:], None, None, None,
                                                        None, 2.0, spec, NoiseKey(seed=123), w),
            (x, mu_A, mu_B, v_A, v_B))
    key = NoiseKey(seed=7)
    assert torch.autograd.gradcheck(lambda *t: WeightNoise.apply(*t, 2.0, spec, key), (x, v_A, v_B))
    assert torch.autograd.gradcheck(lambda *t: LocalNoise.apply(*t, 2.0, spec, key), (x, v_A, v_B))


def test_noise_keys_replay_their_draw_and_advance_the_global_stream() -> None:
    cpu = torch.device("cpu")
    like = torch.empty(0)
    torch.manual_seed(0)
    direct = [torch.randn(3, 50), torch.randn(3, 50), torch.randn(4)]
    torch.manual_seed(0)
    first = NoiseKey.take(cpu)
    drawn = first.normal((3, 50), like)
    assert torch.equal(drawn, direct[0])  # the draw is the global stream's next stretch
    assert torch.equal(NoiseKey.take(cpu).normal((3, 50), like), direct[1])
    assert torch.equal(first.normal((3, 50), like), drawn)  # a replay, bit for bit
    assert torch.equal(torch.randn(4), direct[2])  # replays do not move the stream
    fixed = NoiseKey(seed=5)
    assert torch.equal(fixed.normal((2, 3), like), fixed.normal((2, 3), like))
    with pytest.raises(ValueError):
        NoiseKey()


def _objective_reference(learner: ABMLLLearner, batch, beta: float, gamma: float,
                         seed: int) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor, Tensor]:
    """Plain autograd on NLL + beta KL + gamma prior with the additive (unfused) sample."""
    handle = learner.adapters
    phi, theta = handle.named_parameters(TASK_PAIRS), handle.named_parameters(GLOBAL_PAIRS)
    layers = list(handle.layers.values())
    learner.delta.fuse = False
    torch.manual_seed(seed)
    nll = answer_loss(learner.context.model, batch)
    learner.delta.fuse = True
    terms = regulariser_terms(layers, task_factors, global_factors, learner.spec, learner.prior)
    objective = nll + beta * terms.kl + gamma * terms.prior
    names = [*phi, *theta]
    values = torch.autograd.grad(objective, [*phi.values(), *theta.values()])
    g = dict(zip(names, values, strict=True))
    return ({n: g[n] for n in phi}, {n: g[n] for n in theta}, nll.detach(), terms.kl.detach())


@pytest.mark.parametrize("clamped", [False, True], ids=["free", "clamped"])
def test_kl_fused_into_the_sampled_layers_matches_autograd(build, monkeypatch,
                                                           clamped: bool) -> None:
    """With the exact weight sample the KL's gradient joins each layer's backward pass.

    Inner and outer gradients equal plain autograd on the whole objective
    (the additive sample with the same noise, and the checkpointed KL; float32
    rounding differs between the two samples as in
    ``test_fused_and_additive_paths_agree``), and no layer's KL is computed a
    second time by the layer-by-layer path.
    """
    beta, gamma = 0.05, 0.01
    values = {"beta": beta, "gamma": gamma, "log_var_init": -3.0, "meta_gradient": "first-order"}
    if clamped:
        values["log_var_min"] = -3.2
    learner, suite = build(**values)
    randomise(learner, scale=0.1)
    layers = list(learner.adapters.layers.values())
    n_clamped = sum(int((dense64(layer, pair, -3.0) < learner.spec.low).sum())
                    for layer in layers for pair in ("logv_theta", "logv_phi"))
    assert (n_clamped > 0) == clamped
    batch = first_batch(learner, suite)
    skipped: list[set[int]] = []
    original = learner_module.backward_regularisers

    def spy(*args, kl_done=(), **kwargs):
        skipped.append(set(kl_done))
        return original(*args, kl_done=kl_done, **kwargs)

    monkeypatch.setattr(learner_module, "backward_regularisers", spy)
    g_phi, g_theta, nll, kl = _objective_reference(learner, batch, beta, gamma, seed=7)
    torch.manual_seed(7)
    loss, components = learner.outer_step(batch, apply=False)
    assert skipped[-1] == {id(layer) for layer in layers}
    assert components["nll"] == pytest.approx(float(nll), rel=1e-5)
    assert components["kl"] == pytest.approx(float(kl), rel=1e-4)
    assert kl > 1.0
    for name, p in learner.adapters.named_parameters(GLOBAL_PAIRS).items():
        expected = g_theta[name] + g_phi[name.replace("theta", "phi")]
        torch.testing.assert_close(p.grad, expected, rtol=1e-3, atol=1e-6)
    learner._clear_grads()
    g_phi, _, _, _ = _objective_reference(learner, batch, beta, 0.0, seed=8)

    class Capture(torch.optim.SGD):
        def step(self, closure=None):  # record the gradients instead of stepping
            self.seen = [p.grad.clone() for p in self.param_groups[0]["params"]]

    phi = learner.adapters.named_parameters(TASK_PAIRS)
    capture = Capture(list(phi.values()), lr=0.0)
    torch.manual_seed(8)
    _, components = learner.inner_step(batch, capture)
    assert skipped[-1] == {id(layer) for layer in layers}
    assert components["kl"] == pytest.approx(float(kl), rel=1e-4)
    for name, got in zip(phi, capture.seen, strict=True):
        torch.testing.assert_close(got, g_phi[name], rtol=1e-3, atol=1e-6)


def test_first_inner_step_after_a_reset_skips_the_zero_kl(build, monkeypatch) -> None:
    learner, suite = build(beta=0.5, log_var_init=-3.0, inner_lr=1e-2)
    randomise(learner, scale=0.1)
    learner.reset_task()
    calls: list[int] = []
    original = learner_module.backward_regularisers
    monkeypatch.setattr(learner_module, "backward_regularisers",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    batch = first_batch(learner, suite)
    layers = list(learner.adapters.layers.values())
    exact = regulariser_terms(layers, task_factors, global_factors, learner.spec, None)
    assert float(exact.kl.detach()) == pytest.approx(0.0, abs=1e-6)
    phi = learner.adapters.named_parameters(TASK_PAIRS)
    torch.manual_seed(2)
    expected = torch.autograd.grad(answer_loss(learner.context.model, batch), list(phi.values()))
    optimizer = learner._inner_optimizer(1e-2)
    steps = []
    for _ in range(2):
        torch.manual_seed(2)
        learner._clear_grads()
        steps.append(learner.inner_step(batch, optimizer)[1])
        if len(steps) == 1:
            assert not calls
            for p, e in zip(phi.values(), expected, strict=True):
                assert torch.equal(p.grad, e)
    assert steps[0]["kl"] == 0.0
    assert steps[1]["kl"] > 0.0 and calls  # phi has moved: the KL is back


def test_fused_and_additive_paths_agree(build) -> None:
    learner, suite = build(log_var_init=-3.0)
    randomise(learner, scale=0.1)
    batch = first_batch(learner, suite)
    params = learner.adapters.named_parameters(TASK_PAIRS)
    results = []
    for fuse in (True, False):
        learner.delta.fuse = fuse
        for p in params.values():
            p.grad = None
        torch.manual_seed(3)
        loss = answer_loss(learner.context.model, batch)
        loss.backward()
        results.append((loss.detach(), grads(params)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    for name in params:
        torch.testing.assert_close(results[0][1][name], results[1][1][name], rtol=1e-3,
                                   atol=1e-6)


def test_log_variances_are_clamped() -> None:
    A = torch.ones(2, 3)
    B = torch.full((4, 2), 10.0)  # s * B @ A + c = 2 * 20 - 20 = 20 > log_var_max
    half, inside = half_log_var(A, B, 2.0, LogVarSpec(offset=-20.0, low=-30.0, high=5.0))
    assert torch.equal(half, torch.full((4, 3), 2.5)) and inside is not None
    assert not inside.any()
    half, inside = half_log_var(A, -B, 2.0, LogVarSpec(offset=-20.0, low=-30.0, high=5.0))
    assert torch.equal(half, torch.full((4, 3), -15.0)) and not inside.any()


@pytest.mark.parametrize(("sampling", "fuse"), [("weight", True), ("weight", False),
                                                ("local", True)])
def test_no_dense_weight_sized_tensor_is_saved_for_backward(build, sampling: str,
                                                            fuse: bool) -> None:
    learner, suite = build(sampling=sampling, log_var_init=-3.0)
    learner.delta.fuse = fuse
    randomise(learner)
    model = learner.context.model
    param_ptrs = {p.data_ptr() for p in model.parameters()}
    dense_shapes = {(layer.out_features, layer.in_features)
                    for layer in learner.adapters.layers.values()}
    saved: list[tuple[int, ...]] = []

    def pack(t: Tensor) -> Tensor:
        if t.data_ptr() not in param_ptrs:
            saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = answer_loss(model, first_batch(learner, suite))
    loss.backward()
    assert saved
    assert not [s for s in saved if s in dense_shapes]


def test_bfloat16_model_uses_the_additive_path_in_float32(build) -> None:
    """With low-precision W0 the noise is not added to W0 in bf16 (it would round away)."""
    learner, suite = build(dtype="bfloat16", log_var_init=-3.0, inner_lr=1e-2)
    randomise(learner)
    layer = next(iter(learner.adapters.layers.values()))
    assert layer.base.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in learner.adapters.parameters())
    before = learner.adapters.snapshot(TASK_PAIRS)
    loss, terms = learner.inner_step(first_batch(learner, suite), learner._inner_optimizer(1e-2))
    assert math.isfinite(loss) and all(math.isfinite(v) for v in terms.values())
    after = learner.adapters.snapshot(TASK_PAIRS)
    assert all(not torch.equal(after[n], before[n]) for n in before if ".logv_phi." in n)


def test_same_sample_under_activation_checkpointing(build) -> None:
    """A recomputed forward draws the same noise seed (checkpoint restores the RNG state)."""
    learner, suite = build(log_var_init=-3.0)
    randomise(learner, scale=0.1)
    model = learner.context.model
    batch = first_batch(learner, suite)
    params = learner.adapters.named_parameters(TASK_PAIRS)
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
            model.train()
        for p in params.values():
            p.grad = None
        torch.manual_seed(5)
        answer_loss(model, batch).backward()
        results.append(grads(params))
    for name in params:
        assert torch.equal(results[0][name], results[1][name]), name


def test_prediction_averages_probabilities_over_eval_samples(build) -> None:
    learner, suite = build(log_var_init=-1.0, eval_samples=3)
    randomise(learner, scale=0.2)
    batch = first_batch(learner, suite)
    with torch.no_grad():
        torch.manual_seed(11)
        averaged = learner.predict_proba(batch)
        torch.manual_seed(11)
        draws = [option_probs(learner.context.model, batch) for _ in range(3)]
    torch.testing.assert_close(averaged, sum(draws) / 3)
    assert not torch.allclose(draws[0], draws[1])  # the samples do differ
    torch.testing.assert_close(averaged.sum(-1), torch.ones(len(batch)))


# -- Algorithm 1: which pairs move, and the first-order meta-gradient --------------------------


def test_reset_inner_and_outer_steps_touch_only_their_pairs(build) -> None:
    learner, suite = build(inner_lr=1e-2, outer_lr=1e-2, log_var_init=-3.0)
    handle = learner.adapters
    base = {n: p.detach().clone() for n, p in learner.context.model.named_parameters()
            if not p.requires_grad}
    batches = [first_batch(learner, suite, seed=s) for s in range(3)]
    learner.inner_step(batches[0], learner._inner_optimizer(1e-2))
    learner.outer_step(batches[1])
    theta, phi = handle.snapshot(GLOBAL_PAIRS), handle.snapshot(TASK_PAIRS)
    assert any(not torch.equal(theta[n], phi[n.replace("theta", "phi")]) for n in theta)
    learner.reset_task()
    for name, value in handle.snapshot(TASK_PAIRS).items():
        assert torch.equal(value, theta[name.replace("phi", "theta")]), name  # bit for bit
    # inner step: phi moves, theta does not
    theta = handle.snapshot(GLOBAL_PAIRS)
    phi = handle.snapshot(TASK_PAIRS)
    learner.inner_step(batches[1], learner._inner_optimizer(1e-2))
    assert all(torch.equal(v, theta[n]) for n, v in handle.snapshot(GLOBAL_PAIRS).items())
    assert any(not torch.equal(v, phi[n]) for n, v in handle.snapshot(TASK_PAIRS).items())
    # outer step: theta moves, phi does not
    theta = handle.snapshot(GLOBAL_PAIRS)
    phi = handle.snapshot(TASK_PAIRS)
    learner.outer_step(batches[2])
    assert all(torch.equal(v, phi[n]) for n, v in handle.snapshot(TASK_PAIRS).items())
    moved = {n for n, v in handle.snapshot(GLOBAL_PAIRS).items() if not torch.equal(v, theta[n])}
    assert any(".mu_theta." in n for n in moved) and any(".logv_theta." in n for n in moved)
    for n, p in learner.context.model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n


def test_outer_gradient_is_first_order_maml_without_kl_and_prior(build) -> None:
    learner, suite = build(beta=0.0, gamma=0.0, sampling="mean", inner_lr=1e-2, inner_steps=3,
                           meta_gradient="first-order")
    model, handle = learner.context.model, learner.adapters
    rng = random.Random(0)
    task = suite.train[0]
    learner.reset_task()
    optimizer = learner._inner_optimizer(1e-2)
    for _ in range(3):
        learner.inner_step(learner.context.batches.train_batch(task, rng), optimizer)
    outer_batch = learner.context.batches.train_batch(task, rng)
    assert any(not torch.equal(handle.snapshot(["mu_phi"])[n],
                               handle.snapshot(["mu_theta"])[n.replace("phi", "theta")])
               for n in handle.snapshot(["mu_phi"]))
    # by hand: first-order MAML's meta-gradient is the query-loss gradient at phi
    phi_params = handle.named_parameters(["mu_phi"])
    hand = torch.autograd.grad(answer_loss(model, outer_batch), list(phi_params.values()))
    learner.outer_step(outer_batch, apply=False)
    for (name, _), expected in zip(phi_params.items(), hand, strict=True):
        got = handle.named_parameters()[name.replace("mu_phi", "mu_theta")].grad
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)
        assert got.abs().sum() > 0
    for name, p in handle.named_parameters(["logv_theta"]).items():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    for p in handle.parameters(TASK_PAIRS):
        assert p.grad is None


def test_outer_gradient_with_kl_and_prior_matches_autograd_reference(build) -> None:
    """grad_theta = dNLL/dphi + beta (dKL/dphi + dKL/dtheta) + gamma d(-log p)/dtheta."""
    beta, gamma = 1e-3, 1e-4
    learner, suite = build(beta=beta, gamma=gamma, sampling="mean", log_var_init=-3.0,
                           meta_gradient="first-order")
    randomise(learner, scale=0.05)
    handle = learner.adapters
    batch = first_batch(learner, suite)
    phi = handle.named_parameters(TASK_PAIRS)
    theta = handle.named_parameters(GLOBAL_PAIRS)
    layers = list(handle.layers.values())
    terms = regulariser_terms(layers, task_factors, global_factors, learner.spec, learner.prior)
    objective = (answer_loss(learner.context.model, batch) + beta * terms.kl
                 + gamma * terms.prior)
    g_phi = dict(zip(phi, torch.autograd.grad(objective, list(phi.values()), retain_graph=True),
                     strict=True))
    g_theta = dict(zip(theta, torch.autograd.grad(objective, list(theta.values())), strict=True))
    loss, components = learner.outer_step(batch, apply=False)
    assert loss == pytest.approx(components["nll"] + beta * components["kl"]
                                 + gamma * components["prior"])
    for name, p in theta.items():
        expected = g_theta[name] + g_phi[name.replace("theta", "phi")]
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-7)
    # and the inner step's gradient is d(NLL + beta KL)/dphi with theta fixed
    learner._clear_grads()
    terms = regulariser_terms(layers, task_factors, global_factors, learner.spec, None)
    inner_objective = answer_loss(learner.context.model, batch) + beta * terms.kl
    expected_phi = torch.autograd.grad(inner_objective, list(phi.values()))

    class Capture(torch.optim.SGD):
        def step(self, closure=None):  # record the gradients instead of stepping
            self.seen = [p.grad.clone() for p in self.param_groups[0]["params"]]

    capture = Capture(list(phi.values()), lr=0.0)
    learner.inner_step(batch, capture)
    for got, expected in zip(capture.seen, expected_phi, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


def test_literal_outer_gradient_is_only_the_kl_and_the_prior(build) -> None:
    """Algorithm 1 as written: phi is an independent leaf, so grad_theta = beta dKL/dtheta
    + gamma d(-log p)/dtheta, and the NLL contributes exactly nothing."""
    beta, gamma = 1e-2, 1e-3
    learner, suite = build(beta=beta, gamma=gamma, sampling="mean", log_var_init=-3.0,
                           meta_gradient="literal")
    randomise(learner, scale=0.05)
    handle = learner.adapters
    batch = first_batch(learner, suite)
    theta = handle.named_parameters(GLOBAL_PAIRS)
    layers = list(handle.layers.values())
    nll = answer_loss(learner.context.model, batch)
    from_nll = torch.autograd.grad(nll, list(theta.values()), allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in from_nll)
    terms = regulariser_terms(layers, task_factors, global_factors, learner.spec, learner.prior)
    expected = dict(zip(theta, torch.autograd.grad(beta * terms.kl + gamma * terms.prior,
                                                   list(theta.values())), strict=True))
    loss, components = learner.outer_step(batch, apply=False)
    assert components["nll"] == pytest.approx(float(nll.detach()), rel=1e-6)
    assert loss == pytest.approx(components["nll"] + beta * components["kl"]
                                 + gamma * components["prior"])
    for name, p in theta.items():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-9)
        assert p.grad.abs().sum() > 0, name
    for p in handle.parameters(TASK_PAIRS):
        assert p.grad is None


def test_literal_outer_gradient_without_kl_and_prior_is_zero(build) -> None:
    """With beta = gamma = 0 the literal reading leaves theta where it is, noise or not."""
    learner, suite = build(beta=0.0, gamma=0.0, log_var_init=-3.0, meta_gradient="literal")
    randomise(learner, scale=0.05)
    before = learner.adapters.snapshot(GLOBAL_PAIRS)
    learner.outer_step(first_batch(learner, suite))
    after = learner.adapters.snapshot(GLOBAL_PAIRS)
    # no gradient reaches theta at all, so AdamW leaves it exactly (not even weight decay)
    assert all(p.grad is None for p in learner.adapters.parameters(GLOBAL_PAIRS))
    for name in before:
        assert torch.equal(after[name], before[name]), name


# -- epochs, logs, adaptation, evaluation ------------------------------------------------------


def test_epoch_logs_every_step_with_its_terms(build) -> None:
    learner, suite = build(inner_steps=2, outer_lr=1e-3, inner_lr=1e-3)
    tasks = suite.train[:3]
    logs = list(learner.train_epoch(tasks, 0))
    assert len(logs) == learner.steps_per_epoch(tasks) == 9
    assert [log.phase for log in logs] == ["inner", "inner", "outer"] * 3
    assert [log.step for log in logs] == [0, 1, 2] * 3
    assert sorted({log.task for log in logs}) == sorted(t.name for t in tasks)
    beta = gamma = 1e-8
    for log in logs:
        assert set(log.components) == {"nll", "kl", "prior"}
        assert all(math.isfinite(v) for v in log.components.values())
        expected = log.components["nll"] + beta * log.components["kl"]
        if log.phase == "outer":
            expected += gamma * log.components["prior"]
        assert log.loss == pytest.approx(expected)
    # phi == theta after an epoch; only the four pairs and the outer optimiser state persist
    handle = learner.adapters
    for name, value in handle.snapshot(TASK_PAIRS).items():
        assert torch.equal(value, handle.snapshot(GLOBAL_PAIRS)[name.replace("phi", "theta")])
    assert all(p.grad is None for p in handle.parameters())
    assert len(learner.outer_optimizer.state) == len(handle.parameters(GLOBAL_PAIRS))
    state = learner.state_dict()
    learner.load_state_dict(state)


def test_adaptation_starts_from_the_global_pairs_and_evaluation_restores(build, plugins) -> None:
    learner, suite = build(adapt_lr=1e-2, adapt_steps=2, log_var_init=-3.0)
    randomise(learner, scale=0.05)
    handle = learner.adapters
    episode = learner.context.batches.episode(suite.test[0])
    adapted = []
    for garbage in (1, 2):  # whatever phi held before, adaptation starts from theta
        randomise_task = torch.Generator().manual_seed(garbage)
        with torch.no_grad():
            for p in handle.parameters(TASK_PAIRS):
                p.copy_(torch.randn(p.shape, generator=randomise_task))
        torch.manual_seed(0)
        learner.adapt(episode.support)
        adapted.append(handle.snapshot(TASK_PAIRS))
    for name in adapted[0]:
        assert torch.equal(adapted[0][name], adapted[1][name]), name
    before = handle.snapshot()
    metrics = {"accuracy": plugins.registry("metric").get("accuracy")()}
    evaluate(learner, [episode], metrics, seed=0)
    for name, value in handle.snapshot().items():
        assert torch.equal(value, before[name]), name


def test_a_nan_step_is_not_applied_and_stops_the_run(build, plugins, tmp_path,
                                                     monkeypatch) -> None:
    learner, suite = build()
    handle = learner.adapters
    before = handle.snapshot()
    real = learner_module.answer_loss
    monkeypatch.setattr(learner_module, "answer_loss",
                        lambda *a, **k: real(*a, **k) * float("nan"))
    logs = list(learner.train_epoch(suite.train[:2], 0))
    assert len(logs) == 1 and math.isnan(logs[0].loss)  # the epoch stops at once
    for name, value in handle.snapshot().items():
        assert torch.equal(value, before[name]), name
    monkeypatch.undo()

    calls = {"n": 0}
    first_epoch = 2 * (1 + 1)  # 2 tasks x (1 inner + 1 outer)

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == first_epoch + 2 else loss

    monkeypatch.setattr(learner_module, "answer_loss", flaky)
    engine = Engine(config(plugins, epochs=2, inner_steps=1, max_train_tasks=2,
                           max_eval_tasks=1, eval_every=0, output_dir=str(tmp_path)),
                    plugins, console=Console(quiet=True))
    with pytest.raises(TrainingDiverged) as info:
        engine.execute()
    message = str(info.value)
    assert "epoch 1" in message and "step 1" in message and "task demo-" in message
    assert "checkpoint after epoch 1 is kept" in message
    logged = [json.loads(line) for line in next(tmp_path.glob("*/log.jsonl")).open()]
    assert math.isnan(logged[-1]["loss"]) and logged[-1]["phase"] == "outer"


# -- end to end ----------------------------------------------------------------------------------


@pytest.mark.parametrize("meta_gradient", ["first-order", "literal"])
def test_meta_training_is_what_makes_abmll_score(plugins, tmp_path, meta_gradient) -> None:
    """Every task of ``shared-rule-test`` puts the answer first; test-time adaptation at the
    paper's rate (5 steps at 1e-5) cannot find that from 10 examples, meta-training can.

    The same run with ``outer_lr = 0`` (theta never moves) keeps the untrained model's
    preference for another option. Default settings otherwise (beta = 1e-8, c = -20,
    weight sampling).
    """
    def run(outer_lr: float, name: str) -> dict:
        engine = Engine(config(plugins, learner=["abmll"], tasks="shared-rule-test", epochs=3,
                               outer_lr=outer_lr, inner_lr=1e-3, inner_steps=2, adapt_lr=1e-5,
                               meta_gradient=meta_gradient, seeds=[0],
                               output_dir=str(tmp_path), run_name=name),
                        plugins, console=Console(quiet=True))
        return engine.execute().summary()["abmll"]

    trained, frozen = run(1e-3, "trained"), run(0.0, "frozen")
    assert trained["accuracy"][0] >= 0.9, trained
    assert frozen["accuracy"][0] <= 0.5, frozen
    assert trained["nll"][0] < frozen["nll"][0] - 0.5


@pytest.mark.parametrize(("log_var_init", "acts"), [(-9.0, True), (-20.0, False)])
def test_bayesian_model_averaging_acts_where_the_noise_matters(build, log_var_init: float,
                                                               acts: bool) -> None:
    """At c = -9 (sigma 0.011, half the tiny model's weight scale) single weight samples
    disagree, and averaging 8 of them gives a lower query NLL than a single sample does on
    average; at the paper's c = -20 the samples are indistinguishable."""
    one, suite = build(log_var_init=log_var_init, eval_samples=1)
    eight, _ = build(log_var_init=log_var_init, eval_samples=8)
    batch = one.context.batches.encode(suite.test[0].records[:16])

    def nll(probs: Tensor) -> float:
        return float(-probs.gather(1, batch.targets[:, None]).clamp_min(1e-12).log().mean())

    with torch.no_grad():
        singles = []
        for draw in range(8):
            torch.manual_seed(draw)
            singles.append(one.predict_proba(batch))
        torch.manual_seed(100)
        averaged = eight.predict_proba(batch)
    spread = float(torch.stack(singles).std(dim=0).max())
    single_nll = sum(map(nll, singles)) / len(singles)
    if acts:
        assert spread > 0.01, spread
        assert not torch.allclose(averaged, singles[0], atol=1e-3)
        assert nll(averaged) < single_nll - 1e-3, (nll(averaged), single_nll)
    else:
        assert spread < 1e-3, spread
        torch.testing.assert_close(averaged, singles[0], rtol=0, atol=1e-3)


def test_cli_run_on_demo_shows_abmll_beside_pretrained(plugins, tmp_path) -> None:
    result = CliRunner().invoke(build_app(plugins), [
        "run", "--learner", "pretrained,abmll", "--tasks", "demo", "--model", "tiny",
        "--device", "cpu", "--epochs", "1", "--inner-steps", "1", "--max-train-tasks", "2",
        "--max-eval-tasks", "1", "--query-cap", "8", "--eval-every", "0", "--no-plots",
        "--no-tensorboard", "--output-dir", str(tmp_path), "--run-name", "demo"],
        env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    table = [line for line in result.output.splitlines() if "pretrained" in line or "abmll" in line]
    assert any("pretrained" in line and "%" in line for line in table), result.output
    assert any("abmll" in line and "%" in line for line in table), result.output
    rows = [json.loads(line) for line in (tmp_path / "demo" / "log.jsonl").open()]
    steps = [r for r in rows if r.get("learner") == "abmll" and "phase" in r]
    assert [r["phase"] for r in steps] == ["inner", "outer"] * 2
    for row in steps:
        assert {"nll", "kl", "prior"} <= set(row) and all(
            math.isfinite(row[k]) for k in ("nll", "kl", "prior"))
