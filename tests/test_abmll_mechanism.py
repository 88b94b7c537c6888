"""What ABMLL does at its defaults, pinned on the tiny model, and a variance that can learn.

Under the ``literal`` reading theta's gradient is ``beta * dKL + gamma * d(-log p)``.
With ``mu = s B A`` the KL's pull on ``B_mu_theta`` points along ``B_phi - B_theta``
(the Reptile direction) with the scale ``lambda = beta * e^-c``, which AdamW divides
away. So at the defaults ABMLL is Reptile's pseudo-gradient fed to AdamW plus a proximal
pull of phi towards theta of strength lambda; beta and c act only through lambda and
through AdamW's epsilon. The tests below are those three facts, then the settings
under which the variance learns from the data, and what a strong pull does to the inner
AdamW's steps.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from rich.console import Console

from metalora.records import Task, TaskRecord
from metalora.runs.engine import Engine
from metalora_plugins.abmll.pairs import LOGV_THETA, MU_PHI, MU_THETA
from tests.conftest import make_config

WORDS = ["apple", "river", "stone", "cloud", "green", "table", "light", "music", "paper",
         "glass", "horse", "bread", "chair", "water", "plant", "smile"]


def _task(name: str, p_first: float, n: int = 40) -> Task:
    """A two-option task whose answer is the first option with probability ``p_first``."""
    rng = random.Random(name)
    records = [TaskRecord(name, " ".join(rng.sample(WORDS, 4)) + "?",
                          "yes" if rng.random() < p_first else "no", ("yes", "no"))
               for _ in range(n)]
    return Task(name, records)


def _learner(plugins, **settings):
    engine = Engine(make_config(plugins, learner=["abmll"], model="tiny", device="cpu",
                                tasks="demo", train_loss="options", batch_size=4, **settings),
                    plugins, console=Console(quiet=True))
    engine.load_suite()
    return engine.build_learner("abmll", 0)


def _train(learner, tasks: list[Task], epochs: int) -> None:
    for epoch in range(epochs):
        for _ in learner.train_epoch(tasks, epoch):
            pass


def _probs(learner, tasks: list[Task]) -> torch.Tensor:
    batch = learner.context.batches.encode([r for t in tasks for r in t.records[:8]])
    with torch.no_grad():
        return learner.predict_proba(batch)


# -- 1. the outer step's direction is Reptile's ---------------------------------------------


def test_the_literal_outer_gradient_on_b_mu_theta_points_along_b_phi_minus_b_theta(
        plugins) -> None:
    learner = _learner(plugins, sampling="mean", inner_lr=1e-3)
    try:
        task = _task("t0", 0.8)
        learner.reset_task()
        optimizer = learner._inner_optimizer(1e-3)
        for step in range(5):
            learner.inner_step(learner.context.batches.train_batch(task, random.Random(step)),
                               optimizer)
        learner.outer_step(learner.context.batches.train_batch(task, random.Random(9)),
                           apply=False)
        grads, moves = [], []
        for layer in learner.adapters.layers.values():
            theta, phi = layer.pairs[MU_THETA], layer.pairs[MU_PHI]
            grads.append(-theta.B.grad.flatten())
            moves.append((phi.B - theta.B).detach().flatten())
        cos = torch.nn.functional.cosine_similarity(torch.cat(grads), torch.cat(moves), dim=0)
        scale = torch.cat(grads).norm() / torch.cat(moves).norm()
    finally:
        learner.adapters.remove()
    assert float(cos) > 0.9, float(cos)
    # its size is lambda s^2 |A A^T| ~ lambda s^2 / 3 times the move: beta alone is 1e-8
    lam = learner.beta * math.exp(-learner.spec.offset)
    assert 0.1 * lam < float(scale) < 10 * lam


# -- 2. beta and c act only through lambda = beta * e^-c ----------------------------------------


def test_lambda_matched_beta_and_c_give_the_same_predictions(plugins) -> None:
    tasks = [_task(f"t{i}", 0.8 if i % 2 else 0.3) for i in range(3)]
    common = dict(sampling="mean", inner_lr=1e-2, outer_lr=1e-2)
    probs = {}
    for name, c, beta in (("default", -20.0, 1e-8), ("matched", -12.0, 1e-8 * math.exp(8)),
                          ("not matched", -12.0, 1e-8)):
        learner = _learner(plugins, log_var_init=c, beta=beta, **common)
        try:
            _train(learner, tasks, 3)
            probs[name] = _probs(learner, tasks)
        finally:
            learner.adapters.remove()
    matched = float((probs["matched"] - probs["default"]).abs().max())
    other = float((probs["not matched"] - probs["default"]).abs().max())
    assert matched < 1e-3, matched
    assert other > 20 * matched, (other, matched)  # lambda, not beta or c alone


# -- 3. beta = 1e-16 "fails" because theta's gradient falls below AdamW's epsilon ------------


def test_at_beta_1e_16_theta_moves_only_when_the_outer_epsilon_is_lowered(plugins) -> None:
    tasks = [_task(f"t{i}", 0.8) for i in range(3)]
    moved = {}
    for name, beta, eps in (("1e-8", 1e-8, 1e-8), ("1e-16", 1e-16, 1e-8),
                            ("1e-16, eps 1e-30", 1e-16, 1e-30)):
        learner = _learner(plugins, sampling="mean", beta=beta, outer_eps=eps,
                           inner_lr=1e-3, outer_lr=1e-2, weight_decay=0.0)
        try:
            _train(learner, tasks, 2)
            moved[name] = float(torch.cat([layer.pairs[MU_THETA].B.detach().flatten() for layer
                                           in learner.adapters.layers.values()]).abs().mean())
        finally:
            learner.adapters.remove()
    assert moved["1e-16"] < 0.1 * moved["1e-8"], moved  # frozen by epsilon, not by the KL
    assert moved["1e-16, eps 1e-30"] > 0.5 * moved["1e-8"], moved


# -- 4. a variance that learns from the data ------------------------------------------------

LEARNED = dict(variance_optimizer="adamw", variance_lr=1e-2, prior_log_var="relative", b0=1.0,
               prior_jacobian=True)


def _log_var_change(plugins, tasks: list[Task], epochs: int, **settings) -> float:
    """Mean change of logv_theta over every adapted weight after training."""
    learner = _learner(plugins, inner_lr=1e-2, outer_lr=1e-2, log_var_init=-12.0, **settings)
    try:
        _train(learner, tasks, epochs)
        with torch.no_grad():
            return float(torch.cat([
                (layer.scaling * layer.pairs[LOGV_THETA].B @ layer.pairs[LOGV_THETA].A).flatten()
                for layer in learner.adapters.layers.values()]).mean())
    finally:
        learner.adapters.remove()


@pytest.fixture(scope="module")
def suites() -> dict[str, list[Task]]:
    """Tasks that share a rule (the first option 80% of the time) and tasks that conflict
    (half of them the second option 80% of the time)."""
    return {"agree": [_task(f"t{i}", 0.8) for i in range(4)],
            "conflict": [_task(f"t{i}", 0.8 if i % 2 else 0.2) for i in range(4)]}


def test_the_learned_sigma_theta_ends_larger_where_the_tasks_disagree(plugins, suites) -> None:
    """sigma_theta^2 moves towards sigma_0^2 + (beta / 2 gamma) E[(mu_phi - mu_theta)^2]: the
    spread of the task-adapted means around theta, larger when the tasks pull apart."""
    change = {kind: _log_var_change(plugins, tasks, 10, **LEARNED)
              for kind, tasks in suites.items()}
    assert change["conflict"] > change["agree"] + 0.4, change
    assert change["agree"] > 0  # the adapted means spread around theta in both


def test_without_those_settings_the_variance_does_not_tell_the_suites_apart(plugins,
                                                                           suites) -> None:
    # the paper's settings: the prior's data-independent push moves both suites alike
    paper = {kind: _log_var_change(plugins, tasks, 10) for kind, tasks in suites.items()}
    assert paper["agree"] > 1.0 and abs(paper["conflict"] - paper["agree"]) < 0.25, paper
    # the variance optimiser switched off: nothing moves at all
    off = _log_var_change(plugins, suites["conflict"], 2, **{**LEARNED, "variance_lr": 0.0})
    assert off == 0.0


# -- 4. a strong pull and the inner AdamW's momentum ---------------------------------------

def _inner_path(plugins, beta: float, momentum: float) -> float:
    """cos(phi_5 - theta, phi_1 - theta) on B_mu_phi: where five inner steps on one batch end,
    against where the first (the data's alone: the KL is 0 at theta) went."""
    learner = _learner(plugins, beta=beta, inner_lr=1e-3, inner_momentum=momentum,
                       sampling="mean")
    try:
        def b_phi() -> torch.Tensor:
            return torch.cat([layer.pairs[MU_PHI].B.detach().flatten()
                              for layer in learner.adapters.layers.values()])

        learner.reset_task()
        theta = b_phi().clone()
        batch = learner.context.batches.encode(_task("t", 0.9).records[:4])
        optimizer = learner._inner_optimizer(1e-3)
        learner.inner_step(batch, optimizer)
        first = b_phi() - theta
        for _ in range(4):
            learner.inner_step(batch, optimizer)
        return float(torch.nn.functional.cosine_similarity(b_phi() - theta, first, dim=0))
    finally:
        learner.adapters.remove()


def test_a_strong_pull_sends_the_inner_adamw_back_past_theta_unless_momentum_is_off(
        plugins) -> None:
    strong = 2e-5  # lambda = beta e^20 = 1e4: the pull's curvature times inner_lr >> the data's
    assert _inner_path(plugins, 1e-9, 0.9) > 0.3  # a weak pull: the steps go on downhill
    assert _inner_path(plugins, strong, 0.9) < 0  # momentum carries them back past theta
    assert _inner_path(plugins, strong, 0.0) > 0  # without it they stay on the data's side
