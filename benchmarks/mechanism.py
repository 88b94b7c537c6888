"""ABMLL's mechanism, isolated: which part of it acts, scored per query on the same queries.

Usage::

    nohup python benchmarks/mechanism.py > runs/benchmarks/mechanism/driver.log 2>&1 &
    python benchmarks/mechanism.py --report-only        # the tables of what has finished

The protocol is ``protocol.py``'s cls-45 one (the first 12 training tasks, 3
epochs, test-time adaptation 5 AdamW steps at 2e-4, SmolLM2-135M, float32),
with two changes: every arm is tested at its last epoch (``--eval-every 0``:
no arm is favoured by its own epoch selection) and the test takes up to 100
query examples per task (about 1,400 queries), so that per-query paired
differences can resolve small effects. Seeds 0 and 1. The arms, all at the
learning rate ``protocol.py`` kept for ABMLL (inner = outer = 1e-3) unless said:

* ``A`` abmll at its defaults (the paper's beta = 1e-8, c = -20, Normal-Gamma
  a0 = 1, b0 = 0.01, one AdamW; ``literal`` reading);
* ``B`` A without noise and prior (``--sampling mean --gamma 0``): the
  deterministic skeleton, Reptile's pseudo-gradient into AdamW plus a proximal
  pull of strength lambda = beta * e^-c = 4.85;
* ``C`` A with a 54 times larger fixed noise, c = -12, and lambda held
  (beta = 2.98e-5 = 4.85 e^-12);
* ``D`` the learned-variance settings: c relative to each layer's weights
  (kappa = 0.013, mean c = -12.1 on SmolLM2), beta = 2.98e-5, the Normal-Gamma
  prior read relative to c with a0 = b0 = 1 and its change of variables (its
  mode at the initial variance), the variance pairs in an AdamW of their own
  at 1e-2 without weight decay;
* ``R`` reptile with its outer step as an AdamW on theta - theta_i at 1e-3
  (inner AdamW 1e-3): the optimiser-matched control for A;
* ``F`` abmll under the ``first-order`` reading, at the learning rate
  ``protocol.py`` kept for it (3e-4).

Every run is evaluated again on the validation tasks (``metalora eval
--split validation``: per-query predictions at the tested epoch); C and D
also with 8 weight samples and with the mean weights, on validation and test.

The rule that chooses ABMLL's defaults, written before the runs and applied
to every candidate alike: on the *validation* queries (15 tasks x 22 queries
x 2 seeds), a candidate (B, C, D, F, and 8 samples or the mean weights
against 1 sample) replaces the default only if its per-query NLL is lower
than the default's by more than 2 paired bootstrap standard errors and its
accuracy is not lower by more than 2. Otherwise the paper's value stays.
Test scores are reported and play no part.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metalora.paired import query_scores, read_predictions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol_runs import (  # noqa: E402
    REPO,
    add_protocol_arguments,
    evaluation_dir,
    finished,
    paired_cell,
    run_and_report,
    run_job,
)

LAMBDA_BETA = "2.98e-5"
"""beta = 4.85 * e^-12: lambda = beta * e^-c held at the default's 4.85 for c = -12."""
SAMPLES = 8


@dataclass(frozen=True)
class Arm:
    """One configuration of the experiment."""

    name: str
    learner: str
    options: tuple[tuple[str, Any], ...]
    """Settings by name beyond the protocol's."""
    role: str
    sampled: bool = False
    """Evaluated again with SAMPLES weight samples and with the mean weights."""


LR = (("inner_lr", "1e-3"), ("outer_lr", "1e-3"))
ARMS = (
    Arm("A", "abmll", LR, "default (the paper's settings)"),
    Arm("B", "abmll", (*LR, ("sampling", "mean"), ("gamma", "0")), "no noise, no prior"),
    Arm("C", "abmll", (*LR, ("log_var_init", "-12"), ("beta", LAMBDA_BETA)),
        "c = -12, lambda held", sampled=True),
    Arm("D", "abmll", (*LR, ("log_var_relative", "0.013"), ("beta", LAMBDA_BETA),
                       ("prior_log_var", "relative"), ("b0", "1"), ("prior_jacobian", True),
                       ("variance_optimizer", "adamw"), ("variance_lr", "1e-2")),
        "learned variance", sampled=True),
    Arm("R", "reptile", (("lr", "1e-3"), ("reptile_outer", "adamw"),
                         ("reptile_outer_lr", "1e-3")), "reptile, AdamW outer step"),
    Arm("F", "abmll", (("inner_lr", "3e-4"), ("outer_lr", "3e-4"),
                       ("meta_gradient", "first-order")), "first-order reading"),
)
SEEDS = (0, 1)
EVALS: dict[str, tuple[str, dict[str, Any]]] = {
    # name suffix: (split, changed settings)
    "val": ("validation", {}),
    "val-8": ("validation", {"eval_samples": SAMPLES}),
    "val-mean": ("validation", {"sampling": "mean"}),
    "test-8": ("test", {"eval_samples": SAMPLES}),
    "test-mean": ("test", {"sampling": "mean"}),
}


class Experiment:
    """The runs and evaluations of the experiment, their state on disk, and the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.output_dir

    # -- state on disk -------------------------------------------------------
    def run_dir(self, arm: Arm, seed: int) -> Path:
        return self.out / f"{arm.name}-seed{seed}"

    def finished(self, arm: Arm, seed: int) -> bool:
        return finished(self.run_dir(arm, seed))

    def eval_dir(self, arm: Arm, seed: int, kind: str) -> Path | None:
        """The finished ``metalora eval`` of this kind, if any."""
        split, values = EVALS[kind]
        return evaluation_dir(self.run_dir(arm, seed), split, values)

    # -- the jobs ------------------------------------------------------------
    def ready(self) -> list[tuple[str, dict[str, Any]]]:
        """The jobs (for ``api_job.py``) not done whose inputs exist, in the order they
        should start."""
        a = self.args
        jobs: list[tuple[int, str, dict[str, Any]]] = []
        for seed in SEEDS:
            for order, arm in enumerate(ARMS):
                name, run_dir = f"{arm.name}-seed{seed}", self.run_dir(arm, seed)
                if not self.finished(arm, seed):
                    jobs.append((10 * seed + order, name,
                                 run_job(a, run_dir, arm.learner, seed, dict(arm.options))))
                    continue
                kinds = ["val"] + (["val-8", "val-mean", "test-8", "test-mean"]
                                   if arm.sampled else [])
                for rank, kind in enumerate(kinds):
                    if self.eval_dir(arm, seed, kind) is None:
                        split, values = EVALS[kind]
                        job = {"kind": "evaluate", "run_dir": str(run_dir),
                               "options": {"split": split, "settings": values}}
                        priority = 100 + 10 * rank + order if kind.startswith("val") else 200
                        jobs.append((priority + seed, f"{name}:{kind}", job))
        return [(n, job) for _, n, job in sorted(jobs, key=lambda j: j[0])]

    # -- reading results -------------------------------------------------------
    def scores(self, arm: Arm, kind: str) -> dict[tuple[int, str, int], object] | None:
        """Per-query scores over both seeds, keyed (seed, task, index); None if missing."""
        out = {}
        for seed in SEEDS:
            if kind == "test":
                if not self.finished(arm, seed):
                    return None
                where = self.run_dir(arm, seed)
            else:
                where = self.eval_dir(arm, seed, kind)
                if where is None:
                    return None
            path = where / arm.learner / f"seed-{seed}" / "predictions.jsonl"
            for (task, index), s in query_scores(read_predictions(path)).items():
                out[(seed, task, index)] = s
        return out

    def macro_ece(self, arm: Arm, kind: str) -> list[float]:
        """The macro ECE of each seed (reported, never used to choose)."""
        values = []
        for seed in SEEDS:
            where = (self.run_dir(arm, seed) if kind == "test"
                     else self.eval_dir(arm, seed, kind))
            if where is None:
                continue
            record = json.loads((where / "metrics.json").read_text())
            seeds = record["learners"][arm.learner]["seeds"]
            values.append(next(iter(seeds.values()))["macro"]["ece"])
        return values

    def report(self) -> str:
        lines = ["# ABMLL's mechanism at the cls-45 protocol (2 seeds, per-query paired)", ""]
        by_name = {arm.name: arm for arm in ARMS}
        for split, kind in (("validation", "val"), ("test", "test")):
            lines += [f"## {split.capitalize()}: each arm against A (per query, both seeds; "
                      "mean and bootstrap SE of the difference)", "",
                      "| arm | role | queries | accuracy | NLL | Brier | ECE (mean of seeds) "
                      "| Δacc vs A (points) | ΔNLL vs A | ΔBrier vs A |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            reference = self.scores(by_name["A"], kind)
            for arm in ARMS:
                scores = self.scores(arm, kind)
                if scores is None:
                    lines.append(f"| {arm.name} | {arm.role} | (not finished) |" + " |" * 7)
                    continue
                means = {m: sum(s.get(m) for s in scores.values()) / len(scores)
                         for m in ("accuracy", "nll", "brier")}
                ece = self.macro_ece(arm, kind)
                diffs = (["", "", ""] if reference is None or arm.name == "A" else
                         [paired_cell(scores, reference, m) for m in ("accuracy", "nll", "brier")])
                lines.append(
                    f"| {arm.name} | {arm.role} | {len(scores)} | {100 * means['accuracy']:.1f}% | "
                    f"{means['nll']:.4f} | {means['brier']:.4f} | "
                    f"{sum(ece) / len(ece):.3f} | " + " | ".join(diffs) + " |")
            lines.append("")
        lines += ["## Weight samples: 8 samples and the mean weights against 1 sample "
                  "(the same adapters)", "",
                  "| arm | split | ΔNLL 8 - 1 | ΔBrier 8 - 1 | Δacc 8 - 1 | ΔNLL mean - 1 | "
                  "ΔBrier mean - 1 | Δacc mean - 1 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for arm in ARMS:
            if not arm.sampled:
                continue
            for split, one, many, mean in (("validation", "val", "val-8", "val-mean"),
                                           ("test", "test", "test-8", "test-mean")):
                base = self.scores(arm, one)
                cells = []
                for other in (many, mean):
                    scores = self.scores(arm, other)
                    for m in ("nll", "brier", "accuracy"):
                        cells.append("" if scores is None or base is None
                                     else paired_cell(scores, base, m))
                lines.append(f"| {arm.name} | {split} | " + " | ".join(cells) + " |")
        lines += ["", "Differences are per query, paired over (seed, task, query), with the "
                  "bootstrap SE (queries resampled within each seed); accuracy in points. * marks "
                  "a difference beyond 2 SE; the rest are within the noise.", "",
                  *self.sigma_report()]
        return "\n".join(lines) + "\n"

    def sigma_report(self) -> list[str]:
        """How far the global log-variance moved from its initial value in each abmll arm."""
        lines = ["## How far sigma_theta moved (tested adapters)", "",
                 "| arm | seed | c (initial, mean over layers) | mean abs(logv - c) | "
                 "max abs(logv - c) | largest sigma_theta |",
                 "| --- | --- | --- | --- | --- | --- |"]
        for arm in ARMS:
            if arm.learner != "abmll":
                continue
            for seed in SEEDS:
                if not self.finished(arm, seed):
                    continue
                moved = log_var_moves(self.run_dir(arm, seed), seed)
                lines.append(f"| {arm.name} | {seed} | {moved['c']:.2f} | {moved['mean']:.2e} | "
                             f"{moved['max']:.2e} | {moved['sigma']:.2e} |")
        return lines


def log_var_moves(run_dir: Path, seed: int) -> dict[str, float]:
    """Mean and largest ``|logv_theta - c|`` over every adapted weight, the mean initial c and
    the largest sigma_theta, from a run's tested abmll adapters (before clamping)."""
    import torch
    from safetensors.torch import load_file

    from metalora.models import load_model
    from metalora_plugins.abmll.pairs import relative_log_var

    config = json.loads((run_dir / "config.json").read_text())
    settings = config["learner_settings"]["abmll"]
    scale = config["alpha"] / config["rank"]
    tensors = load_file(str(run_dir / "abmll" / f"seed-{seed}" / "adapters.safetensors"))
    kappa = settings.get("log_var_relative")
    weights = {}
    if kappa is not None:
        model = load_model(config["model"]).model
        weights = dict(model.named_parameters())
    total, count, largest, top, cs = 0.0, 0, 0.0, -math.inf, []
    for key in tensors:
        if not key.endswith("logv_theta.A"):
            continue
        stem = key[: -len("pairs.logv_theta.A")]
        c = (settings["log_var_init"] if kappa is None
             else relative_log_var(weights[stem + "weight"], kappa))
        cs.append(c)
        delta = scale * tensors[key[:-1] + "B"].double() @ tensors[key].double()
        total += float(delta.abs().sum())
        count += delta.numel()
        largest = max(largest, float(delta.abs().max()))
        top = max(top, float((delta + c).clamp(settings["log_var_min"],
                                              settings["log_var_max"]).max()))
    return {"c": sum(cs) / len(cs), "mean": total / count, "max": largest,
            "sigma": float(torch.tensor(top / 2).exp())}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_protocol_arguments(parser, REPO / "runs" / "benchmarks" / "mechanism")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    run_and_report(Experiment(args), args)


if __name__ == "__main__":
    main()
