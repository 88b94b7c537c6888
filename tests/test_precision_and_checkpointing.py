"""Run settings ``autocast`` and ``gradient_checkpointing``, on CPU."""

from __future__ import annotations

import dataclasses
import json
import math
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
        batch = learner.context.batches.train_batch(suite.train[0], random.Random(0))
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
    batch = learner.context.batches.train_batch(suite.train[0], random.Random(0))
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
        learner.context.protocol = dataclasses.replace(learner.context.protocol, adapt_steps=0)
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
        loss, _ = learner.inner_step(learner.context.batches.train_batch(
            task, random.Random(step)), inner)
        out.append((loss, {n: p.grad.clone() for n, p in
                           learner.adapters.named_parameters().items() if p.grad is not None}))
    torch.manual_seed(12)
    loss, _ = learner.outer_step(learner.context.batches.train_batch(task, random.Random(2)),
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


# -- the precision policy: what runs in which dtype -----------------------------------------


class _OpDtypes:
    """Records, while active, every matrix product's shape and input dtype and whether any
    op produced a float64 tensor."""

    MATMULS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"}

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        record = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                name = func.overloadpacket.__name__
                tensors = [a for a in args if isinstance(a, Tensor)]
                if name in record.MATMULS and len(tensors) >= 2:
                    a, b = tensors[-2], tensors[-1]
                    record.products.append((tuple(a.shape), tuple(b.shape), a.dtype))
                outs = out if isinstance(out, tuple | list) else [out]
                if any(isinstance(o, Tensor) and o.dtype == torch.float64 for o in outs):
                    record.float64.append(name)
                return out

        self.products: list = []
        self.float64: list[str] = []
        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)

    def dense(self, rank: int) -> list:
        """The products none of whose dimensions is a low rank: the dense ones. ABMLL builds
        dense matrices from factors at rank r + 1 (a log-variance and its offset c) and 2r
        (a difference of two means)."""
        return [(a, b, dt) for a, b, dt in self.products
                if min(*a[-2:], *b[-2:]) > 2 * rank + 1]


@pytest.mark.parametrize("sampling", ["weight", "local"])
def test_abmll_under_bfloat16_weights_runs_every_dense_product_in_bfloat16_and_none_in_float64(
        plugins, sampling) -> None:
    engine = _engine(plugins, learner=["abmll"], dtype="bfloat16", sampling=sampling,
                     log_var_init=-6.0)
    suite = engine.load_suite()
    learner = engine.build_learner("abmll", 0)
    try:
        with torch.no_grad():
            for p in learner.adapters.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator()
                                          .manual_seed(p.numel())))
        with _OpDtypes() as seen:
            _abmll_steps(learner, suite)
    finally:
        learner.adapters.remove()
    dense = seen.dense(rank=learner.context.adapter.rank)
    assert dense and {dtype for _, _, dtype in dense} == {torch.bfloat16}, \
        [d for d in dense if d[2] != torch.bfloat16][:3]
    assert seen.float64 == []


@pytest.mark.parametrize("sampling", ["weight", "local", "mean"])
def test_nothing_on_abmlls_training_path_is_float64(plugins, sampling) -> None:
    """Some accelerators (Apple's MPS) have no float64 at all."""
    engine = _engine(plugins, learner=["abmll"], sampling=sampling, log_var_init=-6.0)
    suite = engine.load_suite()
    learner = engine.build_learner("abmll", 0)
    try:
        with _OpDtypes() as seen:
            _abmll_steps(learner, suite)
            learner.adapt([learner.context.batches.train_batch(suite.train[0],
                                                                random.Random(5))])
    finally:
        learner.adapters.remove()
    assert seen.products and seen.float64 == []


def test_tf32_is_a_setting_for_cuda_devices_only(monkeypatch) -> None:
    from metalora import precision

    calls: list[str] = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    assert precision.allow_tf32("cpu", True) is False and calls == []
    assert precision.allow_tf32("cuda:1", False) is False and calls == []
    assert precision.allow_tf32("cuda:1", True) is True and calls == ["high"]
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    assert precision.float32_products_are_exact("cuda") is False
    assert precision.float32_products_are_exact("cpu") is True


def test_under_tf32_abmlls_weight_sample_adds_its_noise_to_the_output(plugins,
                                                                      monkeypatch) -> None:
    """TF32 keeps 10 bits of mantissa: W0 + mu + sigma * eps in one product would lose most of
    the noise and of an early mean, so the fused path is not taken."""
    from metalora_plugins.abmll import sampling

    engine = _engine(plugins, learner=["abmll"], log_var_init=-6.0)
    suite = engine.load_suite()
    learner = engine.build_learner("abmll", 0)
    batch = learner.context.batches.train_batch(suite.train[0], random.Random(0))
    fused: list[int] = []
    real = sampling.SampledLinear.apply
    monkeypatch.setattr(sampling.SampledLinear, "apply",
                        lambda *a: fused.append(1) or real(*a))
    try:
        torch.manual_seed(0)
        exact = float(answer_loss(learner.context.model, batch).detach())
        assert fused  # float32 products are exact on CPU: the fused sample
        fused.clear()
        monkeypatch.setattr(sampling, "float32_products_are_exact", lambda device_type: False)
        torch.manual_seed(0)
        additive = float(answer_loss(learner.context.model, batch).detach())
    finally:
        learner.adapters.remove()
    assert not fused
    assert additive == pytest.approx(exact, rel=1e-4)  # the same sample, computed additively


def test_float16_is_refused_in_one_line_naming_the_choices(plugins) -> None:
    from typer.testing import CliRunner

    from metalora.cli import build_app

    for option in ("--dtype", "--autocast"):
        result = CliRunner().invoke(build_app(plugins), ["run", "--model", "tiny", option,
                                                         "float16"])
        assert result.exit_code != 0
        assert "float16" in result.output and "bfloat16" in result.output, result.output


# -- every learner x weights' dtype x autocast x checkpointing runs, or refuses in one line --

MATRIX_LEARNERS = ("pretrained", "lora", "structured-lora", "reptile", "maml", "abmll",
                   "mc-dropout", "blob", "laplace-lora")


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-gc", "gc"])
@pytest.mark.parametrize("autocast", ["none", "bfloat16"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_learner_runs_in_every_precision_and_checkpointing_cell(
        plugins, tmp_path, dtype, autocast, checkpointing) -> None:
    learners = [n for n in MATRIX_LEARNERS
                if not (checkpointing and n == "maml")]  # refused: the test above
    engine = _engine(plugins, learner=learners, dtype=dtype, autocast=autocast,
                     gradient_checkpointing=checkpointing, epochs=1, max_train_tasks=1,
                     max_eval_tasks=1, eval_every=0, query_cap=2, adapt_steps=1, lr=1e-3,
                     inner_lr=1e-3, outer_lr=1e-3, adapt_lr=1e-3, output_dir=str(tmp_path),
                     run_name="r")
    summary = engine.execute()
    for name in learners:
        (result,) = summary.results[name]
        macro = result.test.macro
        assert all(math.isfinite(v) for v in macro.values()), (name, macro)
    steps = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()
             if '"loss"' in line]
    trained = {s["learner"] for s in steps if math.isfinite(s["loss"])}
    assert trained == set(learners) - {"pretrained"}, trained


def test_abmlls_kl_and_prior_stay_float32_inside_an_autocast_context(plugins) -> None:
    """The regularisers are the adapters' own arithmetic: autocast must not lower them."""
    from metalora_plugins.abmll.objective import backward_regularisers
    from metalora_plugins.abmll.pairs import global_factors, task_factors

    engine = _engine(plugins, learner=["abmll"], log_var_init=-6.0, beta=1.0)
    learner = engine.build_learner("abmll", 0)
    try:
        with torch.no_grad():
            for p in learner.adapters.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator()
                                          .manual_seed(p.numel())))
        layers = list(learner.adapters.layers.values())
        grads = []
        for context in (torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False),
                        torch.autocast("cpu", enabled=False)):
            for p in learner.adapters.parameters():
                p.grad = None
            with context, _OpDtypes() as seen:
                terms = backward_regularisers(layers, task_factors, global_factors,
                                              learner.specs, 1.0, 1.0, learner.prior)
            assert {dt for _, _, dt in seen.products} == {torch.float32}
            grads.append(([p.grad.clone() for p in learner.adapters.parameters()], terms))
    finally:
        learner.adapters.remove()
    (under, under_terms), (plain, plain_terms) = grads
    assert float(under_terms.prior) == float(plain_terms.prior)
    for a, b in zip(under, plain, strict=True):
        assert torch.equal(a, b)
