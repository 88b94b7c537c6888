"""What ABMLL's ``literal`` outer step is, measured on SmolLM2-135M and the cls-45 tasks.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/literal_direction.py [--tasks 12] [--data-dir DATA]

For one epoch of ABMLL at its defaults (``literal``), at the protocol's learning rates
(inner = outer = 1e-3) and at the paper's (1e-5, 5e-5), it measures per task:

* the cosine between the outer gradient on ``B_mu_theta`` (negated) and
  ``B_mu_phi - B_mu_theta`` (the Reptile direction), and between the AdamW step actually
  taken on ``B_mu_theta`` and that direction;
* the size of that gradient over ``lambda * |B_phi - B_theta|`` with
  ``lambda = beta * exp(-c)``: the KL's pull is lambda-scaled, and AdamW divides the scale
  away;
* in the inner steps after the first, the size of the KL's gradient on ``B_mu_phi`` over
  the NLL's: how strongly the KL pulls phi back towards theta (a proximal term).

Medians (and range) over the tasks are printed.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from pathlib import Path

import torch
from rich.console import Console

from metalora.runs.engine import Engine
from metalora.scoring import answer_loss
from metalora_plugins.abmll.objective import backward_regularisers
from metalora_plugins.abmll.pairs import MU_PHI, MU_THETA, global_factors, task_factors
from tests.conftest import make_config

REPO = Path(__file__).resolve().parents[1]


def _b(learner, pair: str, what: str = "data") -> torch.Tensor:
    tensors = [getattr(layer.pairs[pair].B, what) for layer in learner.adapters.layers.values()]
    return torch.cat([t.detach().flatten() for t in tensors])


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def measure(plugins, args: argparse.Namespace, tasks: int, inner_lr: float,
            outer_lr: float) -> dict:
    data = {"data_dir": str(args.data_dir)} if args.suite == "cls45" else {}
    config = make_config(plugins, learner=["abmll"], tasks=args.suite, model=args.model,
                         max_train_tasks=tasks, inner_lr=inner_lr, outer_lr=outer_lr,
                         device="cpu", dtype="float32", **data)
    engine = Engine(config, plugins, console=Console(quiet=True))
    suite = engine.load_suite()
    learner = engine.build_learner("abmll", 0)
    lam = learner.beta * math.exp(-learner.spec.offset)
    layers = list(learner.adapters.layers.values())
    rng = random.Random(0)
    rows: dict[str, list[float]] = {"cos_grad": [], "cos_step": [], "scale": [], "tether": []}
    try:
        for task in suite.train:
            learner.reset_task()
            optimizer = learner._inner_optimizer(inner_lr)
            for k in range(learner.settings.inner_steps):
                batch = learner.context.batches.train_batch(task, rng)
                if k > 0:  # the KL's and the NLL's gradients on B_mu_phi, apart
                    learner._clear_grads()
                    torch.manual_seed(k)
                    answer_loss(learner.context.model, batch).backward()
                    nll = _b(learner, MU_PHI, "grad").norm()
                    learner._clear_grads()
                    backward_regularisers(layers, task_factors,
                                          lambda layer: global_factors(layer, detach=True),
                                          learner.specs, learner.beta, 0.0, None)
                    rows["tether"].append(float(_b(learner, MU_PHI, "grad").norm() / nll))
                learner.inner_step(batch, optimizer)
            move = _b(learner, MU_PHI) - _b(learner, MU_THETA)
            before = _b(learner, MU_THETA).clone()
            learner.outer_step(learner.context.batches.train_batch(task, rng), apply=False)
            grad = -_b(learner, MU_THETA, "grad")
            rows["cos_grad"].append(_cos(grad, move))
            rows["scale"].append(float(grad.norm() / (lam * move.norm())))
            learner.outer_optimizer.step()
            rows["cos_step"].append(_cos(_b(learner, MU_THETA) - before, move))
        learner._clear_grads()
    finally:
        learner.adapters.remove()
    return rows


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3g} [{min(values):.3g}, {max(values):.3g}]"


def main() -> None:
    from metalora.plugins import PluginManager

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path,
                        default=REPO.parent / "shared" / "data" / "crossfit")
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--paper-tasks", type=int, default=4)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--suite", default="cls45", help="(tiny and demo: to try it out)")
    args = parser.parse_args()
    plugins = PluginManager()
    print("| learning rates (inner, outer) | tasks | cos(-grad B_mu_theta, B_phi - B_theta) | "
          "cos(AdamW step, B_phi - B_theta) | norm(grad) / (lambda norm(B_phi - B_theta)) | "
          "inner norm(grad KL) / norm(grad NLL) on B_mu_phi |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (inner, outer), n in (((1e-3, 1e-3), args.tasks), ((1e-5, 5e-5), args.paper_tasks)):
        rows = measure(plugins, args, n, inner, outer)
        print(f"| {inner:g}, {outer:g} | {n} | {summary(rows['cos_grad'])} | "
              f"{summary(rows['cos_step'])} | {summary(rows['scale'])} | "
              f"{summary(rows['tether'])} |", flush=True)


if __name__ == "__main__":
    main()
