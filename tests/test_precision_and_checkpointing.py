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
