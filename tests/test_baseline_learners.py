"""The baseline learners reptile, structured-lora and maml."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from metalora.config import all_setting_infos, resolve_config
from metalora.errors import MetaloraError
from metalora.interfaces import Learner
from metalora.plugins import PluginManager
from metalora.records import Suite
from metalora.runs.engine import Engine
from metalora.scoring import answer_loss
from metalora_plugins.maml.learner import eager_attention
from metalora_plugins.maml.meta import inner_loop, meta_gradient

BASELINES = ("reptile", "structured-lora", "maml")


@pytest.fixture(scope="module")
def plugins() -> PluginManager:
    return PluginManager()


@pytest.fixture
def build(plugins: PluginManager) -> Iterator:
    """``build(name, seed=0, **settings) -> (learner, suite)`` on the tiny model, on CPU."""
    made: list[Learner] = []

    def _build(name: str, seed: int = 0, **values) -> tuple[Learner, Suite]:
        config = resolve_config(all_setting_infos(plugins), {}, {
            "learner": [name], "model": "tiny", "device": "cpu", "tasks": "demo", **values})
        engine = Engine(config, plugins)
        suite = engine.load_suite()
        learner = engine.build_learner(name, seed)
        made.append(learner)
        return learner, suite

    yield _build
    for learner in made:
        learner.adapters.remove()


def _base_weights(learner: Learner) -> dict[str, Tensor]:
    adapter_ids = {id(p) for p in learner.adapters.parameters()}
    return {n: p.detach().clone() for n, p in learner.context.model.named_parameters()
            if id(p) not in adapter_ids}


# -- registration and settings -------------------------------------------------------------


def test_registered_with_their_own_defaults(plugins: PluginManager) -> None:
    registry = plugins.registry("learner")
    for name in BASELINES:
        assert name in registry
    infos = all_setting_infos(plugins)
    assert infos["lr"].type is float
    assert infos["lr"].defaults["reptile"] == 1e-5
    assert infos["lr"].defaults["structured-lora"] == 1e-5
    assert infos["lr"].defaults["maml"] == 5e-5
    assert infos["inner_steps"].type is int and infos["inner_steps"].defaults["reptile"] == 5
    assert infos["steps_per_task"].defaults["structured-lora"] == 5
    assert infos["reptile_epsilon"].default == 0.5
    assert infos["second_order"].type is bool and infos["second_order"].default is False


# -- reptile ------------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [0.5, 0.3])
def test_reptile_update_is_theta_plus_eps_times_difference(build, epsilon: float) -> None:
    learner, suite = build("reptile", reptile_epsilon=epsilon, lr=1e-3, inner_steps=2)
    k = learner.settings.inner_steps
    handle = learner.adapters
    epoch = learner.train_epoch(suite.train[:2], epoch=0)
    for _task in range(2):
        theta = handle.snapshot()
        logs = [next(epoch) for _ in range(k)]
        assert [log.phase for log in logs] == ["inner"] * k
        theta_i = handle.snapshot()  # the generator is paused before the interpolation
        outer = next(epoch)
        assert outer.phase == "outer" and outer.task == logs[0].task
        new = handle.snapshot()
        assert any(not torch.equal(theta_i[n], theta[n]) for n in theta)  # inner steps moved
        for name in theta:
            # Same float32 operations in the same order as the learner: bit-identical.
            assert torch.equal(new[name], theta[name] + epsilon * (theta_i[name] - theta[name]))
            # The algebraically equal form differs only by float32 rounding.
            torch.testing.assert_close(new[name], (1 - epsilon) * theta[name]
                                       + epsilon * theta_i[name], rtol=1e-6, atol=1e-7)
        # The second task starts from the interpolated theta (checked by the next round).
    assert learner.optimizer is None  # a fresh inner AdamW per task by default
    assert learner.steps_per_epoch(suite.train[:2]) == 2 * (k + 1)


def test_reptile_persistent_optimizer_keeps_its_moments(build) -> None:
    learner, suite = build("reptile", reptile_persistent_optimizer=True, inner_steps=2)
    logs = list(learner.train_epoch(suite.train[:2], epoch=0))
    assert len(logs) == learner.steps_per_epoch(suite.train[:2])
    steps = {int(s["step"]) for s in learner.optimizer.state_dict()["state"].values()}
    assert steps == {2 * learner.settings.inner_steps}
    state = learner.state_dict()
    other, _ = build("reptile", reptile_persistent_optimizer=True, inner_steps=2)
    other.load_state_dict(state)
    assert other.optimizer.state_dict()["state"].keys() == state["optimizer"]["state"].keys()


# -- structured LoRA -------------------------------------------------------------------------


def test_structured_lora_never_resets(build) -> None:
    learner, suite = build("structured-lora", lr=1e-3, steps_per_task=2)
    handle = learner.adapters
    assert handle.pair_names == ("default",)  # one pair, no global variable
    before: list[dict[str, Tensor]] = []
    after: list[dict[str, Tensor]] = []
    learner.optimizer.register_step_pre_hook(lambda *_: before.append(handle.snapshot()))
    learner.optimizer.register_step_post_hook(lambda *_: after.append(handle.snapshot()))
    start = handle.snapshot()
    tasks = suite.train[:2]
    logs = [log for epoch in range(2) for log in learner.train_epoch(tasks, epoch)]
    per_task = learner.settings.steps_per_task
    assert len(logs) == 2 * learner.steps_per_epoch(tasks) == 4 * per_task
    visited = [logs[i].task for i in range(0, len(logs), per_task)]
    assert all(logs[i].task == visited[i // per_task] for i in range(len(logs)))
    assert set(visited[:2]) == {t.name for t in tasks}
    # Every step, including the first of each task and of epoch 2, starts exactly where
    # the previous one ended: nothing copies the adapters back.
    assert all(torch.equal(before[0][n], start[n]) for n in start)
    for i in range(1, len(before)):
        assert all(torch.equal(before[i][n], after[i - 1][n]) for n in start), i
    assert not torch.equal(after[-1]["model.layers.0.self_attn.q_proj.pairs.default.B"],
                           start["model.layers.0.self_attn.q_proj.pairs.default.B"])
    # One optimiser, never reset: its step count is the total number of steps.
    steps = {int(s["step"]) for s in learner.optimizer.state_dict()["state"].values()}
    assert steps == {len(logs)}


# -- MAML: the meta-gradient on toy problems -----------------------------------------------


def _linear_loss(params: dict[str, Tensor], batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return ((x @ params["w"] - y) ** 2).mean()


def _linear_grad(w: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Analytic gradient of the mean squared error of a linear model."""
    x, y = batch
    return 2.0 / x.shape[0] * x.T @ (x @ w - y)


def _toy_batches(dim: int, n: int, count: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, dim, generator=gen, dtype=torch.float64),
             torch.randn(n, generator=gen, dtype=torch.float64)) for _ in range(count)]


def test_first_order_meta_gradient_matches_hand_computation() -> None:
    support = _toy_batches(3, 4, 3, seed=0)
    (query,) = _toy_batches(3, 4, 1, seed=1)
    w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    lr = 0.05
    phi = w.clone()
    for batch in support:  # plain SGD by hand, analytic gradients
        phi = phi - lr * _linear_grad(phi, batch)
    expected = _linear_grad(phi, query)  # first order: d phi_K / d w taken as the identity
    result = meta_gradient(_linear_loss, {"w": w}, support, query, lr, second_order=False)
    torch.testing.assert_close(result.grads["w"], expected, rtol=1e-12, atol=1e-12)
    assert result.query_loss == pytest.approx(float(_linear_loss({"w": phi}, query)))
    assert result.inner_losses[0] == pytest.approx(float(_linear_loss({"w": w}, support[0])))
    # For a linear model the full meta-gradient is analytic too: prod(I - lr H_k) g_query.
    full = expected
    for x, _ in reversed(support):
        full = full - lr * (2.0 / x.shape[0]) * x.T @ (x @ full)
    second = meta_gradient(_linear_loss, {"w": w}, support, query, lr, second_order=True)
    torch.testing.assert_close(second.grads["w"], full, rtol=1e-12, atol=1e-12)


def _two_layer_loss(params: dict[str, Tensor], batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    hidden = torch.tanh(x @ params["w1"].T)
    return ((hidden @ params["w2"].T).squeeze(-1) - y).pow(2).mean()


def test_second_order_matches_autograd_and_differs_from_first_order() -> None:
    gen = torch.Generator().manual_seed(0)
    theta = {"w1": torch.randn(5, 3, generator=gen, dtype=torch.float64),
             "w2": torch.randn(1, 5, generator=gen, dtype=torch.float64)}
    support = _toy_batches(3, 6, 3, seed=2)
    (query,) = _toy_batches(3, 6, 1, seed=3)
    lr = 0.1
    # Reference: the textbook MAML meta-gradient with torch.autograd and create_graph=True.
    leaves = {n: v.clone().requires_grad_(True) for n, v in theta.items()}
    fast = dict(leaves)
    for batch in support:
        grads = torch.autograd.grad(_two_layer_loss(fast, batch), list(fast.values()),
                                    create_graph=True)
        fast = {n: v - lr * g for (n, v), g in zip(fast.items(), grads, strict=True)}
    reference = torch.autograd.grad(_two_layer_loss(fast, query), list(leaves.values()))
    second = meta_gradient(_two_layer_loss, theta, support, query, lr, second_order=True)
    first = meta_gradient(_two_layer_loss, theta, support, query, lr, second_order=False)
    for (name, _), ref in zip(theta.items(), reference, strict=True):
        torch.testing.assert_close(second.grads[name], ref, rtol=1e-10, atol=1e-12)
        assert (first.grads[name] - ref).abs().max() > 1e-3
    assert second.query_loss == pytest.approx(first.query_loss, rel=1e-12)
    assert all(not v.requires_grad for v in second.grads.values())


def test_inner_loop_keeps_no_graph_in_first_order() -> None:
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    fast, losses = inner_loop(_linear_loss, {"w": w}, _toy_batches(3, 4, 2, seed=4), 0.1)
    assert not fast["w"].requires_grad and len(losses) == 2


# -- MAML on the language model ------------------------------------------------------------


def test_maml_outer_step_matches_hand_first_order_and_adamw(build) -> None:
    learner, suite = build("maml", inner_steps=2, maml_inner_lr=1e-2, lr=1e-3)
    model, handle, rng = learner.context.model, learner.adapters, learner.context.rng
    task = suite.train[0]
    support = [learner.context.batches.train_batch(task, rng) for _ in range(2)]
    query = learner.context.batches.train_batch(task, rng)
    # B = 0 at initialisation would hide mistakes in the A gradients: start elsewhere.
    with torch.no_grad():
        for name, param in handle.named_parameters().items():
            if name.endswith(".B"):
                param.copy_(torch.randn_like(param) * 0.05)
    theta = handle.snapshot()
    params = handle.named_parameters()
    # By hand, in place, with plain autograd (no torch.func).
    for batch in support:
        grads = torch.autograd.grad(answer_loss(model, batch), list(params.values()))
        with torch.no_grad():
            for param, grad in zip(params.values(), grads, strict=True):
                param.sub_(1e-2 * grad)
    hand = torch.autograd.grad(answer_loss(model, query), list(params.values()))
    handle.restore(theta)
    log = learner.meta_step(support, query)
    assert log.phase == "outer" and math.isfinite(log.loss)
    # The meta-gradient the learner applied, read back from AdamW's first moment
    # (exp_avg = (1 - beta1) * grad after one step), equals the hand computation.
    beta1 = learner.optimizer.param_groups[0]["betas"][0]
    for (name, param), expected in zip(params.items(), hand, strict=True):
        applied = learner.optimizer.state[param]["exp_avg"] / (1 - beta1)
        torch.testing.assert_close(applied, expected, rtol=1e-4, atol=1e-6, msg=name)
    assert any(not torch.equal(param, theta[name]) for name, param in params.items())


def test_maml_second_order_switches_to_eager_and_back(build) -> None:
    learner, suite = build("maml", inner_steps=2, maml_inner_lr=1e-1, second_order=True)
    model = learner.context.model
    assert model.config._attn_implementation == "sdpa"
    seen: list[str] = []
    original = learner.loss_fn

    def spy(params, batch):
        seen.append(model.config._attn_implementation)
        return original(params, batch)

    learner.loss_fn = spy  # type: ignore[method-assign]
    rng = learner.context.rng
    task = suite.train[1]
    with torch.no_grad():
        for name, param in learner.adapters.named_parameters().items():
            if name.endswith(".B"):
                param.copy_(torch.randn_like(param) * 0.05)
    support = [learner.context.batches.train_batch(task, rng) for _ in range(2)]
    query = learner.context.batches.train_batch(task, rng)
    params = learner.adapters.named_parameters()
    with eager_attention(model):
        second = meta_gradient(learner.loss_fn, params, support, query, 1e-1, second_order=True)
    first = meta_gradient(learner.loss_fn, params, support, query, 1e-1, second_order=False)
    assert model.config._attn_implementation == "sdpa"
    differs = max(float((second.grads[n] - first.grads[n]).abs().max()) for n in params)
    assert differs > 1e-6
    seen.clear()
    learner.meta_step(support, query)
    assert seen and set(seen) == {"eager"}
    assert model.config._attn_implementation == "sdpa"


def test_eager_switch_fails_clearly_when_impossible() -> None:
    class Config:
        _attn_implementation = "sdpa"

    class Model(nn.Module):
        config = Config()

    with pytest.raises(MetaloraError, match="eager"), eager_attention(Model()):
        pass


# -- every learner learns, and only its adapters move -----------------------------------------


@pytest.mark.parametrize(("name", "values"), [
    ("reptile", {"lr": 1e-2, "inner_steps": 2}),
    ("structured-lora", {"lr": 1e-2, "steps_per_task": 2}),
    ("maml", {"lr": 1e-2, "inner_steps": 2, "maml_inner_lr": 1e-2}),
])
def test_learner_learns_and_changes_only_its_adapters(build, name: str, values: dict) -> None:
    learner, suite = build(name, seed=0, **values)
    model, handle = learner.context.model, learner.adapters
    tasks = suite.train[:3]
    gen_rng = random.Random(123)
    probe = [learner.context.batches.train_batch(t, gen_rng) for t in tasks for _ in range(2)]

    def probe_loss() -> float:
        with torch.no_grad():
            return sum(float(answer_loss(model, b)) for b in probe) / len(probe)

    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in handle.parameters()}
    base = _base_weights(learner)
    adapters = handle.snapshot()
    before = probe_loss()
    for epoch in range(2):
        logs = list(learner.train_epoch(tasks, epoch))
        assert len(logs) == learner.steps_per_epoch(tasks)
        assert all(math.isfinite(log.loss) for log in logs)
    after = probe_loss()
    assert after < before - 0.3, (before, after)  # about 5.5 -> 4.9 on the tiny model
    for n, value in _base_weights(learner).items():
        assert torch.equal(value, base[n]), n
    assert any(not torch.equal(v, adapters[n]) for n, v in handle.snapshot().items())
    # Test-time adaptation also touches the adapters only.
    episode = learner.context.batches.episode(suite.test[0])
    learner.adapt(episode.support)
    for n, value in _base_weights(learner).items():
        assert torch.equal(value, base[n]), n
    probs = learner.predict_proba(episode.query[0])
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[0]))
    state = learner.state_dict()
    learner.load_state_dict(state)


def test_maml_sgd_test_time_adaptation_is_its_inner_loop(build) -> None:
    learner, suite = build("maml", maml_test_adapt="sgd", maml_inner_lr=1e-2)
    handle = learner.adapters
    episode = learner.context.batches.episode(suite.test[0])
    theta = handle.snapshot()
    steps = learner.context.protocol.adapt_steps
    batches = [episode.support[k % len(episode.support)] for k in range(steps)]
    expected, _ = inner_loop(learner.loss_fn, theta, batches, 1e-2)
    learner.adapt(episode.support)
    for name, value in handle.snapshot().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)
