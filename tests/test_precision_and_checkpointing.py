"""Run settings ``autocast`` and ``gradient_checkpointing``, on CPU."""

from __future__ import annotations

import random

import pytest
import torch
from rich.console import Console
from torch import Tensor

from metalora.errors import MetaloraError
from metalora.models.checkpointing import enable_gradient_checkpointing, transformer_layers
from metalora.runs.engine import Engine
from metalora.scoring import answer_loss
from tests.conftest import make_config


def _engine(plugins, **values) -> Engine:
    return Engine(make_config(plugins, model="tiny", tasks="demo", device="cpu", plots=False,
                              tensorboard=False, **values), plugins, console=Console(quiet=True))


def _gradients_and_saved_bytes(learner, batch, seed: int) -> tuple[dict[str, Tensor], int]:
    """Adapter gradients of one answer loss, and the bytes autograd saved outside checkpoints."""
    params = learner.adapters.named_parameters()
    for p in params.values():
        p.grad = None
    frozen = {p.data_ptr() for p in learner.context.model.parameters() if not p.requires_grad}
    saved = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal saved
        if t.data_ptr() not in frozen:
            saved += t.numel() * t.element_size()
        return t

    torch.manual_seed(seed)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = answer_loss(learner.context.model, batch)
    loss.backward()
    return {n: p.grad.clone() for n, p in params.items() if p.grad is not None}, saved


@pytest.mark.parametrize("learner_name", ["lora", "abmll"])
def test_gradient_checkpointing_keeps_gradients_and_saves_less(plugins, learner_name) -> None:
    engine = _engine(plugins, learner=[learner_name], log_var_init=-3.0)
    suite = engine.load_suite()
    learner = engine.build_learner(learner_name, 0)
    try:
        with torch.no_grad():  # non-zero B, so that every factor gets a gradient
            for pair in learner.adapters.parameters():
                pair.add_(0.01 * torch.randn(pair.shape, generator=torch.Generator()
                                             .manual_seed(pair.numel())))
        batch = learner.context.episodes.train_batch(suite.train[0], random.Random(0))
        plain, plain_saved = _gradients_and_saved_bytes(learner, batch, seed=3)
        model = learner.context.model
        assert enable_gradient_checkpointing(model) == len(transformer_layers(model)) > 0
        model.eval()  # the evaluation protocol's mode switches do not undo it
        model.train(False)
        checkpointed, saved = _gradients_and_saved_bytes(learner, batch, seed=3)
    finally:
        learner.adapters.remove()
    assert saved < plain_saved / 2, (saved, plain_saved)
    assert plain.keys() == checkpointed.keys() and plain
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-8)


def test_gradient_checkpointing_without_layers_is_one_clear_error() -> None:
    with pytest.raises(MetaloraError, match="no transformer layers"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2), "model 'toy'")


def test_autocast_runs_every_forward_pass_in_bfloat16(plugins, tmp_path) -> None:
    engine = _engine(plugins, learner=["lora", "abmll"], autocast="bfloat16",
                     gradient_checkpointing=True, epochs=1, max_train_tasks=1,
                     max_eval_tasks=1, query_cap=4, output_dir=str(tmp_path), run_name="r")
    seen: list[tuple[bool, torch.dtype]] = []
    model = engine.load_model().model
    handle = next(m for m in model.modules() if isinstance(m, torch.nn.Linear)) \
        .register_forward_hook(lambda *_: seen.append(
            (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    try:
        summary = engine.execute()
    finally:
        handle.remove()
    assert seen and set(seen) == {(True, torch.bfloat16)}
    for name in ("lora", "abmll"):
        accuracy = summary.results[name][0].test.macro["accuracy"]
        assert 0.0 <= accuracy <= 1.0
    assert torch.is_autocast_enabled("cpu") is False


# -- autocast must not freeze the adapters the forward pass sees ------------------------------


@pytest.mark.parametrize("learner_name", ["lora", "abmll"])
def test_under_one_autocast_context_every_optimiser_step_reaches_the_forward_pass(
        plugins, learner_name) -> None:
    """One autocast context spans a learner's training, as in the engine: the forward pass
    must see the adapters as they are after each step (PyTorch's autocast weight cache kept
    the first step's copy until the context exited)."""
    engine = _engine(plugins, learner=[learner_name], autocast="bfloat16", sampling="mean",
                     inner_lr=1e-2, lr=1e-2)
    suite = engine.load_suite()
    learner = engine.build_learner(learner_name, 0)
    batch = learner.context.episodes.train_batch(suite.train[0], random.Random(0))
    params = learner.adapters.parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    try:
        with engine.precision():
            losses = []
            for _ in range(4):
                loss = answer_loss(learner.context.model, batch)
                losses.append(float(loss.detach()))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                inside = float(answer_loss(learner.context.model, batch))
        with engine.precision(), torch.no_grad():
            fresh = float(answer_loss(learner.context.model, batch))
    finally:
        learner.adapters.remove()
    assert len(set(losses)) == len(losses), losses  # every step changed what the forward saw
    assert inside == fresh  # the long context sees what a fresh one sees


def test_an_autocast_run_validates_differently_each_epoch_and_adapts_at_test_time(
        plugins, tmp_path) -> None:
    from metalora.evaluation import evaluate

    engine = _engine(plugins, learner=["lora"], autocast="bfloat16", epochs=3, lr=2e-2,
                     max_train_tasks=2, max_eval_tasks=2, query_cap=8, adapt_lr=2e-2,
                     output_dir=str(tmp_path), run_name="r")
    summary = engine.execute()
    history = summary.results["lora"][0].history
    nll = [record["nll"] for record in history]
    assert len(nll) == 3 and len(set(nll)) == 3, nll  # training reached the forward pass
    episodes = [engine.episodes.episode(t) for t in engine.load_suite().test]
    metrics = engine.metrics()
    learner = engine.build_learner("lora", 0)
    try:
        with engine.precision():
            adapted = evaluate(learner, episodes, metrics)
        engine.change_run(adapt_steps=0)
        learner.context.run = engine.run
        with engine.precision():
            unadapted = evaluate(learner, episodes, metrics)
    finally:
        learner.adapters.remove()
    for a, b in zip(adapted.tasks, unadapted.tasks, strict=True):
        assert not torch.equal(a.probs, b.probs), a.task  # test-time adaptation acted


# -- ABMLL with gradient checkpointing: the same losses and gradients, bit for bit ------------


def _abmll_steps(learner, suite) -> list[tuple[float, dict[str, Tensor]]]:
    """Losses and adapter gradients of an inner step after a reset (no KL), an inner step
    with the KL, and an outer step (not applied), from fixed seeds."""
    task = suite.train[0]
    out = []
    learner.reset_task()
    inner = learner._inner_optimizer(1e-2)
    for step in range(2):
        torch.manual_seed(10 + step)
        loss, _ = learner.inner_step(learner.context.episodes.train_batch(
            task, random.Random(step)), inner)
        out.append((loss, {n: p.grad.clone() for n, p in
                           learner.adapters.named_parameters().items() if p.grad is not None}))
    torch.manual_seed(12)
    loss, _ = learner.outer_step(learner.context.episodes.train_batch(task, random.Random(2)),
                                 apply=False)
    out.append((loss, {n: p.grad.clone() for n, p in learner.adapters.named_parameters().items()
                       if p.grad is not None}))
    return out


@pytest.mark.parametrize("reading", ["literal", "first-order"])
@pytest.mark.parametrize("sampling", ["weight", "local", "mean"])
def test_abmll_with_gradient_checkpointing_equals_abmll_without_it_bit_for_bit(
        plugins, sampling, reading) -> None:
    results = []
    for checkpointing in (False, True):
        engine = _engine(plugins, learner=["abmll"], sampling=sampling, meta_gradient=reading,
                         log_var_init=-3.0, gradient_checkpointing=checkpointing)
        suite = engine.load_suite()
        learner = engine.build_learner("abmll", 0)
        try:
            with torch.no_grad():  # every factor non-zero, so that every gradient is
                for p in learner.adapters.parameters():
                    p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator()
                                              .manual_seed(p.numel())))
            results.append(_abmll_steps(learner, suite))
        finally:
            learner.adapters.remove()
    plain, checkpointed = results
    for (loss, grads), (loss_gc, grads_gc) in zip(plain, checkpointed, strict=True):
        assert loss == loss_gc
        assert grads.keys() == grads_gc.keys() and grads
        for name, grad in grads.items():
            assert torch.equal(grad, grads_gc[name]), name


def test_maml_with_gradient_checkpointing_is_refused_in_one_line_before_any_work(
        plugins, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from metalora.cli import build_app
    from metalora.runs import setup as run_setup

    loaded = []
    monkeypatch.setattr(run_setup, "load_model", lambda *a, **k: loaded.append(a))
    result = CliRunner().invoke(build_app(plugins), [
        "run", "--learner", "lora,maml", "--model", "tiny", "--gradient-checkpointing",
        "--output-dir", str(tmp_path)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["Error: learner 'maml' cannot train with --gradient-checkpointing; run it "
                     "without, or use a learner that can: " + ", ".join(
                         n for n in plugins.registry("learner").names() if n != "maml")], lines
    assert not loaded and not any(tmp_path.iterdir())  # nothing loaded, no run directory
    # without checkpointing maml still runs; with it, every other learner does
    assert plugins.registry("learner").get("maml").supports_gradient_checkpointing is False
