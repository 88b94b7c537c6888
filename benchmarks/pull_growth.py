"""How ABMLL's KL pull acts in the inner loop as training goes on, at two pull strengths.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/pull_growth.py --like RUN_DIR \\
        FILE.safetensors ... [--betas 1e-8,1e-9] [--tasks 4] [--held 16]

Each FILE is an epoch's adapters of the ABMLL run RUN_DIR (copied aside while it trained).
From the global pairs in FILE, for each ``beta`` (the run's settings otherwise, so the pull
``lambda = beta * exp(-c)`` is the one thing that differs) and for the first ``--tasks``
training tasks, it runs the training inner loop (a fresh AdamW at ``inner_lr``,
``inner_steps`` steps, the same batches for every beta and file) and measures, for the A
and the B factors of the task mean pair separately:

* ``stiff``: how hard the KL pulls back after one AdamW step, over the NLL's pull: the
  KL's curvature along the factor (:func:`kl_curvature`, mean over its coordinates)
  times ``inner_lr`` (the size of AdamW's first step), over the root mean square of the
  NLL's gradient on that factor at theta. Above 1 the pull's gradient outweighs the data's
  after a single step;
* ``KL/NLL``: in the inner steps after the first, the norm of the KL's gradient over the
  NLL's, measured;
* ``flip``: the fraction of coordinates whose AdamW step changes sign from one inner step
  to the next (steps 2 to K), a sign of steps that overshoot and come back;
* ``descent``: the cosine between the inner loop's displacement ``phi_K - theta`` and the
  negative NLL gradient at theta on ``--held`` examples of the task drawn with a seed of
  their own (they may share examples with the inner loop's batches);
* ``dNLL``: the NLL on those held examples at ``phi_K`` minus at theta (negative: the
  inner loop helped);
* ``radial``: the cosine between ``phi_K - theta`` and theta, the direction the outer
  step (theta towards phi) will move the factor: positive makes it longer; ``radial_mu``
  the same for the dense means ``s * B @ A`` over every layer;
* ``shared``: the cosine between two tasks' displacements ``phi_K - theta`` (median over
  the pairs of tasks): how much of where the inner loop goes does not depend on the task.

Medians over the tasks are printed, one row per file and beta. Nothing here depends on
the machine's speed.
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
from metalora.runs.rundir import load_adapters, read_config
from metalora.scoring import answer_loss
from metalora_plugins.abmll.objective import backward_regularisers
from metalora_plugins.abmll.pairs import (
    LOGV_THETA,
    MU_PHI,
    MU_THETA,
    global_factors,
    spec_of,
    task_factors,
)
from tests.conftest import make_config

FACTORS = ("A", "B")


def _flat(learner, pair: str, factor: str, what: str = "data") -> torch.Tensor:
    tensors = [getattr(getattr(layer.pairs[pair], factor), what)
               for layer in learner.adapters.layers.values()]
    return torch.cat([t.detach().flatten() for t in tensors])


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def kl_curvature(learner, factor: str) -> torch.Tensor:
    """The diagonal of the Hessian of ``beta * KL`` over ``factor`` of the task means at
    ``phi = theta``, every layer flattened together.

    With ``lambda = beta / sigma_theta^2`` elementwise, ``d^2 / d B_ij^2 = s^2 sum_k
    lambda_ik A_jk^2`` and ``d^2 / d A_jk^2 = s^2 sum_i lambda_ik B_ij^2``.
    """
    parts = []
    for layer in learner.adapters.layers.values():
        mean, log_var = layer.pairs[MU_THETA], layer.pairs[LOGV_THETA]
        spec = spec_of(learner.specs, layer)
        lam = learner.beta * torch.exp(-spec.dense(log_var.A, log_var.B, layer.scaling))
        a, b = mean.A.detach(), mean.B.detach()
        hess = lam.detach() @ a.pow(2).T if factor == "B" else b.pow(2).T @ lam.detach()
        parts.append(layer.scaling**2 * hess.flatten())
    return torch.cat(parts)


def _dense_radial(learner) -> float:
    """cos(mu_phi - mu_theta, mu_theta) of the dense means, over every layer together."""
    dot = move_sq = theta_sq = 0.0
    for layer in learner.adapters.layers.values():
        theta = layer.pairs[MU_THETA].dense(layer.scaling).detach()
        move = layer.pairs[MU_PHI].dense(layer.scaling).detach() - theta
        dot += float((move * theta).sum())
        move_sq += float(move.pow(2).sum())
        theta_sq += float(theta.pow(2).sum())
    return dot / math.sqrt(move_sq * theta_sq)


def _nll_grads(learner, batch, seed: int) -> dict[str, torch.Tensor]:
    learner._clear_grads()
    torch.manual_seed(seed)
    answer_loss(learner.context.model, batch).backward()
    grads = {f: _flat(learner, MU_PHI, f, "grad").clone() for f in FACTORS}
    learner._clear_grads()
    return grads


def _held_nll(learner, batch, seed: int) -> float:
    with torch.no_grad():
        torch.manual_seed(seed)
        return float(answer_loss(learner.context.model, batch))


def measure(engine: Engine, suite, snapshot: dict[str, torch.Tensor], beta: float,
            tasks: int, held: int) -> dict[str, list[float]]:
    learner = engine.build_learner("abmll", 0)
    try:
        learner.adapters.restore(snapshot)
        learner.beta = beta
        layers = list(learner.adapters.layers.values())
        k_steps = learner.settings.inner_steps
        rows: dict[str, list[float]] = {}

        def add(key: str, value: float) -> None:
            rows.setdefault(key, []).append(value)

        moves: dict[str, list[torch.Tensor]] = {f: [] for f in FACTORS}
        for t, task in enumerate(suite.train[:tasks]):
            rng, held_rng = random.Random(t), random.Random(1000 + t)
            held_batch = learner.context.batches.encode(
                held_rng.sample(task.records, min(held, len(task.records))))
            learner.reset_task()
            theta = {f: _flat(learner, MU_PHI, f).clone() for f in FACTORS}
            g_held = _nll_grads(learner, held_batch, seed=t)
            nll_theta = _held_nll(learner, held_batch, seed=t)
            for f in FACTORS:
                add(f"stiff_{f}", float(kl_curvature(learner, f).mean())
                    * learner.settings.inner_lr / float(g_held[f].pow(2).mean().sqrt()))
            optimizer = learner._inner_optimizer(learner.settings.inner_lr)
            previous: dict[str, torch.Tensor] = {}
            for k in range(k_steps):
                batch = learner.context.batches.train_batch(task, rng)
                if k > 0:
                    g_nll = _nll_grads(learner, batch, seed=100 * t + k)
                    backward_regularisers(layers, task_factors,
                                          lambda layer: global_factors(layer, detach=True),
                                          learner.specs, learner.beta, 0.0, None)
                    for f in FACTORS:
                        add(f"kl_nll_{f}", float(_flat(learner, MU_PHI, f, "grad").norm()
                                                 / g_nll[f].norm()))
                    learner._clear_grads()
                before = {f: _flat(learner, MU_PHI, f).clone() for f in FACTORS}
                torch.manual_seed(100 * t + k)
                learner.inner_step(batch, optimizer)
                for f in FACTORS:
                    step = _flat(learner, MU_PHI, f) - before[f]
                    if f in previous:
                        moved = (step != 0) & (previous[f] != 0)
                        flips = (torch.sign(step) != torch.sign(previous[f])) & moved
                        add(f"flip_{f}", float(flips.sum() / moved.sum().clamp(min=1)))
                    previous[f] = step
            nll_phi = _held_nll(learner, held_batch, seed=t)
            add("dNLL", nll_phi - nll_theta)
            for f in FACTORS:
                move = _flat(learner, MU_PHI, f) - theta[f]
                add(f"descent_{f}", _cos(move, -g_held[f]))
                add(f"radial_{f}", _cos(move, theta[f]))
                moves[f].append(move)
            add("radial_mu", _dense_radial(learner))
        for f in FACTORS:
            for i in range(len(moves[f])):
                for j in range(i):
                    add(f"shared_{f}", _cos(moves[f][i], moves[f][j]))
        learner._clear_grads()
        return rows
    finally:
        learner.adapters.remove()


def main() -> None:
    from metalora.plugins import PluginManager

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--like", type=Path, required=True,
                        help="the ABMLL run directory whose settings the files are read with")
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--betas", default="1e-8,1e-9")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--held", type=int, default=16)
    args = parser.parse_args()
    plugins = PluginManager()
    given = dict(read_config(args.like)["given"])
    for key in ("run_name", "output_dir", "epochs", "seeds", "tensorboard", "plots"):
        given.pop(key, None)
    config = make_config(plugins, device="cpu", **given)
    engine = Engine(config, plugins, console=Console(quiet=True))
    suite = engine.load_suite()
    keys = ("stiff_A", "stiff_B", "kl_nll_A", "kl_nll_B", "flip_A", "flip_B", "descent_A",
            "descent_B", "dNLL", "radial_A", "radial_B", "radial_mu", "shared_A", "shared_B")
    print("| file | beta | " + " | ".join(keys) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in keys) + " |", flush=True)
    for path in args.files:
        snapshot = load_adapters(path)
        for beta in (float(b) for b in args.betas.split(",")):
            rows = measure(engine, suite, snapshot, beta, args.tasks, args.held)
            cells = " | ".join(f"{statistics.median(rows[k]):.3g}" for k in keys)
            print(f"| {path.stem} | {beta:g} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
